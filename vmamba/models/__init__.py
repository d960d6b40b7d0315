"""Model families. Importing this package registers every model in timm's registry."""
import importlib as _importlib

_FAMILY_MODULES = ('vmamba', 'vim', 'lbvim', 'efficientvmamba')

for _name in _FAMILY_MODULES:
    try:
        _importlib.import_module(f'{__name__}.{_name}')
    except ModuleNotFoundError as _err:  # a family file that is not written yet
        if _err.name != f'{__name__}.{_name}':
            raise

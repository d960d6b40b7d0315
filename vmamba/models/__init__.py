"""Model families, one timm-style file each. Importing this package registers every model in timm's registry."""
from . import efficientvmamba, lbvim, vim, vmamba  # noqa: F401

__all__ = ['efficientvmamba', 'lbvim', 'vim', 'vmamba']

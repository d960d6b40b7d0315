"""mmsegmentation / mmdetection adapters: our timm models as dense-prediction backbones.

``import vmamba.adapters`` (e.g. ``custom_imports = dict(imports=['vmamba.adapters'])`` in a config) registers
``VMambaBackbone``, ``EfficientVMambaBackbone``, ``VimBackbone`` and ``LBVimBackbone`` in the ``MODELS`` registries of
mmseg and mmdet (whichever are installed). Needs ``mmengine`` (``pip install vmamba[mm]``).

With ``mmcv-lite`` (no compiled ops), import :mod:`vmamba.adapters.mmcv_ops_compat` first; see ``docs/mm.md``.
"""
from .backbone import MambaBackbone, PlainPyramid, load_weights_file
from .convert import convert_official_mm_checkpoint
from .families import BACKBONES, FAMILIES, BackboneFamily, family_of, register_in_mm_registries
from .optim import MambaLayerDecayOptimWrapperConstructor
from .runner import TrustedResumeRunner, trusted_checkpoint

register_in_mm_registries()

__all__ = ['MambaBackbone', 'PlainPyramid', 'load_weights_file', 'convert_official_mm_checkpoint', 'BACKBONES',
           'FAMILIES', 'BackboneFamily', 'family_of', 'register_in_mm_registries', 'MambaLayerDecayOptimWrapperConstructor',
           'TrustedResumeRunner', 'trusted_checkpoint']

"""vmamba: vision state-space backbones for timm.

``import vmamba`` registers every model family in timm's registry, e.g.
``timm.create_model('vmamba_tiny_s1l8', pretrained=True)``.
"""
from .kernels import selective_scan
from .official import from_official
from . import models  # noqa: F401  (registers the models in timm)

__version__ = '0.1.0'

__all__ = ['selective_scan', 'from_official', '__version__']

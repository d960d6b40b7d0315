"""The backbone families: one row per family, registered in the mmseg and mmdet ``MODELS`` registries.

Adding a family is one row in :data:`FAMILIES`: the registry type name, the timm name prefixes it builds, the module
holding its ``checkpoint_filter_fn``, and its dense-prediction defaults (official seg/det backbones):

* VMamba / EfficientVMamba (``Backbone_VSSM`` / ``Backbone_EfficientVSSM``): 4 stages at strides 4-32, a fresh
  LayerNorm ``outnorm{i}`` per output.
* Vim (``VisionMambaSeg``): mixer outputs of blocks 5/11/17/23, no output norm, deconv pyramid to strides 4-32.
* LBVim (``Backbone_BiVisionMamba``): mixer outputs of blocks 5/11/17/23, a LayerNorm per output, four stride-16
  maps (the det configs switch on the deconv pyramid for FPN).
Plain models get ``dynamic_img_size`` / ``dynamic_img_pad`` so any crop or padded image size works.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple, Type

from .backbone import MambaBackbone

__all__ = ['BackboneFamily', 'FAMILIES', 'BACKBONES', 'family_of', 'register_in_mm_registries']

_PLAIN_KWARGS = dict(dynamic_img_size=True, dynamic_img_pad=True)


@dataclass(frozen=True)
class BackboneFamily:
    type_name: str  # mmseg / mmdet registry name
    family: str  # vmamba.official family name
    model_prefixes: Tuple[str, ...]  # timm model names this backbone builds
    module: str  # module with the family's checkpoint_filter_fn
    plain: bool
    out_norm: Optional[str] = 'layernorm'
    feature_source: str = 'block'
    pyramid: Optional[str] = None
    model_kwargs: Dict[str, Any] = field(default_factory=dict)


FAMILIES: Tuple[BackboneFamily, ...] = (
    BackboneFamily('VMambaBackbone', 'vmamba', ('vmamba_', 'test_vmamba'), 'vmamba.models.vmamba', plain=False),
    BackboneFamily('EfficientVMambaBackbone', 'efficientvmamba', ('efficientvmamba_', 'test_efficientvmamba'),
                   'vmamba.models.efficientvmamba', plain=False),
    BackboneFamily('VimBackbone', 'vim', ('vim_', 'test_vim'), 'vmamba.models.vim', plain=True, out_norm=None,
                   feature_source='mixer', pyramid='deconv', model_kwargs=_PLAIN_KWARGS),
    BackboneFamily('LBVimBackbone', 'lbvim', ('lbvim_', 'test_lbvim'), 'vmamba.models.lbvim', plain=True,
                   feature_source='mixer', model_kwargs=_PLAIN_KWARGS),
)


def _make_backbone_class(spec: BackboneFamily) -> Type[MambaBackbone]:
    attrs = dict(
        __doc__=f'{spec.family} backbone for mmseg / mmdet (timm models {", ".join(spec.model_prefixes)}*); '
                f'see :class:`~vmamba.adapters.backbone.MambaBackbone` for the arguments.',
        __module__=__name__,
        family_module=spec.module,
        model_prefixes=spec.model_prefixes,
        plain=spec.plain,
        default_model_kwargs=dict(spec.model_kwargs),
        default_out_norm=spec.out_norm,
        default_feature_source=spec.feature_source,
        default_pyramid=spec.pyramid,
    )
    return type(spec.type_name, (MambaBackbone,), attrs)


BACKBONES: Dict[str, Type[MambaBackbone]] = {spec.type_name: _make_backbone_class(spec) for spec in FAMILIES}
globals().update(BACKBONES)
__all__ += list(BACKBONES)


def family_of(name: str) -> BackboneFamily:
    """The family row for a registry type name, a family name or a timm model name."""
    for spec in FAMILIES:
        if name in (spec.type_name, spec.family) or name.startswith(spec.model_prefixes):
            return spec
    raise KeyError(f'no backbone family for {name!r}; known: {[spec.family for spec in FAMILIES]}')


def register_in_mm_registries() -> list:
    """Register every backbone in the ``MODELS`` registry of mmseg and of mmdet (those installed).

    Returns the registries used. Idempotent (``force=True`` re-registers the same classes)."""
    registries = []
    for package in ('mmseg', 'mmdet'):
        try:
            registry = __import__(f'{package}.registry', fromlist=['MODELS']).MODELS
        except ImportError:
            continue
        for name, cls in BACKBONES.items():
            registry.register_module(name=name, module=cls, force=True)
        registries.append(registry)
    return registries

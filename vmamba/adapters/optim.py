"""Layer-wise learning-rate decay for :class:`~vmamba.adapters.backbone.MambaBackbone` (Vim's seg recipe).

``optim_wrapper = dict(constructor='MambaLayerDecayOptimWrapperConstructor',
paramwise_cfg=dict(layer_decay_rate=0.92, custom_keys=...))``: every parameter gets the lr multiplier
``rate ** (num_layers + 1 - layer_id)`` on top of mmengine's usual paramwise rules, with ``layer_id`` from
:meth:`MambaBackbone.layer_id` (0 = stem, stage / block i -> i + 1, heads and necks -> num_layers + 1, i.e. 1.0).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

from .backbone import MambaBackbone

__all__ = ['MambaLayerDecayOptimWrapperConstructor']


@OPTIM_WRAPPER_CONSTRUCTORS.register_module(force=True)
class MambaLayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's default constructor plus ``paramwise_cfg['layer_decay_rate']`` over the backbone's layers."""

    def __init__(self, optim_wrapper_cfg: Dict[str, Any], paramwise_cfg: Optional[Dict[str, Any]] = None):
        paramwise_cfg = dict(paramwise_cfg or {})
        self.layer_decay_rate = float(paramwise_cfg.pop('layer_decay_rate', 1.0))
        if not 0. < self.layer_decay_rate <= 1.:
            raise ValueError(f'layer_decay_rate must be in (0, 1], got {self.layer_decay_rate}')
        if self.layer_decay_rate != 1. and not paramwise_cfg:
            paramwise_cfg = dict(custom_keys={})  # per-parameter groups, so each can get its own lr
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def add_params(self, params: List[Dict[str, Any]], module: nn.Module, prefix: str = '', **kwargs) -> None:
        start = len(params)
        super().add_params(params, module, prefix=prefix, **kwargs)
        backbone = getattr(module, 'backbone', None)
        if prefix or self.layer_decay_rate == 1. or not isinstance(backbone, MambaBackbone):
            return
        names = {id(p): n for n, p in module.named_parameters()}
        num_layers = backbone.out_indices[-1] + 1
        base_lr = self.base_lr
        for group in params[start:]:
            ids = {names.get(id(p)) for p in group['params']}
            layer_ids = {backbone.layer_id(n) if n and n.startswith('backbone.') else num_layers + 1 for n in ids}
            if len(layer_ids) != 1:
                raise RuntimeError('layer-wise decay needs one parameter group per parameter (give a paramwise_cfg)')
            scale = self.layer_decay_rate ** (num_layers + 1 - layer_ids.pop())
            group['lr'] = group.get('lr', base_lr) * scale

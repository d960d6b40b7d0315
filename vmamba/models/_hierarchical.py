"""The timm model API shared by the hierarchical (4-stage, NCHW) families: VMamba and EfficientVMamba.

Both families have the same anatomy: ``stem`` -> ``stages`` (an ``nn.Sequential`` of stages, stage i > 0 starting
with a stride-2 downsample, each with a ``grad_checkpointing`` flag) -> ``norm`` (LayerNorm2d) -> ``head``
(``ClassifierHead``), plus optional per-stage-output LayerNorms ``feature_norms`` (the official detection /
segmentation backbones' ``outnorm{i}``). :class:`HierarchicalMixin` implements the timm API on top of these
attributes; the family classes build them (:meth:`HierarchicalMixin.init_norms_and_head` builds the last three).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from timm.layers import ClassifierHead, get_device_dtype, register_notrace_function, trunc_normal_
from timm.models import checkpoint_seq
from timm.models._features import feature_take_indices

from vmamba.layers.norm import LayerNorm2d
from vmamba.layers.ss2d import SS2D

__all__ = ['HierarchicalMixin', 'HierarchicalStage', 'check_image_batch', 'resolve_stage_dims', 'hierarchical_feature_cfg']


@register_notrace_function  # a call_function node in torch.fx graphs (autowrap skips names starting with "_")
def check_image_batch(x: torch.Tensor, in_chans: int, model_name: str) -> torch.Tensor:
    """Raise a clear error unless ``x`` is a (B, in_chans, H, W) batch; returns ``x``."""
    if x.ndim != 4 or x.shape[1] != in_chans:
        raise ValueError(f'{model_name} expects images of shape (B, {in_chans}, H, W), got {tuple(x.shape)}')
    return x


def resolve_stage_dims(
        dims: Union[int, Sequence[int]],
        depths: Sequence[int],
) -> Tuple[List[int], List[int]]:
    """Per-stage widths and depths as lists; an int ``d`` means ``(d, 2d, 4d, ...)``, one per stage."""
    if isinstance(dims, int):
        dims = [dims * 2 ** i for i in range(len(depths))]
    dims, depths = list(dims), list(depths)
    if len(dims) != len(depths) or not depths:
        raise ValueError(f'dims ({dims}) and depths ({depths}) must have the same, non-zero length')
    return dims, depths


def hierarchical_feature_cfg(feature_norms: bool) -> Dict[str, Any]:
    """timm ``feature_cfg`` for the four stage outputs (``features_only``)."""
    if feature_norms:
        # the per-output norms live in forward_intermediates: use the getter wrapper with norm=True
        return dict(out_indices=(0, 1, 2, 3), feature_cls='getter', norm=True)
    return dict(out_indices=(0, 1, 2, 3), flatten_sequential=True)


class HierarchicalStage(nn.Module):
    """A stage: ``downsample`` (or ``nn.Identity``) followed by ``blocks``, with a ``grad_checkpointing`` flag.

    (B, C, H, W) -> (B, C_out, H', W'). With ``channels_last_blocks`` the blocks take and return (B, H, W, C): they
    run on the channels-last view of the downsampled map and the stage returns the NCHW view of their output (no
    copies; the NCHW tensor has the ``channels_last`` memory format).
    """

    def __init__(self, downsample: nn.Module, blocks: Sequence[nn.Module], channels_last_blocks: bool = False):
        super().__init__()
        self.grad_checkpointing = False
        self.channels_last_blocks = channels_last_blocks
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.channels_last_blocks:
            x = x.permute(0, 2, 3, 1)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.run_blocks(x)
        if self.channels_last_blocks:
            x = x.permute(0, 3, 1, 2)
        return x

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The blocks without gradient checkpointing (a family may chain them more cheaply than one by one)."""
        return self.blocks(x)


class HierarchicalMixin:
    """timm API of a stem -> stages -> norm -> head NCHW backbone (mix into an ``nn.Module``).

    The model defines ``in_chans``, ``num_classes``, ``stem``, ``stages`` and ``feature_info`` (one entry per stage)
    and calls :meth:`init_norms_and_head` for ``num_features``, ``head_hidden_size``, ``norm``, ``feature_norms``
    and ``head``.
    """

    def init_norms_and_head(
            self,
            dims: Sequence[int],
            num_classes: int,
            global_pool: str,
            drop_rate: float,
            norm_eps: float,
            feature_norms: bool,
            device=None,
            dtype=None,
    ) -> None:
        """Final LayerNorm, optional per-stage-output LayerNorms, and the pooled classifier head."""
        dd = {'device': device, 'dtype': dtype}
        self.num_features = self.head_hidden_size = dims[-1]
        self.norm = LayerNorm2d(self.num_features, eps=norm_eps, **dd)
        self.feature_norms = nn.ModuleList([
            LayerNorm2d(dim, eps=norm_eps, **dd) for dim in dims]) if feature_norms else None
        self.head = ClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, input_fmt='NCHW', **dd)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Official init: trunc-normal(0.02) linears (incl. 1x1 ``Linear2d``), default convs / norms (unit
        LayerNorms), and the SS2D parameter init. Works on the meta device and re-initialises after ``to_empty``."""
        for module in self.modules():
            if isinstance(module, SS2D):
                module.init_weights()
            elif isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.Conv2d, nn.LayerNorm, nn.BatchNorm2d)):
                module.reset_parameters()

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {'*.A_log', '*.D'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^norm|^feature_norms', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New classifier with ``num_classes`` outputs (0 = none); ``global_pool=None`` keeps the current pooling."""
        dd = get_device_dtype(self)
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool, in_features=self.num_features, **dd)
        self.head_hidden_size = self.head.num_features

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs (before the next downsample) and the final features.

        Args:
            x: (B, in_chans, H, W) images.
            indices: stages to return: None = all, int n = last n, or a list of (possibly negative) indices.
            norm: apply the per-stage ``feature_norms`` (models built with ``feature_norms=True``) to every
                intermediate; without them, apply the final norm to the last stage's intermediate.
            stop_early: stop after the last requested stage (the final output is then that stage's output).
            output_fmt: only ``'NCHW'``.
            intermediates_only: return only the list of intermediates.
        Returns:
            ``[maps]`` or ``(final, [maps])``; maps are (B, C_i, H_i, W_i).
        """
        if output_fmt != 'NCHW':
            raise ValueError(f'{type(self).__name__} intermediates are NCHW only, got output_fmt={output_fmt!r}')
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        num_stages = len(self.stages)
        x = self.stem(check_image_batch(x, self.in_chans, type(self).__name__))
        if torch.jit.is_scripting() or not stop_early:  # no slicing of Sequential when scripting
            stages = self.stages
        else:
            stages = self.stages[:max_index + 1]
        last_index = 0
        for i, stage in enumerate(stages):
            x = stage(x)
            last_index = i
            if i in take_indices:
                if norm and self.feature_norms is not None:
                    intermediates.append(self.feature_norms[i](x))
                elif norm and i == num_stages - 1:
                    intermediates.append(self.norm(x))
                else:
                    intermediates.append(x)
        if intermediates_only:
            return intermediates
        if last_index == num_stages - 1:
            x = self.norm(x)  # the final norm belongs to the last stage only
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages (and norms / head) not needed to produce ``indices``; returns the kept indices."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[:max_index + 1]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if self.feature_norms is not None:
            if prune_norm:
                self.feature_norms = None
            else:
                self.feature_norms = nn.ModuleList([
                    feature_norm if i in take_indices else nn.Identity()
                    for i, feature_norm in enumerate(self.feature_norms[:max_index + 1])])
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> normalised last-stage map (B, num_features, H/32, W/32) (ceil sizes)."""
        x = self.stem(check_image_batch(x, self.in_chans, type(self).__name__))
        x = self.stages(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool (+ dropout) and classify; ``pre_logits=True`` returns the pooled (B, head_hidden_size) vector."""
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

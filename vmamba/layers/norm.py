"""Normalisation layers that timm.layers does not provide: fp32 LayerNorms that are not cast back, and the
LayerNorms of channels-last and NCHW maps on the Triton kernel (``vmamba/kernels/layer_norm.py``)."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function, register_notrace_module
from torch import nn

from vmamba.kernels.layer_norm import (
    add_layer_norm_last_dim_unchecked, layer_norm_channels_first_unchecked, layer_norm_last_dim_unchecked)

from .packing import autocast_dtype

__all__ = ['LayerNorm2d', 'LayerNorm2dFp32', 'LayerNormFp32', 'LayerNormLastDim', 'add_layer_norm']


class LayerNorm2dFp32(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map, computed in at least fp32.

    Unlike ``timm.layers.LayerNorm2dFp32`` the result is *not* cast back: it stays in
    ``promote_types(x.dtype, float32)`` (fp32 for fp16/bf16/fp32 inputs, fp64 for fp64), and the caller decides when
    to return to the activation dtype. Weights are stored as ``weight``/``bias`` of shape (C,).
    """

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True, device=None, dtype=None):
        super().__init__(num_channels, eps=eps, elementwise_affine=affine, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) any float dtype -> (B, C, H, W) in fp32 (fp64 for fp64 input)."""
        compute_dtype = torch.promote_types(x.dtype, torch.float32)
        weight = self.weight.to(compute_dtype) if self.weight is not None else None
        bias = self.bias.to(compute_dtype) if self.bias is not None else None
        x = x.to(compute_dtype).permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)
        return x.permute(0, 3, 1, 2)


def _check_channels(norm: nn.LayerNorm, x: torch.Tensor, channel_dim: int = -1) -> None:
    """One clear error unless x is a floating tensor with the norm's channel count at ``channel_dim`` (-1 or 1)."""
    channels = norm.normalized_shape[0]
    if x.dim() < (2 if channel_dim == 1 else 1) or x.shape[channel_dim] != channels or not x.is_floating_point():
        expected = f'(B, {channels}, H, W) map' if channel_dim == 1 else f'(..., {channels}) tensor'
        raise ValueError(f'{type(norm).__name__}({channels}) expects a floating {expected}, '
                         f'got {x.dtype} of shape {tuple(x.shape)}')


@register_notrace_module  # custom op with dtype logic: a leaf for torch.fx feature extraction
class LayerNormFp32(nn.LayerNorm):
    """LayerNorm over the last dim, computed in at least fp32 and *not* cast back (see :class:`LayerNorm2dFp32`).

    (..., C) any float dtype -> (..., C) in fp32 (fp64 for fp64 input). Runs :func:`layer_norm_last_dim` (Triton
    on CUDA, many rows per program; ``F.layer_norm`` elsewhere). SS2D's channels-last blocks pass its parameters to
    :func:`~vmamba.kernels.routes.merge_routes_layer_norm` instead of calling it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_channels(self, x)
        return layer_norm_last_dim_unchecked(x, self.weight, self.bias, self.eps,
                                             out_dtype=torch.promote_types(x.dtype, torch.float32))


@register_notrace_module
class LayerNormLastDim(nn.LayerNorm):
    """LayerNorm over the last dim of channels-last maps / token sequences: (..., C) -> (..., C).

    Drop-in for ``nn.LayerNorm`` / ``timm.layers.LayerNorm`` (same ``weight`` / ``bias``). Statistics and affine are
    computed in fp32; the result is stored in the input dtype, or under autocast in the autocast dtype, which is what
    the next autocast op (linear, conv) would cast it to (``timm.layers.fast_norm`` and apex's fused LayerNorm do
    the same). On CUDA it runs the Triton kernel of ``vmamba/kernels/layer_norm.py``: PyTorch's LayerNorm kernel
    spends one thread block per row, ~10x its memory floor for the 48..192-channel maps of VMamba / EfficientVMamba.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_channels(self, x)
        return layer_norm_last_dim_unchecked(x, self.weight, self.bias, self.eps,
                                             out_dtype=_result_dtype(x.device.type, x.dtype))

    def add_forward(self, residual: torch.Tensor, branch: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``s = residual + branch`` and ``y = self(s)`` in one pass (one Triton kernel on CUDA, forward and
        backward): residual, branch (..., C) of one shape and device -> s (..., C) in their promoted dtype (as
        ``residual + branch``), y (..., C) in the dtype :meth:`forward` gives for s."""
        _check_channels(self, residual)
        if branch.shape != residual.shape or not branch.is_floating_point() or branch.device != residual.device:
            raise ValueError(f'{type(self).__name__}({self.normalized_shape[0]}).add_forward expects a floating '
                             f'branch of the residual\'s shape {tuple(residual.shape)} on {residual.device}, got '
                             f'{branch.dtype} of shape {tuple(branch.shape)} on {branch.device}')
        out_dtype = _result_dtype(residual.device.type, torch.promote_types(residual.dtype, branch.dtype))
        return add_layer_norm_last_dim_unchecked(residual, branch, self.weight, self.bias, self.eps, out_dtype)


def _result_dtype(device_type: str, dtype: torch.dtype) -> torch.dtype:
    """dtype of :class:`LayerNormLastDim`'s result for an input of ``dtype``: the autocast dtype under autocast on
    ``device_type`` (fp64 excepted), else ``dtype``."""
    return (autocast_dtype(device_type) if dtype != torch.float64 else None) or dtype


@register_notrace_function  # custom op with dtype logic: a call_function node in torch.fx graphs
def add_layer_norm(residual: torch.Tensor, branch: torch.Tensor,
                   norm: LayerNormLastDim) -> Tuple[torch.Tensor, torch.Tensor]:
    """``norm.add_forward(residual, branch)``: (..., C), (..., C) -> s = residual + branch, y = norm(s). A function
    so that torch.fx feature extraction keeps it as one node (a module method would be traced through)."""
    return norm.add_forward(residual, branch)


@register_notrace_module
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of (B, C, H, W) maps; drop-in for ``timm.layers.LayerNorm2d`` (same ``weight`` /
    ``bias``, same result dtype as F.layer_norm: the input dtype, fp32 under CUDA autocast).

    Runs :func:`~vmamba.kernels.layer_norm.layer_norm_channels_first`: NCHW maps are read in place by the Triton
    kernel on CUDA (timm's version permutes to NHWC, lets F.layer_norm copy it, and permutes back; ~0.5 ms per call
    for VMamba-T's stem maps at batch 128).
    """

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = True, device=None, dtype=None):
        super().__init__(num_channels, eps=eps, elementwise_affine=affine, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_channels(self, x, channel_dim=1)
        out_dtype = x.dtype
        if x.dtype != torch.float64 and x.device.type == 'cuda' and torch.is_autocast_enabled('cuda'):
            out_dtype = torch.float32  # CUDA autocast runs layer_norm in fp32 (CPU autocast leaves its dtype alone)
        return layer_norm_channels_first_unchecked(x, self.weight, self.bias, self.eps, out_dtype)

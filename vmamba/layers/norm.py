"""Normalisation layers for NCHW maps that timm.layers does not provide.

(The Triton last-dim LayerNorm, ``vmamba/kernels/layer_norm.py``, is 6-15x faster than PyTorch's kernel per call,
but it made VMamba-T slower end to end on the H100 (3,105 vs 3,957 img/s inference, same run): these norms stay
on ``F.layer_norm``. See benchmarks/results/throughput_notes.md, v7.)"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['LayerNorm2dFp32', 'LayerNormFp32']


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


class LayerNormFp32(nn.LayerNorm):
    """LayerNorm over the last dim, computed in at least fp32 and *not* cast back (see :class:`LayerNorm2dFp32`).

    (..., C) any float dtype -> (..., C) in fp32 (fp64 for fp64 input).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        compute_dtype = torch.promote_types(x.dtype, torch.float32)
        weight = self.weight.to(compute_dtype) if self.weight is not None else None
        bias = self.bias.to(compute_dtype) if self.bias is not None else None
        return F.layer_norm(x.to(compute_dtype), self.normalized_shape, weight, bias, self.eps)

"""GELU recomputed in an MLP's backward, fused with its derivative and fc1's bias gradient.

:func:`gelu_recompute_backward`: ``h (M, H)`` (fc1's output, saved by ``RecomputeActMlp``), ``grad_a (M, H)`` (the
gradient of fc2's input ``a = gelu(h)``) ->::

    a = gelu(h)                        (M, H) in h's dtype: fc2's weight gradient needs it
    grad_h = grad_a * gelu'(h)         (M, H) in h's dtype: fc1's input and weight gradients need it
    grad_bias = sum_M(grad_h)          (H,) fp32 (fp64 for fp64 h): fc1's bias gradient, summed as grad_h is stored

``approximate`` is ``nn.GELU``'s: 'none' (erf) or 'tanh'. Math in fp32 (fp64 for fp64 h). CUDA tensors with
fp32/fp16/bf16 h run the one-pass Triton kernel of ``triton/gelu.py``; everything else (other devices, fp64,
``VMAMBA_SCAN_BACKEND=reference``) runs :func:`gelu_recompute_backward_ref`, PyTorch's GELU and GELU backward
kernels (also the tests' reference). No autograd: this is a backward.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .interface import scan_backend

__all__ = ['gelu_recompute_backward', 'gelu_recompute_backward_ref', 'fused_gelu_backward_available']


def fused_gelu_backward_available(h: Tensor) -> bool:
    """True where :func:`gelu_recompute_backward` runs the one-pass Triton kernel for ``h``."""
    return scan_backend(h.device) == 'triton' and h.dtype in (torch.float32, torch.float16, torch.bfloat16)


def gelu_recompute_backward_ref(h: Tensor, grad_a: Tensor, approximate: str = 'none',
                                ) -> Tuple[Tensor, Tensor, Tensor]:
    """h (M, H), grad_a (M, H) -> a, grad_h (M, H) contiguous in h's dtype, grad_bias (H,) fp32 (fp64 for fp64 h).

    Three PyTorch passes (GELU, GELU backward, column sum), computed in fp32 (fp64 for fp64 h)."""
    dtype = torch.float64 if h.dtype == torch.float64 else torch.float32
    with torch.autocast(h.device.type, enabled=False), torch.no_grad():
        h_wide = h.to(dtype)
        a = F.gelu(h_wide, approximate=approximate).to(h.dtype).contiguous()
        grad_h = torch.ops.aten.gelu_backward(grad_a.to(dtype), h_wide, approximate=approximate)
        grad_h = grad_h.to(h.dtype).contiguous()
        return a, grad_h, grad_h.to(dtype).sum(0)


def gelu_recompute_backward(h: Tensor, grad_a: Tensor, approximate: str = 'none') -> Tuple[Tensor, Tensor, Tensor]:
    """h (M, H), grad_a (M, H) of one shape, unit column stride (any row strides) -> a, grad_h (M, H) contiguous in
    h's dtype, grad_bias (H,) fp32 (fp64 for fp64 h); see the module docstring."""
    if fused_gelu_backward_available(h):
        from .triton.gelu import gelu_recompute_bwd
        return gelu_recompute_bwd(h, grad_a, approximate)
    return gelu_recompute_backward_ref(h, grad_a, approximate)

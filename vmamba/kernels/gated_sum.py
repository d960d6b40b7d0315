"""Gated group sum closing Vim's bidirectional Mamba mixer (token-major sequences), as autograd custom ops.

:func:`gated_group_sum`: ``y (batch, L, G*E)`` (the scan's G directions side by side), ``z (batch, L, E)`` (the
gate), a float ``scale`` -> ``out (batch, L, E)``::

    s[b, t, e]   = sum_g y[b, t, g*E + e]
    out[b, t, e] = scale * s[b, t, e] * silu(z[b, t, e])

one pass instead of unflatten + sum + divide + silu + multiply. Gradients, with ``sig = sigmoid(z)``::

    dy[b, t, g*E + e] = dout * scale * silu(z)                    (the same for every g)
    dz[b, t, e]       = dout * scale * s * sig * (1 + z * (1 - sig))

To spare saving ``y`` (G times wider than z), the forward op also returns ``s`` (in y's dtype) and the backward
saves ``z`` (a view of a tensor autograd keeps anyway) and ``s``. ``dz`` thus reads ``s`` rounded to y's dtype:
exact for fp32 / fp64 up to fp32 (fp64) rounding, one fp16 / bf16 rounding of ``s`` otherwise (relative error
<= 2^-11 / 2^-8 of ``s``, the same rounding the unfused code stores between its sum and its multiply).

CUDA tensors (fp32/fp16/bf16) run the Triton kernels of ``triton/gated_sum.py``; other devices, fp64 and
``VMAMBA_SCAN_BACKEND=reference`` run the PyTorch code below (:func:`gated_group_sum_ref` is also the tests'
reference). Math is fp32 (fp64 for fp64 inputs); out and dy are in y's dtype, dz in z's (the same: y and z must
share a dtype). Autocast is not consulted: the op computes on the dtypes it is given.
"""
from __future__ import annotations

import numbers
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .interface import check_float_tensor, scan_backend
from .layout import dispatch_through_custom_op, records_autograd

__all__ = ['gated_group_sum', 'gated_group_sum_ref']


def _use_triton(y: Tensor) -> bool:
    return scan_backend(y.device) == 'triton' and y.dtype in (torch.float32, torch.float16, torch.bfloat16)


def _compute_dtype(y: Tensor) -> torch.dtype:
    return torch.float64 if y.dtype == torch.float64 else torch.float32


def _group_sum(y: Tensor, channels: int, dtype: torch.dtype) -> Tensor:
    """(batch, L, G*E) -> sum over the G groups, (batch, L, E) in ``dtype``."""
    return y.to(dtype).unflatten(-1, (y.shape[-1] // channels, channels)).sum(dim=-2)


def gated_group_sum_ref(y: Tensor, z: Tensor, scale: float = 1.0) -> Tensor:
    """(batch, L, G*E), (batch, L, E) -> scale * sum_g(y) * silu(z), (batch, L, E) contiguous in y's dtype.

    Plain PyTorch (differentiable); computed in fp32 (fp64 for fp64 y)."""
    dtype = _compute_dtype(y)
    s = _group_sum(y, z.shape[-1], dtype)
    return (s * scale * F.silu(z.to(dtype))).to(y.dtype).contiguous()


def _backward_ref(grad_out: Tensor, z: Tensor, s: Tensor, scale: float, groups: int) -> Tuple[Tensor, Tensor]:
    """Closed-form gradients of :func:`gated_group_sum_ref` from the saved group sum: (dy, dz)."""
    dtype = _compute_dtype(z)
    zf = z.to(dtype)
    g = grad_out.to(dtype) * scale
    sig = torch.sigmoid(zf)
    dy = (g * (zf * sig)).repeat(1, 1, groups)  # index g*E + e reads e: the same for every group
    dz = g * s.to(dtype) * (sig * (1 + zf * (1 - sig)))
    return dy.to(s.dtype).contiguous(), dz.to(z.dtype).contiguous()


# ----------------------------------------------------------------------------------------------------------------
# Custom ops. The forward returns (out, s): s = sum_g y (batch, L, E) in y's dtype, saved for the backward.

def _forward_impl(y: Tensor, z: Tensor, scale: float) -> Tuple[Tensor, Tensor]:
    if _use_triton(y):
        from .triton.gated_sum import gated_group_sum_fwd
        return gated_group_sum_fwd(y, z, scale)
    dtype = _compute_dtype(y)
    with torch.autocast(y.device.type, enabled=False), torch.no_grad():
        s = _group_sum(y, z.shape[-1], dtype)
        out = s * scale * F.silu(z.to(dtype))
    return out.to(y.dtype).contiguous(), s.to(y.dtype).contiguous()


_gated_sum_op = torch.library.custom_op('vmamba::gated_group_sum', mutates_args=())(_forward_impl)


def _output_impl(y: Tensor, z: Tensor, scale: float) -> Tensor:
    """out alone, for calls without a backward: the Triton kernel then does not write the group sum."""
    if _use_triton(y):
        from .triton.gated_sum import gated_group_sum_fwd
        return gated_group_sum_fwd(y, z, scale, store_sum=False)[0]
    return _forward_impl(y, z, scale)[0]


@_gated_sum_op.register_fake
def _gated_sum_fake(y, z, scale):
    return y.new_empty(z.shape), y.new_empty(z.shape)


def _backward_impl(grad_out: Tensor, z: Tensor, s: Tensor, scale: float, groups: int) -> Tuple[Tensor, Tensor]:
    """Returns (dy (batch, L, G*E) contiguous in s's dtype, dz (batch, L, E) contiguous in z's dtype)."""
    if _use_triton(z):
        from .triton.gated_sum import gated_group_sum_bwd
        return gated_group_sum_bwd(grad_out, z, s, scale, groups)
    with torch.autocast(z.device.type, enabled=False), torch.no_grad():
        return _backward_ref(grad_out, z, s, scale, groups)


_gated_sum_backward_op = torch.library.custom_op('vmamba::gated_group_sum_backward',
                                                 mutates_args=())(_backward_impl)


@_gated_sum_backward_op.register_fake
def _gated_sum_backward_fake(grad_out, z, s, scale, groups):
    batch, length, channels = z.shape
    return s.new_empty((batch, length, groups * channels)), z.new_empty(z.shape)


def _setup_context(ctx, inputs, output):
    y, z, scale = inputs
    _, s = output
    ctx.mark_non_differentiable(s)
    ctx.save_for_backward(z, s)
    ctx.scale = scale
    ctx.groups = y.shape[-1] // z.shape[-1]


def _backward(ctx, grad_out, grad_s=None, backward_op=None):
    z, s = ctx.saved_tensors
    dy, dz = (backward_op or torch.ops.vmamba.gated_group_sum_backward)(
        grad_out.contiguous(), z, s, ctx.scale, ctx.groups)
    return dy, dz, None


_gated_sum_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerGatedGroupSum(torch.autograd.Function):
    """The op's implementation, context and backward without the custom-op dispatch (~30-50 us host per call);
    eager tensors only (``layout.dispatch_through_custom_op``). Returns out only (s is an internal)."""

    @staticmethod
    def forward(ctx, y, z, scale):
        out, s = _forward_impl(y, z, scale)
        ctx.save_for_backward(z, s)
        ctx.scale = scale
        ctx.groups = y.shape[-1] // z.shape[-1]
        return out

    @staticmethod
    def backward(ctx, grad_out):
        return _backward(ctx, grad_out, backward_op=_backward_impl)


# ----------------------------------------------------------------------------------------------------------------
# Validation and the public function

def _validate(y, z, scale) -> None:
    check_float_tensor('gated_group_sum', 'y', y, 3, None, 'y')
    check_float_tensor('gated_group_sum', 'z', z, 3, y.device, 'y')
    if y.dtype != z.dtype:
        raise TypeError(f'gated_group_sum: y and z must share a dtype, got y {y.dtype} and z {z.dtype}')
    if y.shape[:2] != z.shape[:2]:
        raise ValueError(f'gated_group_sum: y and z must have the same (batch, L), got y shape {tuple(y.shape)} '
                         f'and z shape {tuple(z.shape)}')
    channels, wide = z.shape[2], y.shape[2]
    if channels == 0 or wide == 0 or wide % channels != 0:
        raise ValueError(f'gated_group_sum: y must be (batch, L, G*E) with G >= 1 for z of shape (batch, L, E): '
                         f'y last dim must be a positive multiple of z last dim, got y shape {tuple(y.shape)} and '
                         f'z shape {tuple(z.shape)}')
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f'gated_group_sum: scale must be a real number (Python float), got {type(scale).__name__}')


def gated_group_sum(y: Tensor, z: Tensor, scale: float = 1.0) -> Tensor:
    """``scale * sum_g y[..., g*E:(g+1)*E] * silu(z)`` over token-major sequences, in one pass.

    Args:
        y: (batch, L, G*E) fp32/fp16/bf16/fp64, G >= 1 (= y.shape[-1] // E); any batch / position strides (e.g.
            the transposed view of the scan's token-major output), made contiguous only if the channel stride
            is not 1.
        z: (batch, L, E), y's dtype and device; any batch / position strides (e.g. ``xz[..., E:]``).
        scale: Python float (e.g. ``1 / G`` to average the groups).
    Returns:
        (batch, L, E) contiguous in y's dtype. Math is fp32 (fp64 for fp64 inputs). Gradients: dy (batch, L, G*E)
        and dz (batch, L, E), contiguous in the inputs' dtype. Saved for the backward: z and the group sum
        ``s = sum_g y`` (batch, L, E) in y's dtype (not y).
    """
    _validate(y, z, scale)
    if y.stride(2) != 1:
        y = y.contiguous()
    if z.stride(2) != 1:
        z = z.contiguous()
    args = (y, z, float(scale))
    if dispatch_through_custom_op(y):
        return torch.ops.vmamba.gated_group_sum(*args)[0]
    if not records_autograd(y, z):
        return _output_impl(*args)
    return _EagerGatedGroupSum.apply(*args)

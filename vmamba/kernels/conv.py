"""Fused depthwise conv + SiLU over token-major sequences (Vim's bidirectional Mamba mixer), as autograd custom ops.

:func:`depthwise_conv_silu`: ``x (batch, L, E)``, ``weight (G*E, W)`` with odd ``W``, ``bias (G*E,)`` ->
``y (batch, L, G*E)``::

    pre[b, t, o] = bias[o] + sum_k weight[o, k] * x[b, t + k - (W-1)//2, o % E]    (zeros outside [0, L))
    y = silu(pre)

i.e. a "same"-padded depthwise conv whose G output groups all read the E input channels. CUDA tensors run the
Triton kernels of ``triton/conv.py``; other devices (and ``VMAMBA_SCAN_BACKEND=reference``) run the PyTorch code
below (:func:`depthwise_conv_silu_ref` is also the tests' reference). Math is fp32 (fp64 for fp64 ``x``, which always
takes the PyTorch path); the output has x's dtype, gradients the dtype of their input.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .interface import check_float_tensor, scan_backend
from .layout import dispatch_through_custom_op, records_autograd

__all__ = ['depthwise_conv_silu', 'depthwise_conv_silu_ref']


def _use_triton(x: Tensor) -> bool:
    return scan_backend(x.device) == 'triton' and x.dtype in (torch.float32, torch.float16, torch.bfloat16)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def depthwise_conv_silu_ref(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, groups_out: int = 1) -> Tensor:
    """(batch, L, E), (G*E, W), (G*E,) or None -> silu(conv) (batch, L, G*E) contiguous in x's dtype.

    Plain PyTorch (differentiable); computed in fp32 (fp64 for fp64 x)."""
    dtype = _compute_dtype(x)
    out_channels, width = weight.shape
    if x.shape[1] == 0:
        return x.new_empty((x.shape[0], 0, out_channels))
    xr = x.to(dtype).transpose(1, 2).repeat(1, groups_out, 1)
    pre = F.conv1d(xr, weight.to(dtype).unsqueeze(1), None if bias is None else bias.to(dtype),
                   padding=(width - 1) // 2, groups=out_channels)
    return F.silu(pre).transpose(1, 2).contiguous().to(x.dtype)


def _backward_ref(grad_out: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], groups_out: int):
    """Closed-form gradients of :func:`depthwise_conv_silu_ref`: (dx, dweight, dbias or None)."""
    dtype = _compute_dtype(x)
    batch, length, channels = x.shape
    out_channels, width = weight.shape
    pad = (width - 1) // 2
    if length == 0:
        dbias = None if bias is None else bias.new_zeros(bias.shape)
        return x.new_zeros(x.shape), weight.new_zeros(weight.shape), dbias
    xr = x.to(dtype).transpose(1, 2).repeat(1, groups_out, 1)  # (batch, G*E, L)
    w = weight.to(dtype)
    pre = F.conv1d(xr, w.unsqueeze(1), None if bias is None else bias.to(dtype), padding=pad, groups=out_channels)
    sig = torch.sigmoid(pre)
    dpre = grad_out.to(dtype).transpose(1, 2) * sig * (1 + pre * (1 - sig))  # (batch, G*E, L)
    patches = F.pad(xr, (pad, pad)).unfold(2, width, 1)  # (batch, G*E, L, W)
    dweight = torch.einsum('bol,bolk->ok', dpre, patches)
    dxr = F.conv1d(dpre, w.flip(-1).unsqueeze(1), padding=pad, groups=out_channels)
    dx = dxr.view(batch, groups_out, channels, length).sum(1).transpose(1, 2)
    dbias = None if bias is None else dpre.sum((0, 2)).to(bias.dtype)
    return dx.to(x.dtype).contiguous(), dweight.to(weight.dtype).contiguous(), dbias


# ----------------------------------------------------------------------------------------------------------------
# Custom ops. An absent bias gradient travels as an empty tensor.

def _conv_silu_impl(x: Tensor, weight: Tensor, bias: Optional[Tensor], groups_out: int) -> Tensor:
    if _use_triton(x):
        from .triton.conv import depthwise_conv_silu_fwd
        return depthwise_conv_silu_fwd(x, weight, bias, groups_out)
    with torch.autocast(x.device.type, enabled=False), torch.no_grad():
        return depthwise_conv_silu_ref(x, weight, bias, groups_out)


_conv_silu_op = torch.library.custom_op('vmamba::depthwise_conv_silu', mutates_args=())(_conv_silu_impl)


@_conv_silu_op.register_fake
def _conv_silu_fake(x, weight, bias, groups_out):
    return x.new_empty((x.shape[0], x.shape[1], weight.shape[0]))


def _conv_silu_backward_impl(grad_out: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor],
                           groups_out: int) -> List[Tensor]:
    """Returns [dx (batch, L, E), dweight (G*E, W), dbias (G*E,) or empty]."""
    if _use_triton(x):
        from .triton.conv import depthwise_conv_silu_bwd
        dx, dweight, dbias = depthwise_conv_silu_bwd(grad_out, x, weight, bias, groups_out)
    else:
        with torch.autocast(x.device.type, enabled=False), torch.no_grad():
            dx, dweight, dbias = _backward_ref(grad_out, x, weight, bias, groups_out)
    return [dx, dweight, x.new_empty((0,)) if dbias is None else dbias]


_conv_silu_backward_op = torch.library.custom_op('vmamba::depthwise_conv_silu_backward',
                                               mutates_args=())(_conv_silu_backward_impl)


@_conv_silu_backward_op.register_fake
def _conv_silu_backward_fake(grad_out, x, weight, bias, groups_out):
    return [x.new_empty(x.shape), weight.new_empty(weight.shape),
            x.new_empty((0,)) if bias is None else bias.new_empty(bias.shape)]


def _setup_context(ctx, inputs, output):
    x, weight, bias, groups_out = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.groups_out = groups_out


def _backward(ctx, grad_out, backward_op=None):
    x, weight, bias = ctx.saved_tensors
    dx, dweight, dbias = (backward_op or torch.ops.vmamba.depthwise_conv_silu_backward)(
        grad_out.contiguous(), x, weight, bias, ctx.groups_out)
    return dx, dweight, dbias if bias is not None else None, None


_conv_silu_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerConvSilu(torch.autograd.Function):
    """The op's implementation, context and backward without the custom-op dispatch (~30-50 us host per call);
    eager tensors only (``layout.dispatch_through_custom_op``)."""

    @staticmethod
    def forward(ctx, *inputs):
        output = _conv_silu_impl(*inputs)
        _setup_context(ctx, inputs, output)
        return output

    @staticmethod
    def backward(ctx, grad_out):
        return _backward(ctx, grad_out, backward_op=_conv_silu_backward_impl)


# ----------------------------------------------------------------------------------------------------------------
# Validation and the public function

def _check_tensor(name: str, t, ndim: int, device) -> None:
    check_float_tensor('depthwise_conv_silu', name, t, ndim, device, 'x')


def _validate(x, weight, bias, groups_out) -> None:
    _check_tensor('x', x, 3, None)
    _check_tensor('weight', weight, 2, x.device)
    if isinstance(groups_out, bool) or not isinstance(groups_out, int) or groups_out < 1:
        raise ValueError(f'depthwise_conv_silu: groups_out must be an int >= 1, got {groups_out!r}')
    channels = x.shape[2]
    out_channels, width = weight.shape
    if width % 2 != 1:
        raise ValueError(f'depthwise_conv_silu: weight width must be odd (2K-1), got weight shape '
                         f'{tuple(weight.shape)}')
    if out_channels != groups_out * channels:
        raise ValueError(f'depthwise_conv_silu: weight must be (groups_out * E = {groups_out} * {channels}, W), '
                         f'got {tuple(weight.shape)} for x of shape {tuple(x.shape)}')
    if bias is not None:
        _check_tensor('bias', bias, 1, x.device)
        if bias.shape[0] != out_channels:
            raise ValueError(f'depthwise_conv_silu: bias must be (G*E = {out_channels},), got {tuple(bias.shape)}')


def depthwise_conv_silu(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, groups_out: int = 1) -> Tensor:
    """SiLU of a "same"-padded depthwise conv over token-major sequences, G output groups per input channel.

    Args:
        x: (batch, L, E) fp32/fp16/bf16/fp64; any batch / position strides (e.g. ``xz[..., :E]``), made contiguous
            only if the channel stride is not 1.
        weight: (G*E, W), W odd; output channel ``o = g*E + c`` reads input channel ``c``. Any float dtype
            (e.g. fp32 with fp16 x); math is fp32.
        bias: (G*E,) or None.
        groups_out: G.
    Returns:
        (batch, L, G*E) contiguous, in x's dtype: ``silu(bias[o] + sum_k weight[o, k] x[t + k - (W-1)//2, o % E])``.
    """
    _validate(x, weight, bias, groups_out)
    if x.stride(2) != 1:
        x = x.contiguous()
    args = (x, weight.contiguous(), None if bias is None else bias.contiguous(), int(groups_out))
    if dispatch_through_custom_op(x):
        return torch.ops.vmamba.depthwise_conv_silu(*args)
    if not records_autograd(*args[:3]):
        return _conv_silu_impl(*args)
    return _EagerConvSilu.apply(*args)

"""Fused causal depthwise conv + SiLU over token-major sequences (Vim's bidirectional Mamba mixer), as autograd
custom ops.

:func:`causal_conv_silu`: ``x (batch, L, E)``, ``weight (G*E, K)``, ``bias (G*E,)``, ``reverse`` (G bools) ->
``y (batch, L, G*E)``. Output channel ``o = g*E + c`` reads input channel ``c``; group g is Mamba's causal conv1d
run over the sequence forwards, or (``reverse[g]``) over the reversed sequence with its output read back in the
original order::

    forward group:  pre[b, t, o] = bias[o] + sum_k weight[o, k] * x[b, t - (K-1) + k, c]     (zeros outside [0, L))
    reverse group:  pre[b, t, o] = bias[o] + sum_k weight[o, k] * x[b, t + (K-1) - k, c]
    y = silu(pre)

so the official checkpoints' ``conv1d`` / ``conv1d_b`` kernels are used as they are. CUDA tensors run the Triton
kernels of ``triton/conv.py``; other devices (and ``VMAMBA_SCAN_BACKEND=reference``) run the PyTorch code below
(:func:`causal_conv_silu_ref` is also the tests' reference). Math is fp32 (fp64 for fp64 ``x``, which always takes
the PyTorch path); the output has x's dtype, gradients the dtype of their input.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .interface import check_float_tensor, scan_backend
from .layout import dispatch_through_custom_op, records_autograd

__all__ = ['causal_conv_silu', 'causal_conv_silu_ref']


def _use_triton(x: Tensor) -> bool:
    return scan_backend(x.device) == 'triton' and x.dtype in (torch.float32, torch.float16, torch.bfloat16)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _same_padded_weight(weight: Tensor, reverse: Sequence[bool]) -> Tensor:
    """(G*E, K) group kernels -> one (G*E, 2K-1) kernel of a "same"-padded conv: forward groups ``[w, 0 * (K-1)]``
    (taps x[t-K+1 .. t]), reverse groups ``[0 * (K-1), flip(w)]`` (taps x[t .. t+K-1])."""
    k = weight.shape[1]
    parts = [F.pad(w.flip(-1), (k - 1, 0)) if r else F.pad(w, (0, k - 1))
             for w, r in zip(weight.chunk(len(reverse)), reverse)]
    return torch.cat(parts)


def causal_conv_silu_ref(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                         reverse: Sequence[bool] = (False,)) -> Tensor:
    """(batch, L, E), (G*E, K), (G*E,) or None, G bools -> silu(conv) (batch, L, G*E) contiguous in x's dtype.

    Plain PyTorch (differentiable): one "same"-padded depthwise ``conv1d`` over the input repeated G times, with
    each group's kernel placed on its side of the centre tap. Computed in fp32 (fp64 for fp64 x)."""
    dtype = _compute_dtype(x)
    out_channels, width = weight.shape
    if x.shape[1] == 0:
        return x.new_empty((x.shape[0], 0, out_channels))
    xr = x.to(dtype).transpose(1, 2).repeat(1, len(reverse), 1)
    packed = _same_padded_weight(weight.to(dtype), reverse)
    pre = F.conv1d(xr, packed.unsqueeze(1), None if bias is None else bias.to(dtype), padding=width - 1,
                   groups=out_channels)
    return F.silu(pre).transpose(1, 2).contiguous().to(x.dtype)


def _backward_ref(grad_out: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], reverse: Sequence[bool]):
    """Closed-form gradients of :func:`causal_conv_silu_ref`: (dx, dweight, dbias or None)."""
    dtype = _compute_dtype(x)
    batch, length, channels = x.shape
    out_channels, width = weight.shape
    groups, pad = len(reverse), width - 1
    if length == 0:
        dbias = None if bias is None else bias.new_zeros(bias.shape)
        return x.new_zeros(x.shape), weight.new_zeros(weight.shape), dbias
    xr = x.to(dtype).transpose(1, 2).repeat(1, groups, 1)  # (batch, G*E, L)
    w = _same_padded_weight(weight.to(dtype), reverse)  # (G*E, 2K-1)
    pre = F.conv1d(xr, w.unsqueeze(1), None if bias is None else bias.to(dtype), padding=pad, groups=out_channels)
    sig = torch.sigmoid(pre)
    dpre = grad_out.to(dtype).transpose(1, 2) * sig * (1 + pre * (1 - sig))  # (batch, G*E, L)
    patches = F.pad(xr, (pad, pad)).unfold(2, 2 * width - 1, 1)  # (batch, G*E, L, 2K-1)
    dpacked = torch.einsum('bol,bolk->ok', dpre, patches)
    dweight = torch.cat([d.flip(-1)[:, :width] if r else d[:, :width]
                         for d, r in zip(dpacked.chunk(groups), reverse)])
    dxr = F.conv1d(dpre, w.flip(-1).unsqueeze(1), padding=pad, groups=out_channels)
    dx = dxr.view(batch, groups, channels, length).sum(1).transpose(1, 2)
    dbias = None if bias is None else dpre.sum((0, 2)).to(bias.dtype)
    return dx.to(x.dtype).contiguous(), dweight.to(weight.dtype).contiguous(), dbias


# ----------------------------------------------------------------------------------------------------------------
# Custom ops. An absent bias gradient travels as an empty tensor.

def _conv_silu_impl(x: Tensor, weight: Tensor, bias: Optional[Tensor], reverse: List[bool]) -> Tensor:
    if _use_triton(x):
        from .triton.conv import causal_conv_silu_fwd
        return causal_conv_silu_fwd(x, weight, bias, reverse)
    with torch.autocast(x.device.type, enabled=False), torch.no_grad():
        return causal_conv_silu_ref(x, weight, bias, reverse)


_conv_silu_op = torch.library.custom_op('vmamba::causal_conv_silu', mutates_args=())(_conv_silu_impl)


@_conv_silu_op.register_fake
def _conv_silu_fake(x, weight, bias, reverse):
    return x.new_empty((x.shape[0], x.shape[1], weight.shape[0]))


def _conv_silu_backward_impl(grad_out: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor],
                             reverse: List[bool]) -> List[Tensor]:
    """Returns [dx (batch, L, E), dweight (G*E, K), dbias (G*E,) or empty]."""
    if _use_triton(x):
        from .triton.conv import causal_conv_silu_bwd
        dx, dweight, dbias = causal_conv_silu_bwd(grad_out, x, weight, bias, reverse)
    else:
        with torch.autocast(x.device.type, enabled=False), torch.no_grad():
            dx, dweight, dbias = _backward_ref(grad_out, x, weight, bias, reverse)
    return [dx, dweight, x.new_empty((0,)) if dbias is None else dbias]


_conv_silu_backward_op = torch.library.custom_op('vmamba::causal_conv_silu_backward',
                                                 mutates_args=())(_conv_silu_backward_impl)


@_conv_silu_backward_op.register_fake
def _conv_silu_backward_fake(grad_out, x, weight, bias, reverse):
    return [x.new_empty(x.shape), weight.new_empty(weight.shape),
            x.new_empty((0,)) if bias is None else bias.new_empty(bias.shape)]


def _setup_context(ctx, inputs, output):
    x, weight, bias, reverse = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.reverse = reverse


def _backward(ctx, grad_out, backward_op=None):
    x, weight, bias = ctx.saved_tensors
    dx, dweight, dbias = (backward_op or torch.ops.vmamba.causal_conv_silu_backward)(
        grad_out.contiguous(), x, weight, bias, ctx.reverse)
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
    check_float_tensor('causal_conv_silu', name, t, ndim, device, 'x')


def _normalize_reverse(reverse) -> List[bool]:
    if isinstance(reverse, bool):
        return [reverse]
    if not isinstance(reverse, (tuple, list)) or not reverse or not all(isinstance(r, bool) for r in reverse):
        raise ValueError(f'causal_conv_silu: reverse must be a bool or a non-empty tuple of bools (one per output '
                         f'group), got {reverse!r}')
    return list(reverse)


def _validate(x, weight, bias, reverse: List[bool]) -> None:
    _check_tensor('x', x, 3, None)
    _check_tensor('weight', weight, 2, x.device)
    channels, groups = x.shape[2], len(reverse)
    out_channels, width = weight.shape
    if width < 1:
        raise ValueError(f'causal_conv_silu: weight needs at least one tap, got shape {tuple(weight.shape)}')
    if out_channels != groups * channels:
        raise ValueError(f'causal_conv_silu: weight must be (G * E = {groups} * {channels}, K) for {groups} '
                         f'group(s) (len(reverse)) and x of shape {tuple(x.shape)}, got {tuple(weight.shape)}')
    if bias is not None:
        _check_tensor('bias', bias, 1, x.device)
        if bias.shape[0] != out_channels:
            raise ValueError(f'causal_conv_silu: bias must be (G*E = {out_channels},), got {tuple(bias.shape)}')


def causal_conv_silu(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                     reverse: Union[bool, Sequence[bool]] = False) -> Tensor:
    """SiLU of G causal depthwise convs over token-major sequences, each forwards or over the reversed sequence.

    Args:
        x: (batch, L, E) fp32/fp16/bf16/fp64; any batch / position strides (e.g. ``xz[..., :E]``), made contiguous
            only if the channel stride is not 1.
        weight: (G*E, K): Mamba's ``conv1d.weight`` (E, 1, K) of each group, squeezed and concatenated; output
            channel ``o = g*E + c`` reads input channel ``c``. Any float dtype (e.g. fp32 with fp16 x); math is fp32.
        bias: (G*E,) or None.
        reverse: one bool per group (a bool: G = 1). True: the group's conv runs over the reversed sequence
            (anti-causal: position t reads x[t .. t+K-1]), its output in the original order.
    Returns:
        (batch, L, G*E) contiguous, in x's dtype.
    """
    reverse = _normalize_reverse(reverse)
    _validate(x, weight, bias, reverse)
    if x.stride(2) != 1:
        x = x.contiguous()
    args = (x, weight.contiguous(), None if bias is None else bias.contiguous(), reverse)
    if dispatch_through_custom_op(x):
        return torch.ops.vmamba.causal_conv_silu(*args)
    if not records_autograd(*args[:3]):
        return _conv_silu_impl(*args)
    return _EagerConvSilu.apply(*args)

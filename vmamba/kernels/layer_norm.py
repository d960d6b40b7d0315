"""LayerNorm over the channels of maps and token sequences, as autograd custom ops.

:func:`layer_norm_last_dim`: ``x (..., C)``, ``weight (C,)`` and ``bias (C,)`` (each optional) -> ``y (..., C)``;
:func:`layer_norm_channels_first`: the same over dim 1 of ``(B, C, *spatial)`` maps (NCHW read in place, no permute
copies), the ``LayerNorm2d`` of VMamba's stem, downsamples and final norm::

    mean = mean_C(x);  var = mean_C((x - mean)^2)  (biased, like F.layer_norm);  rstd = 1 / sqrt(var + eps)
    y = (x - mean) * rstd * weight + bias

Statistics and affine are computed in fp32 (fp64 for fp64 x); y is stored in ``out_dtype`` (default x's dtype),
gradients in the dtype of their input. CUDA tensors with fp32/fp16/bf16 x and C <= 8192 run the Triton kernels of
``triton/layer_norm.py`` (many rows per program: PyTorch's CUDA kernel spends one thread block per row, ~10x its
memory floor for the C = 48..192 maps of VMamba / EfficientVMamba). Everything else (other devices, fp64,
C > 8192 whose rows are long enough for PyTorch's per-row kernel, ``VMAMBA_SCAN_BACKEND=reference``) runs
``torch.native_layer_norm`` and its backward in the compute dtype. :func:`layer_norm_last_dim_ref` is the plain
(autograd-differentiable) PyTorch spec the tests compare against.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .interface import scan_backend
from .layout import dispatch_through_custom_op, records_autograd

__all__ = ['layer_norm_last_dim', 'layer_norm_last_dim_ref', 'layer_norm_last_dim_unchecked',
           'layer_norm_channels_first', 'layer_norm_channels_first_unchecked']

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_TRITON_MAX_CHANNELS = 8192  # = triton/layer_norm.py MAX_CHANNELS (not imported: triton loads lazily)


def _use_triton(x: Tensor) -> bool:
    return (scan_backend(x.device) == 'triton' and x.dtype in (torch.float32, torch.float16, torch.bfloat16)
            and x.shape[1] <= _TRITON_MAX_CHANNELS)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _cast(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return None if t is None else t.to(dtype)


def layer_norm_last_dim_ref(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float = 1e-5,
                            out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """(..., C), (C,) or None, (C,) or None -> (..., C) contiguous in ``out_dtype`` (default x's dtype).

    ``F.layer_norm`` in fp32 (fp64 for fp64 x); plain PyTorch, differentiable."""
    dtype = _compute_dtype(x)
    y = F.layer_norm(x.to(dtype), (x.shape[-1],), _cast(weight, dtype), _cast(bias, dtype), eps)
    return y.to(out_dtype or x.dtype).contiguous()


# ----------------------------------------------------------------------------------------------------------------
# Custom ops on (M, C) rows, or (B, C, P) channels-first maps normalised over C (NCHW maps seen as (B, C, H*W)).
# y is always (rows, C) contiguous (for maps: channels-last memory, as timm's LayerNorm2d returns), and the forward
# also returns the row statistics mean, rstd (rows,) (fp32; fp64 for fp64 x), saved for the backward. dx has x's
# shape. Absent weight / bias gradients travel as empty tensors.

def _as_rows(t: Tensor) -> Tensor:
    """(M, C) -> itself; (B, C, P) -> its (B*P, C) rows (a copy)."""
    return t if t.dim() == 2 else t.transpose(1, 2).reshape(-1, t.shape[1])


def _from_rows(rows: Tensor, like: Tensor) -> Tensor:
    """Inverse of :func:`_as_rows`: contiguous, of ``like``'s shape."""
    if like.dim() == 2:
        return rows.contiguous()
    batch, channels, pixels = like.shape
    return rows.view(batch, pixels, channels).transpose(1, 2).contiguous()


def _num_rows(x: Tensor) -> int:
    return x.shape[0] if x.dim() == 2 else x.shape[0] * x.shape[2]


def _forward_impl(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
                   out_dtype: torch.dtype) -> Tuple[Tensor, Tensor, Tensor]:
    if _use_triton(x):
        from .triton.layer_norm import layer_norm_fwd
        return layer_norm_fwd(x, weight, bias, eps, out_dtype)
    dtype = _compute_dtype(x)
    rows = _as_rows(x)
    with torch.autocast(x.device.type, enabled=False), torch.no_grad():
        y, mean, rstd = torch.native_layer_norm(rows.to(dtype), [rows.shape[1]], _cast(weight, dtype),
                                                _cast(bias, dtype), eps)
    return y.to(out_dtype).contiguous(), mean.reshape(-1), rstd.reshape(-1)


_layer_norm_op = torch.library.custom_op('vmamba::layer_norm_last_dim', mutates_args=())(_forward_impl)


def _output_impl(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
                 out_dtype: torch.dtype) -> Tensor:
    """y alone, for calls without a backward: the Triton kernel then does not store the row statistics."""
    if _use_triton(x):
        from .triton.layer_norm import layer_norm_fwd
        return layer_norm_fwd(x, weight, bias, eps, out_dtype, store_stats=False)[0]
    return _forward_impl(x, weight, bias, eps, out_dtype)[0]


@_layer_norm_op.register_fake
def _layer_norm_fake(x, weight, bias, eps, out_dtype):
    stats = _compute_dtype(x)
    rows = _num_rows(x)
    return (x.new_empty((rows, x.shape[1]), dtype=out_dtype), x.new_empty((rows,), dtype=stats),
            x.new_empty((rows,), dtype=stats))


def _backward_impl(grad_out: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                            mean: Tensor, rstd: Tensor) -> List[Tensor]:
    """Returns [dx of x's shape, contiguous, dweight (C,) or empty, dbias (C,) or empty]."""
    if _use_triton(x):
        from .triton.layer_norm import layer_norm_bwd
        dx, dweight, dbias = layer_norm_bwd(grad_out, x, weight, bias, mean, rstd)
    else:
        dtype = _compute_dtype(x)
        rows = _as_rows(x)
        num_rows, channels = rows.shape
        with torch.autocast(x.device.type, enabled=False), torch.no_grad():
            dx, dweight, dbias = torch.ops.aten.native_layer_norm_backward(
                grad_out.to(dtype), rows.to(dtype), [channels], mean.view(num_rows, 1),
                rstd.view(num_rows, 1), _cast(weight, dtype), _cast(bias, dtype),
                [True, weight is not None, bias is not None])
        dx = _from_rows(dx.to(x.dtype), x)
        dweight = None if weight is None else dweight.to(weight.dtype)
        dbias = None if bias is None else dbias.to(bias.dtype)
    return [dx, x.new_empty((0,)) if dweight is None else dweight, x.new_empty((0,)) if dbias is None else dbias]


_layer_norm_backward_op = torch.library.custom_op('vmamba::layer_norm_last_dim_backward',
                                                mutates_args=())(_backward_impl)


@_layer_norm_backward_op.register_fake
def _layer_norm_backward_fake(grad_out, x, weight, bias, mean, rstd):
    return [x.new_empty(x.shape), x.new_empty((0,)) if weight is None else weight.new_empty(weight.shape),
            x.new_empty((0,)) if bias is None else bias.new_empty(bias.shape)]


def _setup_context(ctx, inputs, output):
    x, weight, bias, eps, out_dtype = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, weight, bias, mean, rstd)


def _backward(ctx, grad_out, grad_mean, grad_rstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dweight, dbias = torch.ops.vmamba.layer_norm_last_dim_backward(
        grad_out.contiguous(), x, weight, bias, mean, rstd)
    return dx, dweight if weight is not None else None, dbias if bias is not None else None, None, None


_layer_norm_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerLayerNorm(torch.autograd.Function):
    """The same implementation functions as the custom ops, without the custom-op dispatch: in eager mode that
    dispatch costs ~30-50 us of host time per call (measured on the CPU: 33 us vs 4 us for ``native_layer_norm``),
    which made a batch-128 VMamba-T step launch-bound on the H100. torch.compile traces the custom ops instead."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, out_dtype):
        y, mean, rstd = _forward_impl(x, weight, bias, eps, out_dtype)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        dx, dweight, dbias = _backward_impl(grad_out.contiguous(), x, weight, bias, mean, rstd)
        return dx, dweight if weight is not None else None, dbias if bias is not None else None, None, None


# ----------------------------------------------------------------------------------------------------------------
# Validation and the public function

def _validate(x, weight, bias, out_dtype, op='layer_norm_last_dim', channel_dim=-1) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f'{op}: x must be a torch.Tensor, got {type(x).__name__}')
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f'{op}: x must be a floating tensor (fp32/fp16/bf16/fp64), got {x.dtype}')
    if channel_dim == -1 and (x.dim() == 0 or x.shape[-1] == 0):
        raise ValueError(f'{op}: x must be (..., C) with C >= 1, got shape {tuple(x.shape)}')
    if channel_dim == 1 and (x.dim() < 2 or x.shape[1] == 0):
        raise ValueError(f'{op}: x must be (B, C, *spatial) with C >= 1, got shape {tuple(x.shape)}')
    channels = x.shape[channel_dim]
    for name, t in (('weight', weight), ('bias', bias)):
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f'{op}: {name} must be a torch.Tensor or None, got {type(t).__name__}')
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f'{op}: {name} must be a floating tensor, got {t.dtype}')
        if tuple(t.shape) != (channels,):
            raise ValueError(f'{op}: {name} must be (C={channels},) for x of shape {tuple(x.shape)}, '
                             f'got {tuple(t.shape)}')
        if t.device != x.device:
            raise ValueError(f'{op}: {name} is on {t.device} but x is on {x.device}; put all inputs on one device')
    if out_dtype is not None and out_dtype not in _FLOAT_DTYPES:
        raise TypeError(f'{op}: out_dtype must be one of fp32/fp16/bf16/fp64 or None, got {out_dtype}')


def _rows(x: Tensor) -> Tensor:
    """(..., C) -> (M, C) rows with unit column stride and one row stride: a view when the strides allow it."""
    channels = x.shape[-1]
    if channels > 1 and x.stride(-1) != 1:
        x = x.contiguous()
    return x.reshape(-1, channels)  # copies (contiguous) only if the leading dims do not merge into one stride


def layer_norm_last_dim(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float = 1e-5,
                        out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """LayerNorm over the last dim, statistics and affine in fp32 (fp64 for fp64 x).

    Args:
        x: (..., C) fp32/fp16/bf16/fp64. Read in place when its leading dims merge into rows with one stride and
            unit channel stride (contiguous maps, channels-last views of NCHW maps, ``x_wide[..., :C]``); copied
            otherwise.
        weight, bias: (C,) any float dtype, or None (each independently).
        eps: added to the biased variance.
        out_dtype: dtype of the result; default x's dtype (e.g. fp32 for an fp32-output norm of fp16 maps).
    Returns:
        (..., C) contiguous in ``out_dtype``. Gradients: dx in x's dtype, dweight / dbias in their own dtypes.
    """
    _validate(x, weight, bias, out_dtype)
    return layer_norm_last_dim_unchecked(x, weight, bias, eps, out_dtype)


def layer_norm_last_dim_unchecked(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float = 1e-5,
                                  out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """:func:`layer_norm_last_dim` without its input validation, for callers that guarantee valid inputs (the norm
    modules of ``vmamba/layers/norm.py`` check the channel count); saves host time on every call."""
    return _apply(_rows(x), weight, bias, eps, out_dtype or x.dtype).view(x.shape)


def _apply(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float, out_dtype: torch.dtype) -> Tensor:
    """The op (custom op or eager Function) on (M, C) rows or (B, C, P) maps -> (rows, C)."""
    args = (x, None if weight is None else weight.contiguous(), None if bias is None else bias.contiguous(),
            float(eps), out_dtype)
    if dispatch_through_custom_op(x):
        return torch.ops.vmamba.layer_norm_last_dim(*args)[0]
    if not records_autograd(*args[:3]):
        return _output_impl(*args)
    return _EagerLayerNorm.apply(*args)


def layer_norm_channels_first(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float = 1e-5,
                              out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """LayerNorm over dim 1 of (B, C, *spatial) maps (NCHW), statistics and affine in fp32 (fp64 for fp64 x); the
    ``LayerNorm2d`` of timm / ConvNeXt without its two permute copies.

    Args:
        x: (B, C, *spatial). Contiguous maps are read in place (channel stride H*W); channels-last memory goes
            through the last-dim rows (also in place); other layouts are copied.
        weight, bias, eps, out_dtype: as :func:`layer_norm_last_dim`.
    Returns:
        (B, C, *spatial) in ``out_dtype``, in channels-last memory (as timm's ``LayerNorm2d`` returns; the
        channels-last blocks of VMamba read it without copies).
    """
    _validate(x, weight, bias, out_dtype, op='layer_norm_channels_first', channel_dim=1)
    return layer_norm_channels_first_unchecked(x, weight, bias, eps, out_dtype)


def layer_norm_channels_first_unchecked(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                                        eps: float = 1e-5, out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """:func:`layer_norm_channels_first` without its input validation (see :func:`layer_norm_last_dim_unchecked`)."""
    out_dtype = out_dtype or x.dtype
    channels_last = x.movedim(1, -1)
    if x.dim() > 2 and channels_last.is_contiguous():  # channels-last memory: last-dim rows, read in place
        return _apply(channels_last.reshape(-1, x.shape[1]), weight, bias, eps, out_dtype).view(
            channels_last.shape).movedim(-1, 1)
    maps = x.reshape(x.shape[0], x.shape[1], -1)
    if maps.shape[2] > 1 and maps.stride(2) != 1:
        maps = maps.contiguous()
    return _apply(maps, weight, bias, eps, out_dtype).view(channels_last.shape).movedim(-1, 1)

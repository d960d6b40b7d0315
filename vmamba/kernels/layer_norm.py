"""LayerNorm and RMSNorm over the channels of maps and token sequences, as autograd custom ops.

:func:`layer_norm_last_dim`: ``x (..., C)``, ``weight (C,)`` and ``bias (C,)`` (each optional) -> ``y (..., C)``;
:func:`layer_norm_channels_first`: the same over dim 1 of ``(B, C, *spatial)`` maps (NCHW read in place, no permute
copies), the ``LayerNorm2d`` of VMamba's stem, downsamples and final norm::

    mean = mean_C(x);  var = mean_C((x - mean)^2)  (biased, like F.layer_norm);  rstd = 1 / sqrt(var + eps)
    y = (x - mean) * rstd * weight + bias

:func:`add_layer_norm_last_dim`: ``residual``, ``branch (..., C)`` -> ``s = residual + branch`` (their promoted
dtype, as PyTorch's add) and ``y`` = the LayerNorm of s, in one pass: the residual add in front of the second norm
of a pre-norm block (``VMambaBlock``). Its backward adds the gradient of s from s's later uses to the LayerNorm's
input gradient, in the same pass.

:func:`rms_norm_last_dim` and :func:`add_rms_norm_last_dim`: the same with RMSNorm (``F.rms_norm``, no bias), the
norm of Vim's pre-norm blocks::

    rstd = 1 / sqrt(mean_C(x^2) + eps);  y = x * rstd * weight

They run through the same custom ops and kernels with ``rms=True``.

Statistics and affine are computed in fp32 (fp64 for fp64 x); y is stored in ``out_dtype`` (default x's dtype),
gradients in the dtype of their input. CUDA tensors with fp32/fp16/bf16 x and C <= 8192 run the Triton kernels of
``triton/layer_norm.py`` (many rows per program: PyTorch's CUDA kernel spends one thread block per row, ~10x its
memory floor for the C = 48..192 maps of VMamba / EfficientVMamba). Everything else (other devices, fp64,
C > 8192 whose rows are long enough for PyTorch's per-row kernel, ``VMAMBA_SCAN_BACKEND=reference``) runs
``torch.native_layer_norm`` and its backward (RMSNorm: ``F.rms_norm`` and its backward formula) in the compute
dtype. :func:`layer_norm_last_dim_ref`, :func:`add_layer_norm_last_dim_ref`, :func:`rms_norm_last_dim_ref` and
:func:`add_rms_norm_last_dim_ref` are the plain (autograd-differentiable) PyTorch specs the tests compare against.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .interface import scan_backend
from .layout import dispatch_through_custom_op, records_autograd

__all__ = ['layer_norm_last_dim', 'layer_norm_last_dim_ref', 'layer_norm_last_dim_unchecked',
           'layer_norm_channels_first', 'layer_norm_channels_first_unchecked',
           'add_layer_norm_last_dim', 'add_layer_norm_last_dim_ref', 'add_layer_norm_last_dim_unchecked',
           'rms_norm_last_dim', 'rms_norm_last_dim_ref', 'rms_norm_last_dim_unchecked',
           'add_rms_norm_last_dim', 'add_rms_norm_last_dim_ref', 'add_rms_norm_last_dim_unchecked']

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


def add_layer_norm_last_dim_ref(residual: Tensor, branch: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                                eps: float = 1e-5, out_dtype: Optional[torch.dtype] = None) -> Tuple[Tensor, Tensor]:
    """(..., C), (..., C), (C,) or None, (C,) or None -> s = residual + branch (..., C) contiguous in their promoted
    dtype, y = :func:`layer_norm_last_dim_ref` of s (..., C) in ``out_dtype`` (default s's dtype)."""
    s = (residual + branch).contiguous()
    return s, layer_norm_last_dim_ref(s, weight, bias, eps, out_dtype)


def rms_norm_last_dim_ref(x: Tensor, weight: Optional[Tensor], eps: float = 1e-5,
                          out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """(..., C), (C,) or None -> (..., C) contiguous in ``out_dtype`` (default x's dtype).

    ``F.rms_norm`` in fp32 (fp64 for fp64 x); plain PyTorch, differentiable."""
    dtype = _compute_dtype(x)
    y = F.rms_norm(x.to(dtype), (x.shape[-1],), _cast(weight, dtype), eps)
    return y.to(out_dtype or x.dtype).contiguous()


def add_rms_norm_last_dim_ref(residual: Tensor, branch: Tensor, weight: Optional[Tensor], eps: float = 1e-5,
                              out_dtype: Optional[torch.dtype] = None) -> Tuple[Tensor, Tensor]:
    """(..., C), (..., C), (C,) or None -> s = residual + branch (..., C) contiguous in their promoted dtype,
    y = :func:`rms_norm_last_dim_ref` of s (..., C) in ``out_dtype`` (default s's dtype)."""
    s = (residual + branch).contiguous()
    return s, rms_norm_last_dim_ref(s, weight, eps, out_dtype)


# ----------------------------------------------------------------------------------------------------------------
# Custom ops on (M, C) rows, or (B, C, P) channels-first maps normalised over C (NCHW maps seen as (B, C, H*W)).
# y is always (rows, C) contiguous (for maps: channels-last memory, as timm's LayerNorm2d returns), and the forward
# also returns the row statistics mean, rstd (rows,) (fp32; fp64 for fp64 x), saved for the backward. dx has x's
# shape. Absent weight / bias gradients travel as empty tensors. ``rms=True`` computes RMSNorm (bias must be None):
# mean is then an empty tensor.

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


def _no_mean(x: Tensor) -> Tensor:
    """The mean output of an RMSNorm: empty, in the statistics dtype."""
    return x.new_empty((0,), dtype=_compute_dtype(x))


def _reference_forward(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
                       rms: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """PyTorch's kernels on the rows of x in the compute dtype -> y (rows, C), mean (rows,) (empty for RMSNorm),
    rstd (rows,), all in the compute dtype."""
    dtype = _compute_dtype(x)
    rows = _as_rows(x).to(dtype)
    with torch.autocast(x.device.type, enabled=False), torch.no_grad():
        if rms:  # y as RMSNorm modules compute it; rstd for the backward
            y = F.rms_norm(rows, (rows.shape[1],), _cast(weight, dtype), eps)
            return y, _no_mean(x), torch.rsqrt(rows.square().mean(1) + eps)
        y, mean, rstd = torch.native_layer_norm(rows, [rows.shape[1]], _cast(weight, dtype), _cast(bias, dtype), eps)
    return y, mean.reshape(-1), rstd.reshape(-1)


def _reference_backward(grad_out: Tensor, rows: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                        mean: Tensor, rstd: Tensor, rms: bool) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """grad_out, rows (M, C) -> dx (M, C), dweight (C,) or None, dbias (C,) or None, in the compute dtype."""
    dtype = _compute_dtype(rows)
    num_rows, channels = rows.shape
    grad_out, rows, weight = grad_out.to(dtype), rows.to(dtype), _cast(weight, dtype)
    with torch.autocast(rows.device.type, enabled=False), torch.no_grad():
        if rms:  # dx = rstd * (g - xhat * mean_C(g * xhat)), g = dy * weight
            xhat = rows * rstd[:, None]
            g = grad_out if weight is None else grad_out * weight
            dx = (g - xhat * (g * xhat).mean(1, keepdim=True)) * rstd[:, None]
            return dx, None if weight is None else (grad_out * xhat).sum(0), None
        return torch.ops.aten.native_layer_norm_backward(
            grad_out, rows, [channels], mean.view(num_rows, 1), rstd.view(num_rows, 1), weight,
            _cast(bias, dtype), [True, weight is not None, bias is not None])


def _forward_impl(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
                  out_dtype: torch.dtype, rms: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    if rms and bias is not None:
        raise ValueError('the RMSNorm (rms=True) has no bias')
    if _use_triton(x):
        from .triton.layer_norm import layer_norm_fwd
        y, mean, rstd = layer_norm_fwd(x, weight, bias, eps, out_dtype, rms=rms)
        return y, _no_mean(x) if rms else mean, rstd
    y, mean, rstd = _reference_forward(x, weight, bias, eps, rms)
    return y.to(out_dtype).contiguous(), mean, rstd


_layer_norm_op = torch.library.custom_op('vmamba::layer_norm_last_dim', mutates_args=())(_forward_impl)


def _output_impl(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
                 out_dtype: torch.dtype, rms: bool = False) -> Tensor:
    """y alone, for calls without a backward: the Triton kernel then does not store the row statistics."""
    if _use_triton(x):
        from .triton.layer_norm import layer_norm_fwd
        return layer_norm_fwd(x, weight, bias, eps, out_dtype, store_stats=False, rms=rms)[0]
    return _forward_impl(x, weight, bias, eps, out_dtype, rms)[0]


@_layer_norm_op.register_fake
def _layer_norm_fake(x, weight, bias, eps, out_dtype, rms=False):
    stats = _compute_dtype(x)
    rows = _num_rows(x)
    return (x.new_empty((rows, x.shape[1]), dtype=out_dtype), x.new_empty((0 if rms else rows,), dtype=stats),
            x.new_empty((rows,), dtype=stats))


def _backward_impl(grad_out: Tensor, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                   mean: Tensor, rstd: Tensor, rms: bool = False) -> List[Tensor]:
    """Returns [dx of x's shape, contiguous, dweight (C,) or empty, dbias (C,) or empty]."""
    if _use_triton(x):
        from .triton.layer_norm import layer_norm_bwd
        dx, dweight, dbias = layer_norm_bwd(grad_out, x, weight, bias, None if rms else mean, rstd, rms)
    else:
        dx, dweight, dbias = _reference_backward(grad_out, _as_rows(x), weight, bias, mean, rstd, rms)
        dx = _from_rows(dx.to(x.dtype), x)
        dweight = None if weight is None else dweight.to(weight.dtype)
        dbias = None if bias is None else dbias.to(bias.dtype)
    return [dx, x.new_empty((0,)) if dweight is None else dweight, x.new_empty((0,)) if dbias is None else dbias]


_layer_norm_backward_op = torch.library.custom_op('vmamba::layer_norm_last_dim_backward',
                                                mutates_args=())(_backward_impl)


@_layer_norm_backward_op.register_fake
def _layer_norm_backward_fake(grad_out, x, weight, bias, mean, rstd, rms=False):
    return [x.new_empty(x.shape), x.new_empty((0,)) if weight is None else weight.new_empty(weight.shape),
            x.new_empty((0,)) if bias is None else bias.new_empty(bias.shape)]


def _setup_context(ctx, inputs, output):
    x, weight, bias, eps, out_dtype, rms = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    ctx.rms = rms


def _backward(ctx, grad_out, grad_mean, grad_rstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dweight, dbias = torch.ops.vmamba.layer_norm_last_dim_backward(
        grad_out.contiguous(), x, weight, bias, mean, rstd, ctx.rms)
    return dx, dweight if weight is not None else None, dbias if bias is not None else None, None, None, None


_layer_norm_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerLayerNorm(torch.autograd.Function):
    """The same implementation functions as the custom ops, without the custom-op dispatch: in eager mode that
    dispatch costs ~30-50 us of host time per call (measured on the CPU: 33 us vs 4 us for ``native_layer_norm``),
    which made a batch-128 VMamba-T step launch-bound on the H100. torch.compile traces the custom ops instead."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, out_dtype, rms):
        y, mean, rstd = _forward_impl(x, weight, bias, eps, out_dtype, rms)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.rms = rms
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        dx, dweight, dbias = _backward_impl(grad_out.contiguous(), x, weight, bias, mean, rstd, ctx.rms)
        return dx, dweight if weight is not None else None, dbias if bias is not None else None, None, None, None


# ----------------------------------------------------------------------------------------------------------------
# Residual add + LayerNorm custom ops on (M, C) rows: residual and branch -> s = residual + branch (M, C) contiguous
# in their promoted dtype, y = LayerNorm(s) (M, C) contiguous in out_dtype, mean, rstd (M,) of s. The backward takes
# the gradients of y and of s (s is the new residual stream, used again later) and returns d_residual, d_branch (the
# same sum in branch's dtype; empty when that is residual's dtype: d_branch is d_residual), dweight, dbias.
# ``rms=True``: RMSNorm(s) (no bias, mean empty), as for the ops above.

def _use_triton_add(residual: Tensor, branch: Tensor) -> bool:
    return _use_triton(residual) and branch.dtype in (torch.float32, torch.float16, torch.bfloat16)


def _add_forward_impl(residual: Tensor, branch: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                      eps: float, out_dtype: torch.dtype, rms: bool = False) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    if rms and bias is not None:
        raise ValueError('the RMSNorm (rms=True) has no bias')
    if _use_triton_add(residual, branch):
        from .triton.layer_norm import add_layer_norm_fwd
        s, y, mean, rstd = add_layer_norm_fwd(residual, branch, weight, bias, eps, out_dtype, rms=rms)
        return s, y, _no_mean(s) if rms else mean, rstd
    s = (residual + branch).contiguous()
    y, mean, rstd = _forward_impl(s, weight, bias, eps, out_dtype, rms)
    return s, y, mean, rstd


_add_layer_norm_op = torch.library.custom_op('vmamba::add_layer_norm_last_dim', mutates_args=())(_add_forward_impl)


def _add_output_impl(residual: Tensor, branch: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                     eps: float, out_dtype: torch.dtype, rms: bool = False) -> Tuple[Tensor, Tensor]:
    """s and y alone, for calls without a backward: the Triton kernel then does not store the row statistics."""
    if _use_triton_add(residual, branch):
        from .triton.layer_norm import add_layer_norm_fwd
        return add_layer_norm_fwd(residual, branch, weight, bias, eps, out_dtype, store_stats=False, rms=rms)[:2]
    s = (residual + branch).contiguous()
    return s, _output_impl(s, weight, bias, eps, out_dtype, rms)


@_add_layer_norm_op.register_fake
def _add_layer_norm_fake(residual, branch, weight, bias, eps, out_dtype, rms=False):
    s_dtype = torch.promote_types(residual.dtype, branch.dtype)
    stats = torch.float64 if s_dtype == torch.float64 else torch.float32
    rows = residual.shape[0]
    return (residual.new_empty(residual.shape, dtype=s_dtype), residual.new_empty(residual.shape, dtype=out_dtype),
            residual.new_empty((0 if rms else rows,), dtype=stats), residual.new_empty((rows,), dtype=stats))


def _add_backward_impl(grad_y: Tensor, grad_s: Tensor, s: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                       mean: Tensor, rstd: Tensor, residual_dtype: torch.dtype,
                       branch_dtype: torch.dtype, rms: bool = False) -> List[Tensor]:
    """Returns [d_residual (M, C), d_branch (M, C) or empty, dweight (C,) or empty, dbias (C,) or empty]."""
    if _use_triton(s):
        from .triton.layer_norm import add_layer_norm_bwd
        d_residual, d_branch, dweight, dbias = add_layer_norm_bwd(grad_y, grad_s, s, weight, bias,
                                                                  None if rms else mean, rstd, residual_dtype,
                                                                  branch_dtype, rms)
    else:
        dx, dweight, dbias = _reference_backward(grad_y, s, weight, bias, mean, rstd, rms)
        d_sum = dx + grad_s.to(dx.dtype)
        d_residual = d_sum.to(residual_dtype)
        d_branch = None if branch_dtype == residual_dtype else d_sum.to(branch_dtype)
        dweight = None if weight is None else dweight.to(weight.dtype)
        dbias = None if bias is None else dbias.to(bias.dtype)
    return [d_residual, *(s.new_empty((0,)) if t is None else t for t in (d_branch, dweight, dbias))]


_add_layer_norm_backward_op = torch.library.custom_op('vmamba::add_layer_norm_last_dim_backward',
                                                      mutates_args=())(_add_backward_impl)


@_add_layer_norm_backward_op.register_fake
def _add_layer_norm_backward_fake(grad_y, grad_s, s, weight, bias, mean, rstd, residual_dtype, branch_dtype,
                                  rms=False):
    return [s.new_empty(s.shape, dtype=residual_dtype),
            s.new_empty((0,)) if branch_dtype == residual_dtype else s.new_empty(s.shape, dtype=branch_dtype),
            s.new_empty((0,)) if weight is None else weight.new_empty(weight.shape),
            s.new_empty((0,)) if bias is None else bias.new_empty(bias.shape)]


def _add_grads(d_residual: Tensor, d_branch: Tensor, dweight: Tensor, dbias: Tensor, weight: Optional[Tensor],
               bias: Optional[Tensor], branch_dtype: torch.dtype):
    """The backward op's outputs -> the gradients of (residual, branch, weight, bias, eps, out_dtype, rms)."""
    return (d_residual, d_residual if d_residual.dtype == branch_dtype else d_branch,
            dweight if weight is not None else None, dbias if bias is not None else None, None, None, None)


def _add_setup_context(ctx, inputs, output):
    residual, branch, weight, bias, eps, out_dtype, rms = inputs
    s, _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(s, weight, bias, mean, rstd)
    ctx.dtypes = (residual.dtype, branch.dtype)
    ctx.rms = rms


def _add_backward(ctx, grad_s, grad_y, grad_mean, grad_rstd):
    s, weight, bias, mean, rstd = ctx.saved_tensors
    grads = torch.ops.vmamba.add_layer_norm_last_dim_backward(
        grad_y.contiguous(), grad_s.contiguous(), s, weight, bias, mean, rstd, *ctx.dtypes, ctx.rms)
    return _add_grads(*grads, weight, bias, ctx.dtypes[1])


_add_layer_norm_op.register_autograd(_add_backward, setup_context=_add_setup_context)


class _EagerAddLayerNorm(torch.autograd.Function):
    """The residual add + LayerNorm custom ops' implementation without the custom-op dispatch (see
    :class:`_EagerLayerNorm`)."""

    @staticmethod
    def forward(ctx, residual, branch, weight, bias, eps, out_dtype, rms):
        s, y, mean, rstd = _add_forward_impl(residual, branch, weight, bias, eps, out_dtype, rms)
        ctx.save_for_backward(s, weight, bias, mean, rstd)
        ctx.dtypes = (residual.dtype, branch.dtype)
        ctx.rms = rms
        return s, y

    @staticmethod
    def backward(ctx, grad_s, grad_y):
        s, weight, bias, mean, rstd = ctx.saved_tensors
        grads = _add_backward_impl(grad_y.contiguous(), grad_s.contiguous(), s, weight, bias, mean, rstd,
                                   *ctx.dtypes, ctx.rms)
        return _add_grads(*grads, weight, bias, ctx.dtypes[1])


# ----------------------------------------------------------------------------------------------------------------
# Validation and the public function

def _validate(x, weight, bias, out_dtype, op='layer_norm_last_dim', channel_dim=-1, x_name='x') -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f'{op}: {x_name} must be a torch.Tensor, got {type(x).__name__}')
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f'{op}: {x_name} must be a floating tensor (fp32/fp16/bf16/fp64), got {x.dtype}')
    if channel_dim == -1 and (x.dim() == 0 or x.shape[-1] == 0):
        raise ValueError(f'{op}: {x_name} must be (..., C) with C >= 1, got shape {tuple(x.shape)}')
    if channel_dim == 1 and (x.dim() < 2 or x.shape[1] == 0):
        raise ValueError(f'{op}: {x_name} must be (B, C, *spatial) with C >= 1, got shape {tuple(x.shape)}')
    channels = x.shape[channel_dim]
    for name, t in (('weight', weight), ('bias', bias)):
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f'{op}: {name} must be a torch.Tensor or None, got {type(t).__name__}')
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f'{op}: {name} must be a floating tensor, got {t.dtype}')
        if tuple(t.shape) != (channels,):
            raise ValueError(f'{op}: {name} must be (C={channels},) for {x_name} of shape {tuple(x.shape)}, '
                             f'got {tuple(t.shape)}')
        if t.device != x.device:
            raise ValueError(f'{op}: {name} is on {t.device} but {x_name} is on {x.device}; put all inputs on one '
                             f'device')
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


def _apply(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float, out_dtype: torch.dtype,
           rms: bool = False) -> Tensor:
    """The op (custom op or eager Function) on (M, C) rows or (B, C, P) maps -> (rows, C)."""
    args = (x, None if weight is None else weight.contiguous(), None if bias is None else bias.contiguous(),
            float(eps), out_dtype, rms)
    if dispatch_through_custom_op(x):
        return torch.ops.vmamba.layer_norm_last_dim(*args)[0]
    if not records_autograd(*args[:3]):
        return _output_impl(*args)
    return _EagerLayerNorm.apply(*args)


def _validate_add(residual, branch, weight, bias, out_dtype, op) -> None:
    _validate(residual, weight, bias, out_dtype, op=op, x_name='residual')
    if not isinstance(branch, Tensor):
        raise TypeError(f'{op}: branch must be a torch.Tensor, got {type(branch).__name__}')
    if branch.dtype not in _FLOAT_DTYPES:
        raise TypeError(f'{op}: branch must be a floating tensor (fp32/fp16/bf16/fp64), got {branch.dtype}')
    if branch.shape != residual.shape:
        raise ValueError(f'{op}: branch must have the shape of residual {tuple(residual.shape)}, '
                         f'got {tuple(branch.shape)}')
    if branch.device != residual.device:
        raise ValueError(f'{op}: branch is on {branch.device} but residual is on {residual.device}; put all inputs '
                         f'on one device')


def add_layer_norm_last_dim(residual: Tensor, branch: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                            eps: float = 1e-5, out_dtype: Optional[torch.dtype] = None) -> Tuple[Tensor, Tensor]:
    """Residual add and LayerNorm over the last dim in one pass: ``s = residual + branch``, ``y = LayerNorm(s)``
    (what ``s = residual + branch; y = layer_norm_last_dim(s, weight, bias, eps, out_dtype)`` computes).

    Args:
        residual, branch: (..., C) of one shape, fp32/fp16/bf16/fp64 (dtypes may differ, e.g. an fp32 residual
            stream and an fp16 branch under autocast). Read in place when :func:`layer_norm_last_dim` would read x
            in place (each with its own row stride); copied otherwise.
        weight, bias, eps: as :func:`layer_norm_last_dim`.
        out_dtype: dtype of y; default s's dtype.
    Returns:
        s (..., C) contiguous in ``promote_types(residual.dtype, branch.dtype)``, y (..., C) contiguous in
        ``out_dtype``. Gradients (of y and of s, the new residual stream): d_residual in residual's dtype, d_branch
        in branch's dtype, dweight / dbias in their own dtypes.
    """
    _validate_add(residual, branch, weight, bias, out_dtype, 'add_layer_norm_last_dim')
    return add_layer_norm_last_dim_unchecked(residual, branch, weight, bias, eps, out_dtype)


def add_layer_norm_last_dim_unchecked(residual: Tensor, branch: Tensor, weight: Optional[Tensor],
                                      bias: Optional[Tensor], eps: float = 1e-5,
                                      out_dtype: Optional[torch.dtype] = None) -> Tuple[Tensor, Tensor]:
    """:func:`add_layer_norm_last_dim` without its input validation (see :func:`layer_norm_last_dim_unchecked`)."""
    return _apply_add(residual, branch, weight, bias, eps, out_dtype, rms=False)


def _apply_add(residual: Tensor, branch: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
               out_dtype: Optional[torch.dtype], rms: bool) -> Tuple[Tensor, Tensor]:
    """The residual add + norm op (custom op or eager Function) on (..., C) -> s, y (..., C)."""
    args = (_rows(residual), _rows(branch), None if weight is None else weight.contiguous(),
            None if bias is None else bias.contiguous(), float(eps),
            out_dtype or torch.promote_types(residual.dtype, branch.dtype), rms)
    if dispatch_through_custom_op(residual):
        s, y = torch.ops.vmamba.add_layer_norm_last_dim(*args)[:2]
    elif not records_autograd(*args[:4]):
        s, y = _add_output_impl(*args)
    else:
        s, y = _EagerAddLayerNorm.apply(*args)
    return s.view(residual.shape), y.view(residual.shape)


def rms_norm_last_dim(x: Tensor, weight: Optional[Tensor], eps: float = 1e-5,
                      out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """RMSNorm over the last dim (``F.rms_norm``: ``x * rsqrt(mean(x^2) + eps) * weight``), computed in fp32 (fp64
    for fp64 x).

    Args:
        x: (..., C) fp32/fp16/bf16/fp64, read in place as by :func:`layer_norm_last_dim`.
        weight: (C,) any float dtype, or None.
        eps: added to the mean square.
        out_dtype: dtype of the result; default x's dtype (e.g. the fp16 weight dtype for an fp32 residual stream).
    Returns:
        (..., C) contiguous in ``out_dtype``. Gradients: dx in x's dtype, dweight in weight's dtype.
    """
    _validate(x, weight, None, out_dtype, op='rms_norm_last_dim')
    return rms_norm_last_dim_unchecked(x, weight, eps, out_dtype)


def rms_norm_last_dim_unchecked(x: Tensor, weight: Optional[Tensor], eps: float = 1e-5,
                                out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """:func:`rms_norm_last_dim` without its input validation (see :func:`layer_norm_last_dim_unchecked`)."""
    return _apply(_rows(x), weight, None, eps, out_dtype or x.dtype, rms=True).view(x.shape)


def add_rms_norm_last_dim(residual: Tensor, branch: Tensor, weight: Optional[Tensor], eps: float = 1e-5,
                          out_dtype: Optional[torch.dtype] = None) -> Tuple[Tensor, Tensor]:
    """Residual add and RMSNorm over the last dim in one pass: ``s = residual + branch``, ``y = RMSNorm(s)``
    (what ``s = residual + branch; y = rms_norm_last_dim(s, weight, eps, out_dtype)`` computes).

    Args:
        residual, branch: (..., C) of one shape, as for :func:`add_layer_norm_last_dim` (e.g. Vim's fp32 residual
            stream and the fp16 / fp32 mixer output).
        weight, eps: as :func:`rms_norm_last_dim`.
        out_dtype: dtype of y; default s's dtype.
    Returns:
        s (..., C) contiguous in ``promote_types(residual.dtype, branch.dtype)``, y (..., C) contiguous in
        ``out_dtype``. Gradients (of y and of s): d_residual in residual's dtype, d_branch in branch's dtype, dweight
        in weight's dtype.
    """
    _validate_add(residual, branch, weight, None, out_dtype, 'add_rms_norm_last_dim')
    return add_rms_norm_last_dim_unchecked(residual, branch, weight, eps, out_dtype)


def add_rms_norm_last_dim_unchecked(residual: Tensor, branch: Tensor, weight: Optional[Tensor], eps: float = 1e-5,
                                    out_dtype: Optional[torch.dtype] = None) -> Tuple[Tensor, Tensor]:
    """:func:`add_rms_norm_last_dim` without its input validation (see :func:`layer_norm_last_dim_unchecked`)."""
    return _apply_add(residual, branch, weight, None, eps, out_dtype, rms=True)


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

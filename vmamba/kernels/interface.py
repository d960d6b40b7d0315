"""Public selective scan: input validation, the ``vmamba::selective_scan`` custom op, its autograd and dispatch.

CUDA tensors run the Triton kernels (``vmamba/kernels/triton``); every other device runs the chunked PyTorch
reference (``vmamba/kernels/reference.py``). ``VMAMBA_SCAN_BACKEND=reference`` forces the reference on CUDA too
(same math, slower). The op is registered with ``torch.library`` (fake implementation + autograd), so
``torch.compile(fullgraph=True)`` traces through models that use it.
"""
from __future__ import annotations

import functools
import os
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .layout import (contiguous_strides, dispatch_through_custom_op, empty_sequence_like, layout_strides,
                     records_autograd)
from .reference import normalize_reverse, selective_scan_ref

__all__ = ['selective_scan', 'scan_backend']

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def scan_backend(device: torch.device) -> str:
    """The implementation that runs for tensors on ``device``: ``'triton'`` or ``'reference'``."""
    forced = os.environ.get('VMAMBA_SCAN_BACKEND', '').strip().lower()
    if forced not in ('', 'triton', 'reference'):
        raise ValueError(f"VMAMBA_SCAN_BACKEND must be 'triton' or 'reference', got {forced!r}")
    if forced == 'reference':
        return 'reference'
    if device.type == 'cuda':
        return 'triton'
    if forced == 'triton':
        raise RuntimeError(f'VMAMBA_SCAN_BACKEND=triton needs CUDA tensors, got tensors on {device}')
    return 'reference'


# ----------------------------------------------------------------------------------------------------------------
# Custom ops: forward and backward. Optional inputs travel as Optional[Tensor]; absent gradients as empty tensors.

def _triton_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, local_window, out_dtype,
                    save_chunk_states=False):
    from .triton.selective_scan import selective_scan_fwd
    return selective_scan_fwd(
        u, delta, A.float(), B, C,
        None if D is None else D.float(), z, None if delta_bias is None else delta_bias.float(),
        delta_softplus, tuple(reverse), local_window, out_dtype, save_chunk_states=save_chunk_states)


def _selective_scan_impl(
        u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
        D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
        delta_softplus: bool, reverse: List[bool], local_window: int, out_dtype: torch.dtype,
) -> Tuple[Tensor, Tensor]:
    if scan_backend(u.device) == 'triton':
        return _triton_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, local_window, out_dtype)
    with torch.autocast(u.device.type, enabled=False), torch.no_grad():
        out, last = selective_scan_ref(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, tuple(reverse), local_window,
            return_last_state=True, out_dtype=out_dtype)
    if out.stride() != layout_strides(u):  # the reference writes u's memory order when u is dense
        out = empty_sequence_like(u, out_dtype).copy_(out)
    return out, last


_selective_scan_op = torch.library.custom_op('vmamba::selective_scan', mutates_args=())(_selective_scan_impl)


@_selective_scan_op.register_fake
def _selective_scan_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, local_window, out_dtype):
    state_dtype = torch.promote_types(u.dtype, torch.float32)
    out = empty_sequence_like(u, out_dtype)
    last = u.new_empty((u.shape[0], u.shape[1], A.shape[1]), dtype=state_dtype)
    return out, last


def _grads_like_inputs(grads, inputs) -> List[Tensor]:
    """[du, ddelta, dA, dB, dC, dD, dz, ddelta_bias] in their inputs' dtypes and memory orders (empty tensors for
    absent inputs), as the fake implementation of the backward op promises."""
    result = []
    for i, (g, x) in enumerate(zip(grads, inputs)):
        if x is None:
            result.append(inputs[0].new_empty((0,)))
            continue
        strides = _grad_strides(i, x)
        if g.stride() == strides:
            result.append(g.to(x.dtype))
        else:
            result.append(torch.empty_strided(x.shape, strides, device=x.device, dtype=x.dtype).copy_(g))
    return result


def _grad_strides(index: int, x: Tensor) -> Tuple[int, ...]:
    """Strides of the gradient of input ``index`` (u, delta, B, C, z: their memory order; A, D, delta_bias:
    contiguous)."""
    if index in (0, 1, 3, 4, 6):  # u, delta, B, C, z
        return layout_strides(x)
    return contiguous_strides(x.shape)


def _triton_backward(grad_out, grad_last_state, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse,
                     local_window, chunk_states=None) -> List[Tensor]:
    from .triton.selective_scan import selective_scan_bwd
    grads = selective_scan_bwd(
        grad_out, grad_last_state, u, delta, A.float(), B, C,
        None if D is None else D.float(), z, None if delta_bias is None else delta_bias.float(),
        delta_softplus, tuple(reverse), local_window, chunk_states=chunk_states)
    return _grads_like_inputs(grads, (u, delta, A, B, C, D, z, delta_bias))


def _selective_scan_backward_impl(
        grad_out: Tensor, grad_last_state: Optional[Tensor],
        u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
        D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor],
        delta_softplus: bool, reverse: List[bool], local_window: int,
) -> List[Tensor]:
    """Triton backward. Returns [du, ddelta, dA, dB, dC, dD, dz, ddelta_bias]; an absent input gets an empty tensor."""
    return _triton_backward(grad_out, grad_last_state, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse,
                            local_window)


_selective_scan_backward_op = torch.library.custom_op('vmamba::selective_scan_backward',
                                                    mutates_args=())(_selective_scan_backward_impl)


@_selective_scan_backward_op.register_fake
def _selective_scan_backward_fake(grad_out, grad_last_state, u, delta, A, B, C, D, z, delta_bias,
                                  delta_softplus, reverse, local_window):
    return [u.new_empty((0,)) if t is None else t.new_empty_strided(t.shape, _grad_strides(i, t))
            for i, t in enumerate((u, delta, A, B, C, D, z, delta_bias))]


def _reference_backward(grad_out, grad_last_state, tensors, delta_softplus, reverse, local_window):
    """Gradients of the reference by recomputation under autograd (runs at the autograd level, not in an op)."""
    inputs = [t.detach().requires_grad_(True) if t is not None else None for t in tensors]
    u = inputs[0]
    with torch.enable_grad(), torch.autocast(u.device.type, enabled=False):
        out, last = selective_scan_ref(
            *inputs[:5], D=inputs[5], z=inputs[6], delta_bias=inputs[7], delta_softplus=delta_softplus,
            reverse=tuple(reverse), local_window=local_window, return_last_state=True, out_dtype=grad_out.dtype)
        outputs, grad_outputs = [out], [grad_out]
        if grad_last_state is not None:
            outputs.append(last)
            grad_outputs.append(grad_last_state.to(last.dtype))
        present = [t for t in inputs if t is not None]
        grads = iter(torch.autograd.grad(outputs, present, grad_outputs, allow_unused=True))
    result = []
    for t in inputs:
        g = next(grads) if t is not None else None
        result.append(None if t is None else (torch.zeros_like(t) if g is None else g))
    return result


def _backward_grads(grad_out, grad_last_state, tensors, delta_softplus, reverse, local_window, backward_op):
    """[du, ddelta, dA, dB, dC, dD, dz, ddelta_bias] of the backend that runs ``tensors``."""
    if scan_backend(tensors[0].device) == 'triton':
        return backward_op(grad_out, None if grad_last_state is None else grad_last_state.contiguous(),
                           *tensors, delta_softplus, list(reverse), local_window)
    return _reference_backward(grad_out, grad_last_state, tensors, delta_softplus, reverse, local_window)


def selective_scan_no_autograd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, local_window,
                               out_dtype, save_chunk_states=False):
    """The forward of :func:`selective_scan` without autograd and validation: out in u's memory order.

    With :func:`selective_scan_input_grads`, for recomputation wrappers that run the forward themselves and keep
    less than the scan's inputs for the backward (``vmamba/layers/ss2d.py``). ``reverse``: G bools;
    ``local_window``: 0 = off. ``save_chunk_states``: return (out, chunk_states), the scan states at the chunk
    starts of the Triton backward (None where it would not use them: reference backend, step kernels, one chunk),
    small (one state per 64-128 positions for N = 1), for :func:`selective_scan_input_grads` to skip its forward pre-pass."""
    if save_chunk_states and scan_backend(u.device) == 'triton':
        out, _, chunk_states = _triton_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse,
                                               local_window, out_dtype, save_chunk_states=True)
        return out, chunk_states
    out = _selective_scan_impl(u, delta, A, B, C, D, z, delta_bias, delta_softplus, list(reverse),
                               local_window, out_dtype)[0]
    return (out, None) if save_chunk_states else out


def selective_scan_input_grads(grad_out, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse,
                               local_window, chunk_states=None) -> List[Optional[Tensor]]:
    """Gradients [du, ddelta, dA, dB, dC, dD, dz, ddelta_bias] of :func:`selective_scan_no_autograd`'s out
    (None for absent inputs), from the same kernels as :func:`selective_scan`'s backward. ``chunk_states``: that
    forward's ``save_chunk_states`` result for the same inputs, or None."""
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    grads = _backward_grads(grad_out, None, tensors, delta_softplus, reverse, local_window,
                            functools.partial(_triton_backward, chunk_states=chunk_states))
    return [None if t is None else g for g, t in zip(grads, tensors)]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, local_window, out_dtype = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
    ctx.delta_softplus = delta_softplus
    ctx.reverse = reverse
    ctx.local_window = local_window


def _backward(ctx, grad_out, grad_last_state, backward_op=None):
    u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
    du, ddelta, dA, dB, dC, dD, dz, ddelta_bias = _backward_grads(
        grad_out, grad_last_state, (u, delta, A, B, C, D, z, delta_bias), ctx.delta_softplus, ctx.reverse,
        ctx.local_window, backward_op or torch.ops.vmamba.selective_scan_backward)
    return (du, ddelta, dA, dB, dC,
            dD if D is not None else None, dz if z is not None else None,
            ddelta_bias if delta_bias is not None else None,
            None, None, None, None)


_selective_scan_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerSelectiveScan(torch.autograd.Function):
    """The custom op's implementation, context and backward without the custom-op dispatch, which costs ~30-50 us
    of host time per call in eager mode (enough to make batch-128 steps launch-bound); torch.compile traces the
    custom op instead (:func:`selective_scan`)."""

    @staticmethod
    def forward(ctx, *inputs):
        output = _selective_scan_impl(*inputs)
        _setup_context(ctx, inputs, output)
        ctx.set_materialize_grads(False)  # an unused last_state gets None, not a zero tensor the kernel would read
        return output

    @staticmethod
    def backward(ctx, grad_out, grad_last_state):
        if grad_out is None:  # only last_state was used
            u = ctx.saved_tensors[0]
            grad_out = torch.zeros(u.shape, device=u.device, dtype=u.dtype)
        return _backward(ctx, grad_out, grad_last_state, backward_op=_selective_scan_backward_impl)


# ----------------------------------------------------------------------------------------------------------------
# Validation and the public function

def check_float_tensor(op: str, name: str, t: Tensor, ndim: int, device: Optional[torch.device],
                       device_of: str) -> None:
    """One clear error for a non-tensor, a wrong number of dims, a non-float dtype, or a tensor on another device
    than ``device`` (that of the op's input ``device_of``; None: not checked). Messages start with ``op``."""
    if not isinstance(t, Tensor):
        raise TypeError(f'{op}: {name} must be a torch.Tensor, got {type(t).__name__}')
    if t.dim() != ndim:
        raise ValueError(f'{op}: {name} must have {ndim} dims, got shape {tuple(t.shape)}')
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f'{op}: {name} must be a floating tensor (fp32/fp16/bf16/fp64), got {t.dtype}')
    if device is not None and t.device != device:
        raise ValueError(f'{op}: {name} is on {t.device} but {device_of} is on {device}; put all inputs on one device')


def _check_tensor(name: str, t: Tensor, ndim: int, device: torch.device) -> None:
    check_float_tensor('selective_scan', name, t, ndim, device, 'u')


def _validate(u, delta, A, B, C, D, z, delta_bias, local_window) -> None:
    device = u.device if isinstance(u, Tensor) else None
    _check_tensor('u', u, 3, device)
    batch, channels, length = u.shape
    _check_tensor('delta', delta, 3, device)
    _check_tensor('A', A, 2, device)
    _check_tensor('B', B, 4, device)
    _check_tensor('C', C, 4, device)
    if delta.shape != u.shape:
        raise ValueError(f'selective_scan: delta shape {tuple(delta.shape)} != u shape {tuple(u.shape)} (batch, channels, L)')
    if A.shape[0] != channels:
        raise ValueError(f'selective_scan: A must be (channels={channels}, N), got {tuple(A.shape)}')
    num_states = A.shape[1]
    if A.is_complex():
        raise TypeError('selective_scan: complex A is not supported')
    groups = B.shape[1]
    for name, t in (('B', B), ('C', C)):
        if t.shape[0] != batch or t.shape[2] != num_states or t.shape[3] != length:
            raise ValueError(
                f'selective_scan: {name} must be (batch={batch}, G, N={num_states}, L={length}), got {tuple(t.shape)}')
    if C.shape[1] != groups:
        raise ValueError(f'selective_scan: B has {groups} groups but C has {C.shape[1]}')
    if groups < 1 or channels % groups != 0:
        raise ValueError(f'selective_scan: channels ({channels}) must be divisible by the number of B/C groups ({groups})')
    for name, t in (('delta', delta), ('B', B), ('C', C)):
        if t.dtype != u.dtype:
            raise TypeError(f'selective_scan: {name} has dtype {t.dtype} but u has {u.dtype}; '
                            f'u, delta, B, C (and z) must share one dtype')
    if z is not None:
        _check_tensor('z', z, 3, device)
        if z.shape != u.shape:
            raise ValueError(f'selective_scan: z shape {tuple(z.shape)} != u shape {tuple(u.shape)}')
        if z.dtype != u.dtype:
            raise TypeError(f'selective_scan: z has dtype {z.dtype} but u has {u.dtype}')
    for name, t in (('D', D), ('delta_bias', delta_bias)):
        if t is not None:
            _check_tensor(name, t, 1, device)
            if t.shape[0] != channels:
                raise ValueError(f'selective_scan: {name} must be (channels={channels},), got {tuple(t.shape)}')
    if local_window is not None and (not isinstance(local_window, int) or isinstance(local_window, bool)
                                     or local_window < 1):
        raise ValueError(f'selective_scan: local_window must be None or an int >= 1, got {local_window!r}')


def selective_scan(
        u: Tensor,
        delta: Tensor,
        A: Tensor,
        B: Tensor,
        C: Tensor,
        D: Optional[Tensor] = None,
        z: Optional[Tensor] = None,
        delta_bias: Optional[Tensor] = None,
        delta_softplus: bool = False,
        reverse: Union[bool, Sequence[bool]] = False,
        local_window: Optional[int] = None,
        return_last_state: bool = False,
        out_dtype: Optional[torch.dtype] = None,
):
    """Selective scan (Mamba-1 S6) shared by every vmamba backbone.

    Math (per batch, channel c in group g = c // (channels // G), state n)::

        dt_t = softplus(delta_t + delta_bias)   if delta_softplus else delta_t + delta_bias
        h_t  = exp(dt_t A[c, n]) h_{t-1} + dt_t B[g, n, t] u_t
        y_t  = sum_n C[g, n, t] h_t + D[c] u_t;     out = y * silu(z) if z is given

    Args:
        u, delta: (batch, channels, L), fp32/fp16/bf16 (one dtype; fp64 runs on the reference only).
        A: (channels, N) real; computed in fp32.
        B, C: (batch, G, N, L), same dtype as u; channels must be divisible by G.
        D, delta_bias: (channels,) or None; computed in fp32.
        z: (batch, channels, L) or None: gate, out = y * silu(z).
        delta_softplus: apply softplus to delta + delta_bias.
        reverse: True to scan from the end (output stays in input order), or a tuple of G bools (per group),
            e.g. (False, True) runs a forward and a backward direction in one launch.
        local_window: LBMamba's locally bidirectional scan with windows [kW, (k+1)W) counted in scan order.
        return_last_state: also return the state after the last scanned step, (batch, channels, N) fp32.
        out_dtype: dtype of ``out``; default ``u.dtype``. ``torch.float32`` gives VMamba's "oflex" behaviour
            (low-precision inputs, fp32 output).
    Returns:
        out (batch, channels, L) in u's memory order (a token-major u, i.e. a transposed view of (batch, L,
        channels), gives a token-major out), or (out, last_state) if ``return_last_state``.
    """
    _validate(u, delta, A, B, C, D, z, delta_bias, local_window)
    reverse_list = list(normalize_reverse(reverse, B.shape[1]))
    # Sequence tensors keep their strides (token-major views are read in place, kernels/layout.py); out follows u.
    args = (u, delta, A.contiguous(), B, C, None if D is None else D.contiguous(), z,
            None if delta_bias is None else delta_bias.contiguous(),
            bool(delta_softplus), reverse_list, int(local_window or 0), out_dtype or u.dtype)
    if dispatch_through_custom_op(u):
        out, last_state = torch.ops.vmamba.selective_scan(*args)
    elif not records_autograd(*args[:8]):
        out, last_state = _selective_scan_impl(*args)
    else:
        out, last_state = _EagerSelectiveScan.apply(*args)
    if return_last_state:
        return out, last_state
    return out

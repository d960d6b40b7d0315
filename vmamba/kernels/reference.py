"""Vectorised, chunked PyTorch reference of the selective scan (the CPU path and the spec of the Triton kernels).

Recurrence, per batch b, channel c (group g = c // (channels // G)) and state n::

    dt_t = softplus(delta_t + delta_bias)            (or delta_t + delta_bias without softplus)
    h_t  = exp(dt_t * A[c, n]) * h_{t-1} + dt_t * B[b, g, n, t] * u_t          h_{-1} = 0
    y_t  = sum_n C[b, g, n, t] * h_t[n] + D[c] * u_t
    out  = y * silu(z)                               (if z is given)

The linear recurrence is evaluated in O(L) work with about 2*sqrt(L) vectorised steps: the sequence is cut into
chunks of T ~ sqrt(L) steps, one T-step loop scans all chunks at once from a zero state, one loop over the chunks
carries the state, and ``h = h_local + cumprod(decay) * carry`` fixes every step up. Only products of decays are
formed (no division or exp of sums), so it is stable for any ``A``.

Layout: the inputs are copied once into ``(T, num_chunks, batch, G, features)`` in scan order (reversed groups from
their end, so every group runs in one pass), the states live in ``(T, num_chunks, batch, G, N, channels per
group)``: each step is one contiguous slice, the channels are innermost, so token-major activations (the models'
layout) load as row copies and the broadcasts of B / C / dt over states and channels run as long vectorised loops.
Without autograd the two state-sized tensors are written in place into per-thread scratch buffers (a fresh one
costs as many page faults as arithmetic on the CPU), and batches larger than the scratch cap run in slices.

LBMamba's locally bidirectional scan (``local_window=W``) adds, inside each window ``[kW, (k+1)W)``, the backward
recursion ``h^R_t = exp(dt_t A) h^R_{t+1} + dt_t B_t u_t`` with the same parameters, and uses
``h_t = h^L_t + h^R_t - dt_t B_t u_t``. Windows are counted in scan order (from the end when reversed); the carried
state and ``last_state`` are the plain forward state ``h^L``.

Everything is computed in ``promote_types(input dtype, float32)`` (fp32 for fp16/bf16 inputs, fp64 for fp64), so
autograd through this function is exact enough for ``torch.autograd.gradcheck``.
"""
from __future__ import annotations

import math
import threading
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = ['selective_scan_ref', 'normalize_reverse', 'release_workspace']

def normalize_reverse(reverse: Union[bool, Sequence[bool]], num_groups: int) -> Tuple[bool, ...]:
    """Turn ``reverse`` (a bool, or one bool per B/C group) into a tuple of ``num_groups`` bools."""
    if isinstance(reverse, bool):
        return (reverse,) * num_groups
    reverse = tuple(bool(r) for r in reverse)
    if len(reverse) != num_groups:
        raise ValueError(
            f'selective_scan: reverse has {len(reverse)} entries but B/C have {num_groups} groups; '
            f'pass a single bool or one bool per group')
    return reverse


def _chunk_length(length: int, local_window: int) -> int:
    """Chunk length T ~ sqrt(L) (the scan runs T in-chunk steps plus L/T carry steps, all vectorised), a multiple
    of the LB window so that windows never straddle chunks."""
    chunk = max(1, min(64, math.ceil(math.sqrt(length))))
    if local_window > 1:
        chunk = local_window * max(1, round(chunk / local_window))
    return chunk


def _to_chunks(x: torch.Tensor, reverse: Tuple[bool, ...], num_chunks: int, chunk: int,
               dtype: torch.dtype) -> torch.Tensor:
    """(batch, G, F, L) in any memory order -> (T, num_chunks, batch, G, F) contiguous in ``dtype``, in scan order
    (a reversed group from its end), zero-padded to num_chunks * T steps. Step t of chunk k is scan position
    k * T + t; each (t, k, batch, group) row of F values is contiguous, as in token-major activations."""
    batch, groups, features, length = x.shape
    full = (num_chunks - 1) * chunk
    rest = length - full
    out = x.new_empty((chunk, num_chunks, batch, groups, features), dtype=dtype)
    for g in range(groups):
        piece = x[:, g].flip(-1) if reverse[g] else x[:, g]  # (batch, F, L) in scan order
        out[:, :-1, :, g].copy_(piece[..., :full].unflatten(-1, (num_chunks - 1, chunk)).permute(3, 2, 0, 1))
        out[:rest, -1, :, g].copy_(piece[..., full:].permute(2, 0, 1))
    if rest < chunk:
        out[rest:, -1].zero_()
    return out


def _from_chunks(y: torch.Tensor, reverse: Tuple[bool, ...], out: torch.Tensor) -> torch.Tensor:
    """Write y: (T, num_chunks, batch, G, F) in scan order into out: (batch, G * F, L) in input order (any memory
    order); returns out."""
    chunk, num_chunks, batch, groups, features = y.shape
    full = (num_chunks - 1) * chunk
    for g in range(groups):
        dest = out[:, g * features:(g + 1) * features]  # (batch, F, L)
        target = torch.empty_like(dest) if reverse[g] else dest
        target[..., :full].unflatten(-1, (num_chunks - 1, chunk)).copy_(y[:, :-1, :, g].permute(2, 3, 1, 0))
        target[..., full:].copy_(y[:target.shape[-1] - full, -1, :, g].permute(1, 2, 0))
        if reverse[g]:
            dest.copy_(target.flip(-1))
    return out


def _linear_recurrence(decay: torch.Tensor, inputs: torch.Tensor,
                       in_place: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """h_t = decay_t * h_{t-1} + inputs_t over chunked sequences, h_{-1} = 0, in O(L) work.

    Step t of chunk k is ``[t, k]``. A T-step loop scans all chunks at once from a zero state, a loop over the
    chunks carries the state, and ``h = h_local + prefix_decay * carry_in`` fixes up every step. Only products of
    decays are formed (no division), so it is stable for any decay. Padding steps (decay 1, input 0) keep the
    state, so the final carry is the state after the last real step.

    Args:
        decay, inputs: (T, num_chunks, ...) contiguous; every step is one contiguous slice.
        in_place: (no autograd only) overwrite ``decay`` with its prefix products and ``inputs`` with ``h`` instead
            of allocating new tensors.
    Returns:
        h (T, num_chunks, ...) and the final state (...).
    """
    chunk = decay.shape[0]
    # In-chunk scan and prefix products of the decays (a loop: cumprod over dim 0 is 5x slower on the CPU); without
    # autograd the steps write straight into the output (no stack copies). Steps and chunks are taken with unbind:
    # under autograd, indexing one step would cost a zero-filled full-size gradient per step in the backward.
    decays = decay.unbind(0)
    if torch.is_grad_enabled():
        input_steps = inputs.unbind(0)
        local, prefix = [input_steps[0]], [decays[0]]
        for decay_t, input_t in zip(decays[1:], input_steps[1:]):
            local.append(torch.addcmul(input_t, decay_t, local[-1]))
            prefix.append(prefix[-1] * decay_t)
        h_local, prefix_decay = torch.stack(local), torch.stack(prefix)
        last_h, last_prefix = local[-1], prefix[-1]
    else:
        h_local, prefix_decay = (inputs, decay) if in_place else (inputs.clone(), decay.clone())
        hs, prefixes = h_local.unbind(0), prefix_decay.unbind(0)
        for t in range(1, chunk):
            hs[t].addcmul_(decays[t], hs[t - 1])
            prefixes[t].mul_(prefixes[t - 1])
        last_h, last_prefix = hs[-1], prefixes[-1]
    carry = torch.zeros_like(last_h[0])
    carries = []
    for h_k, prefix_k in zip(last_h.unbind(0), last_prefix.unbind(0)):
        carries.append(carry)
        carry = torch.addcmul(h_k, prefix_k, carry)
    carry_in = torch.stack(carries)  # (num_chunks, ...), broadcast over the T steps
    if torch.is_grad_enabled():
        return torch.addcmul(h_local, prefix_decay, carry_in), carry
    return h_local.addcmul_(prefix_decay, carry_in), carry


def _local_backward_recurrence(decay: torch.Tensor, inputs: torch.Tensor, window: int) -> torch.Tensor:
    """LBMamba's in-window backward recursion minus the diagonal: h^R_t - x_t for windows [jW, (j+1)W).

    h^R_t = decay_t * h^R_{t+1} + inputs_t inside each window, h^R = 0 past the window's last step. The chunk
    length is a multiple of W, so every window lies inside one chunk and starts at a step t with t % W == 0.
    Args:
        decay, inputs: (T, num_chunks, ...).
    Returns:
        (T, num_chunks, ...).
    """
    decays, input_steps = decay.unbind(0), inputs.unbind(0)
    zero = torch.zeros_like(input_steps[0])
    acc = zero
    extra = [zero]  # the last step of a window receives nothing from its right
    for t in range(len(decays) - 1, 0, -1):
        acc = zero if t % window == 0 else decays[t - 1] * (input_steps[t] + acc)
        extra.append(acc)
    return torch.stack(extra[::-1])


class _Workspace(threading.local):
    """Per-thread scratch buffers of the no-grad CPU scan. A fresh 20 MB tensor costs ~5 ms of page faults on the
    CI's 2 cores, about as much as the arithmetic written into it; reusing two buffers makes Vim-S batch-1
    inference 1.35x faster (benchmarks/results/cpu.md). Each holds at most ``WORKSPACE_BYTES``: larger batches are
    scanned in slices (:func:`selective_scan_ref`)."""

    def __init__(self):
        self.buffers = {}


_WORKSPACE = _Workspace()
WORKSPACE_BYTES = 64 * 2 ** 20


def release_workspace() -> None:
    """Free the calling thread's scratch buffers of the no-grad CPU scan (at most 2 x ``WORKSPACE_BYTES`` per dtype)."""
    _WORKSPACE.buffers.clear()


def _scratch(slot: int, shape: Tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised (shape) tensor of ``like``'s dtype: a view of the thread's scratch buffer ``slot`` on the CPU
    (outside torch.compile, up to ``WORKSPACE_BYTES``), a new tensor otherwise."""
    numel = math.prod(shape)
    if (like.device.type != 'cpu' or numel * like.element_size() > WORKSPACE_BYTES
            or torch.compiler.is_compiling()):
        return like.new_empty(shape)
    key = (slot, like.dtype)
    buffer = _WORKSPACE.buffers.get(key)
    if buffer is None or buffer.numel() < numel:
        buffer = _WORKSPACE.buffers[key] = torch.empty(numel, dtype=like.dtype)
    return buffer[:numel].view(shape)


def _scan_chunks(
        u: torch.Tensor,
        dt: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        local_window: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The scan without the D / z terms, in the chunked layout of :func:`_to_chunks`.

    The states live in (T, num_chunks, batch, G, N, channels per group): every step's state grid is one contiguous
    slice, the channels are innermost (long vectorised loops), and B / C / dt broadcast over the states or the
    channels (no per-channel copies of B / C).

    Args:
        u, dt: (T, num_chunks, batch, G, P) in scan order (dt = 0 on padding steps: decay 1, input 0).
        A: (G, N, P).
        B, C: (T, num_chunks, batch, G, N).
        local_window: 0 (off) or the LB window length; the chunk length is a multiple of it.
    Returns:
        y: (T, num_chunks, batch, G, P) = sum_n C_t h_t, and the final forward state (batch, G, N, P).
    """
    no_grad = not torch.is_grad_enabled()
    states = dt.shape[:4] + A.shape[1:2] + dt.shape[4:]  # (T, k, b, g, n, p)
    if no_grad:  # written into reused scratch buffers, in place
        decay = torch.mul(dt.unsqueeze(4), A, out=_scratch(0, states, dt)).exp_()
        inputs = torch.mul((dt * u).unsqueeze(4), B.unsqueeze(5), out=_scratch(1, states, dt))
    else:
        decay = torch.mul(dt.unsqueeze(4), A).exp()
        inputs = (dt * u).unsqueeze(4) * B.unsqueeze(5)
    extra = _local_backward_recurrence(decay, inputs, local_window) if local_window > 1 else None
    h, last_state = _linear_recurrence(decay, inputs, in_place=no_grad)
    if extra is not None:
        h = h.add_(extra) if no_grad else h + extra
    if B.shape[-1] == 1:
        y = h.squeeze(4) * C
    else:
        y = torch.matmul(C.unsqueeze(4), h).squeeze(4)  # sum over n: (.., 1, n) @ (.., n, p)
    return y, last_state


def selective_scan_ref(
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: Optional[torch.Tensor] = None,
        z: Optional[torch.Tensor] = None,
        delta_bias: Optional[torch.Tensor] = None,
        delta_softplus: bool = False,
        reverse: Union[bool, Sequence[bool]] = False,
        local_window: Optional[int] = None,
        return_last_state: bool = False,
        out_dtype: Optional[torch.dtype] = None,
):
    """Selective scan in plain PyTorch (differentiable). Same signature and semantics as
    :func:`vmamba.kernels.selective_scan`, without input validation.

    Args:
        u, delta: (batch, channels, L).
        A: (channels, N).
        B, C: (batch, G, N, L).
        D, delta_bias: (channels,) or None.
        z: (batch, channels, L) or None.
        reverse: bool or G bools; a reversed group is scanned from the end, its output kept in input order.
        local_window: None/0 or the LBMamba window W.
        out_dtype: output dtype (default: ``u.dtype``).
    Returns:
        out (batch, channels, L), plus last_state (batch, channels, N) if ``return_last_state``.
    """
    compute_dtype = torch.promote_types(u.dtype, torch.float32)
    batch, channels, length = u.shape
    groups, num_states = B.shape[1], B.shape[2]
    per_group = channels // groups
    reverse = normalize_reverse(reverse, groups)
    local_window = int(local_window or 0)
    chunk = _chunk_length(length, local_window)
    num_chunks = -(-length // chunk)
    no_grad = not torch.is_grad_enabled()
    out_dtype = out_dtype or u.dtype
    per_sample = num_chunks * chunk * channels * num_states * compute_dtype.itemsize  # bytes of one sample's states
    slice_size = max(1, WORKSPACE_BYTES // per_sample)
    if no_grad and u.device.type == 'cpu' and batch > slice_size:
        # Batch slices: the scratch buffers stay bounded (and closer to the caches).
        out = torch.empty_like(u, dtype=out_dtype)
        last_state = u.new_empty((batch, channels, num_states), dtype=compute_dtype)
        for start in range(0, batch, slice_size):
            rows = slice(start, start + slice_size)
            out[rows], last_state[rows] = selective_scan_ref(
                u[rows], delta[rows], A, B[rows], C[rows], D, None if z is None else z[rows], delta_bias,
                delta_softplus, reverse, local_window, return_last_state=True, out_dtype=out_dtype)
        return (out, last_state) if return_last_state else out

    def chunks(x: torch.Tensor) -> torch.Tensor:  # (batch, G, F, L) -> (T, num_chunks, batch, G, F)
        return _to_chunks(x, reverse, num_chunks, chunk, compute_dtype)

    def channel_chunks(x: torch.Tensor) -> torch.Tensor:  # (batch, channels, L) -> (T, num_chunks, batch, G, P)
        return chunks(x.unflatten(1, (groups, per_group)))

    def per_channel(x: torch.Tensor) -> torch.Tensor:  # (channels,) -> (G, P), broadcast over steps and batch
        return x.to(compute_dtype).view(groups, per_group)

    u_ch = channel_chunks(u)
    dt = channel_chunks(delta)
    if delta_bias is not None:
        dt = dt.add_(per_channel(delta_bias)) if no_grad else dt + per_channel(delta_bias)
    if delta_softplus:
        dt = F.softplus(dt)  # threshold 20 (x > 20 -> x), as the CUDA/Triton kernels
    padding = num_chunks * chunk - length
    if padding and (delta_bias is not None or delta_softplus):
        dt[chunk - padding:, -1] = 0.0  # padding steps keep dt = 0: decay 1, input 0 (in place is autograd-safe here)
    A_g = A.to(compute_dtype).view(groups, per_group, num_states).transpose(1, 2).contiguous()  # (G, N, P)
    y, last_state = _scan_chunks(u_ch, dt, A_g, chunks(B), chunks(C), local_window)
    if D is not None:
        y = y.addcmul_(u_ch, per_channel(D)) if no_grad else torch.addcmul(y, u_ch, per_channel(D))
    if z is not None:
        gate = F.silu(channel_chunks(z))
        y = y.mul_(gate) if no_grad else y * gate
    out = _from_chunks(y, reverse, torch.empty_like(u, dtype=out_dtype))  # u's memory order
    if return_last_state:
        return out, last_state.transpose(-1, -2).reshape(batch, channels, num_states)
    return out

"""Memory orders of the scan's sequence tensors, shared by the custom ops, their fake implementations and the kernels.

The scan's tensors are logically ``(batch, channels, L)`` (u, delta, z, out and their gradients) and
``(batch, G, N, L)`` (B, C). Two memory orders are used:

* channel-major: contiguous ``(batch, channels, L)`` / ``(batch, G, N, L)`` (VMamba's routes);
* token-major: memory ``(batch, L, channels)`` / ``(batch, L, G, N)``, seen through a transposed view (Vim: the
  projections work on ``(batch, L, features)`` tokens, so the scan reads and writes them with no transposes).

The step kernels take any strides; outputs and gradients are allocated in their input's order by the functions
below, which the fake (meta) implementations call too, so real and traced strides agree.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

__all__ = ['is_token_major', 'contiguous_strides', 'layout_strides', 'empty_sequence_like', 'empty_states_like', 'dispatch_through_custom_op']


def is_token_major(t: Tensor) -> bool:
    """True if the middle dim (channels of a (batch, channels, L) tensor, or the states of a (batch, G, N, L) one) is
    the contiguous one and the sequence has more than one position."""
    middle = 1 if t.dim() == 3 else 2
    return t.shape[middle] > 1 and t.shape[-1] > 1 and t.stride(middle) == 1


def contiguous_strides(shape: Sequence[int]) -> Tuple[int, ...]:
    """Strides of a contiguous tensor of ``shape``."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def layout_strides(ref: Tensor) -> Tuple[int, ...]:
    """Strides of a dense (batch, channels, L) or (batch, G, N, L) tensor in ``ref``'s memory order: token-major
    (memory (batch, L, channels) / (batch, L, G, N)) when ``ref`` is, else contiguous."""
    if ref.dim() == 3:
        batch, channels, length = ref.shape
        return (length * channels, 1, channels) if is_token_major(ref) else contiguous_strides(ref.shape)
    batch, groups, states, length = ref.shape
    if is_token_major(ref):
        return (length * groups * states, states, 1, groups * states)
    return contiguous_strides(ref.shape)


def empty_sequence_like(ref: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    """Uninitialised (batch, channels, L) tensor in ``ref``'s memory order (token-major or contiguous)."""
    return torch.empty_strided(ref.shape, layout_strides(ref), device=ref.device, dtype=dtype or ref.dtype)


def empty_states_like(ref: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    """Uninitialised (batch, G, N, L) tensor in ``ref``'s memory order (token-major: memory (batch, L, G, N))."""
    return torch.empty_strided(ref.shape, layout_strides(ref), device=ref.device, dtype=dtype or ref.dtype)


def records_autograd(*tensors: Optional[Tensor]) -> bool:
    """True when autograd would record an op on ``tensors`` (grad mode on and one of them requires grad). Eager ops
    call their implementation directly otherwise: an ``autograd.Function`` costs ~3 us of host time per call on a
    desktop CPU (~4x that on the GPU hosts) even when it records nothing (inference)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def dispatch_through_custom_op(t: Tensor) -> bool:
    """True where an op must go through its ``torch.library`` custom op (tracing: torch.compile / export, meta or
    fake tensors, tensor subclasses, an active dispatch mode such as the FLOP counter); False for plain eager
    tensors, which call the same implementation through an ``autograd.Function`` and skip the custom-op dispatch
    (~30-50 us of host time per call)."""
    return (torch.compiler.is_compiling() or t.device.type == 'meta' or type(t) not in (Tensor, torch.nn.Parameter)
            or _get_current_dispatch_mode() is not None)

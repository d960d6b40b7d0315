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

from typing import Optional

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

__all__ = ['is_token_major', 'empty_sequence_like', 'empty_states_like', 'dispatch_through_custom_op']


def is_token_major(t: Tensor) -> bool:
    """True if the middle dim (channels of a (batch, channels, L) tensor, or the states of a (batch, G, N, L) one) is
    the contiguous one and the sequence has more than one position."""
    middle = 1 if t.dim() == 3 else 2
    return t.shape[middle] > 1 and t.shape[-1] > 1 and t.stride(middle) == 1


def empty_sequence_like(ref: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    """Uninitialised (batch, channels, L) tensor in ``ref``'s memory order (token-major or contiguous)."""
    dtype = dtype or ref.dtype
    batch, channels, length = ref.shape
    if is_token_major(ref):
        return torch.empty((batch, length, channels), device=ref.device, dtype=dtype).transpose(1, 2)
    return torch.empty((batch, channels, length), device=ref.device, dtype=dtype)


def empty_states_like(ref: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    """Uninitialised (batch, G, N, L) tensor in ``ref``'s memory order (token-major: memory (batch, L, G, N))."""
    dtype = dtype or ref.dtype
    batch, groups, states, length = ref.shape
    if is_token_major(ref):
        return torch.empty((batch, length, groups, states), device=ref.device, dtype=dtype).permute(0, 2, 3, 1)
    return torch.empty((batch, groups, states, length), device=ref.device, dtype=dtype)


def dispatch_through_custom_op(t: Tensor) -> bool:
    """True where an op must go through its ``torch.library`` custom op (tracing: torch.compile / export, meta or
    fake tensors, tensor subclasses, an active dispatch mode such as the FLOP counter); False for plain eager
    tensors, which call the same implementation through an ``autograd.Function`` and skip the custom-op dispatch
    (~30-50 us of host time per call)."""
    return (torch.compiler.is_compiling() or t.device.type == 'meta' or type(t) not in (Tensor, torch.nn.Parameter)
            or _get_current_dispatch_mode() is not None)

"""Reuse of parameter-derived tensors between inference calls.

The mixers feed their kernels parameters in a packed layout (Vim: block-diagonal projections and joined conv
kernels of both directions; SS2D: ``-exp(A_log)``, fp32 ``D`` / ``dt_bias``, projection weights in the activation
dtype). Packing is ~5-20 small kernel launches per block and call, a large part of a batch-128 inference step's host
time. :class:`PackedParameterCache` computes the packed tensors once and returns them again while nothing they
depend on has changed; with autograd, and under tracing, they are computed in every call.
"""
from __future__ import annotations

from typing import Callable, Generic, Optional, TypeVar

import torch
from torch import nn

from vmamba.kernels.layout import dispatch_through_custom_op

__all__ = ['PackedParameterCache', 'autocast_dtype']

T = TypeVar('T')


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The autocast dtype active for ``device_type``, or None."""
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


class PackedParameterCache(Generic[T]):
    """``pack(*args)`` of a module's parameters (``args``: hashable, e.g. a dtype), kept between no-grad eager calls.

    The entry is reused while ``args`` are unchanged and every parameter of the module keeps its storage
    (``data_ptr``), version counter (bumped by in-place updates: optimizer steps, ``load_state_dict``, ``copy_``) and
    dtype. The owning module clears it in ``_apply`` (``.to()``, ``.cuda()``, ``.half()``); assigning
    ``param.data`` directly is not tracked (call :meth:`clear`). With autograd enabled, or under tracing
    (torch.compile, FX, meta / fake tensors), ``pack`` runs in every call so gradients flow to the parameters.
    """

    def __init__(self):
        self._entry = None

    def clear(self) -> None:
        self._entry = None

    def get(self, module: nn.Module, probe: torch.Tensor, pack: Callable[..., T], *args) -> T:
        """``pack(*args)``, cached as above; ``probe`` is the call's input (tracing / fake tensors are detected on
        it)."""
        if torch.is_grad_enabled() or dispatch_through_custom_op(probe):
            return pack(*args)
        key = args + _parameter_state(module)
        if self._entry is None or self._entry[0] != key:
            self._entry = (key, pack(*args))
        return self._entry[1]


def _parameter_state(module: nn.Module) -> tuple:
    """(data_ptr, version, dtype) of every parameter of ``module`` and its submodules. A plain walk over the
    ``_parameters`` / ``_modules`` dicts: ~3x cheaper on the host than ``module.parameters()``, which deduplicates
    through generators and sets (this runs in every no-grad call)."""
    state = []
    stack = [module]
    while stack:
        current = stack.pop()
        for param in current._parameters.values():
            if param is not None:
                state.append((param.data_ptr(), param._version, param.dtype))
        stack.extend(child for child in current._modules.values() if child is not None)
    return tuple(state)

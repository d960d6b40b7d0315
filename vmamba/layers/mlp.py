"""timm's ``Mlp`` with the activation recomputed in the backward instead of stored.

A ``fc1 -> act -> fc2`` MLP keeps two hidden-sized (4C) tensors for the backward: fc1's output (the activation's
input) and the activation's output (fc2's input). :class:`RecomputeActMlp` keeps only the first and recomputes the
activation when fc2's gradients are needed: VMamba-T's training activations shrink by ~20%. The whole MLP is one
autograd Function, so that for GELU (PyTorch's or timm's) on CUDA one Triton pass (``vmamba.kernels.gelu``) recomputes the
activation, applies its derivative and sums fc1's bias gradient, where autograd ran three. Same parameters and
state-dict keys as ``timm.layers.Mlp``, same math (fc1's forward hooks do not run); the plain path runs where
recomputation would not be exact or useful (dropout between act and fc2, a hidden norm, convolutional fc1 / fc2,
no autograd, tracing: torch.compile, FX, meta / fake tensors).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.layers.activations import GELU, GELUTanh
from torch import nn

from vmamba.kernels.gelu import fused_gelu_backward_available, gelu_recompute_backward
from vmamba.kernels.layout import dispatch_through_custom_op

__all__ = ['RecomputeActMlp']


def _autocast_to(t: Optional[torch.Tensor], dtype: Optional[torch.dtype]) -> Optional[torch.Tensor]:
    """``t`` as autocast would hand it to a linear: cast to ``dtype`` unless None, absent, or fp64."""
    if t is None or dtype is None or t.dtype == torch.float64:
        return t
    return t.to(dtype)


def _gelu_approximation(act: nn.Module) -> Optional[str]:
    """'none' (erf) or 'tanh' for the GELU modules of PyTorch and timm (``timm.layers.GELU`` / ``GELUTanh``, what
    ``get_act_layer('gelu')`` gives), None for any other activation."""
    if isinstance(act, nn.GELU):
        return act.approximate
    if type(act) is GELU:
        return 'none'
    if type(act) is GELUTanh:
        return 'tanh'
    return None


class _RecomputeMlp(torch.autograd.Function):
    """``linear(act(linear(x, w1, b1)), w2, b2)`` saving x and fc1's output h, not ``act(h)``; all tensors in one
    dtype. x (..., C), w1 (H, C), b1 (H,) or None, w2 (O, H), b2 (O,) or None -> (..., O).

    The backward recomputes ``a = act(h)``: for GELU (:func:`_gelu_approximation`) on the Triton path one fused pass gives a, grad_h and
    fc1's bias gradient (``vmamba.kernels.gelu``); otherwise autograd through ``act`` and a column sum."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, act):
        with torch.no_grad():
            h = F.linear(x, w1, b1)
            out = F.linear(act(h), w2, b2)
        ctx.save_for_backward(x, h, w1, w2)
        ctx.act = act
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, h, w1, w2 = ctx.saved_tensors
        needs_x, needs_w1, needs_b1, needs_w2, needs_b2, _ = ctx.needs_input_grad
        grad_out = grad_out.reshape(-1, grad_out.shape[-1])  # (M, O)
        h = h.reshape(-1, h.shape[-1])  # (M, H)
        grad_h = grad_b1 = None
        approximation = _gelu_approximation(ctx.act)
        if not (needs_x or needs_w1 or needs_b1):  # only fc2's parameters train
            with torch.no_grad():
                a = ctx.act(h)
        elif approximation is not None and fused_gelu_backward_available(h):
            a, grad_h, grad_b1 = gelu_recompute_backward(h, grad_out @ w2, approximation)
            grad_b1 = grad_b1.to(h.dtype) if needs_b1 else None
        else:
            h = h.detach().requires_grad_(True)
            with torch.enable_grad():
                a = ctx.act(h)
            (grad_h,) = torch.autograd.grad(a, h, grad_out @ w2)
            a = a.detach()
            grad_b1 = grad_h.sum(0) if needs_b1 else None
        grad_x = (grad_h @ w1).view(x.shape) if needs_x else None
        grad_w1 = grad_h.T @ x.reshape(-1, x.shape[-1]) if needs_w1 else None
        grad_w2 = grad_out.T @ a if needs_w2 else None
        grad_b2 = grad_out.sum(0) if needs_b2 else None
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2, None


class RecomputeActMlp(Mlp):
    """``timm.layers.Mlp`` (token inputs (..., C), ``use_conv=False``) that stores fc1's output but not the
    activation's: the backward recomputes ``act``. (..., C) -> (..., C_out)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not isinstance(x, torch.Tensor) or not torch.is_grad_enabled() or dispatch_through_custom_op(x)
                or not isinstance(self.fc1, nn.Linear) or not isinstance(self.fc2, nn.Linear)
                or not isinstance(self.norm, nn.Identity) or (self.training and self.drop1.p > 0)):
            return super().forward(x)
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        # What autocast would cast fc1 / fc2's inputs to; autograd casts the gradients back to the parameters' dtype.
        args = [_autocast_to(t, dtype) for t in (x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)]
        with torch.autocast(device, enabled=False):
            out = _RecomputeMlp.apply(*args, self.act)
        return self.drop2(out)

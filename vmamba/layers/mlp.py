"""timm's ``Mlp`` with the activation recomputed in the backward instead of stored.

A ``fc1 -> act -> fc2`` MLP keeps two hidden-sized (4C) tensors for the backward: fc1's output (the activation's
input) and the activation's output (fc2's input). :class:`RecomputeActMlp` keeps only the first and recomputes the
activation (one elementwise pass) when fc2's gradients are needed: VMamba-T's training activations shrink by ~20%
for ~1% more time. Same parameters and state-dict keys as ``timm.layers.Mlp``, same math; the plain path runs where
recomputation would not be exact or useful (dropout between act and fc2, a hidden norm, no autograd, tracing: torch.compile, FX, meta / fake tensors).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from vmamba.kernels.layout import dispatch_through_custom_op

__all__ = ['RecomputeActMlp']


class _ActLinear(torch.autograd.Function):
    """``linear(act(h), weight, bias)`` saving ``h`` only; ``weight`` / ``bias`` already in h's dtype.

    h (..., H), weight (O, H), bias (O,) or None -> (..., O)."""

    @staticmethod
    def forward(ctx, h, weight, bias, act):
        with torch.no_grad():
            out = F.linear(act(h), weight, bias)
        ctx.save_for_backward(h, weight)
        ctx.act, ctx.has_bias = act, bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        h, weight = ctx.saved_tensors
        h = h.detach().requires_grad_(True)
        with torch.enable_grad():
            a = ctx.act(h)
        grad_a = grad_out @ weight
        grad_weight = grad_out.flatten(0, -2).T @ a.detach().flatten(0, -2)
        grad_bias = grad_out.flatten(0, -2).sum(0) if ctx.has_bias else None
        (grad_h,) = torch.autograd.grad(a, h, grad_a)
        return grad_h, grad_weight, grad_bias, None


class RecomputeActMlp(Mlp):
    """``timm.layers.Mlp`` (token inputs (..., C), ``use_conv=False``) that stores fc1's output but not the
    activation's: the backward recomputes ``act``. (..., C) -> (..., C_out)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not isinstance(x, torch.Tensor) or not torch.is_grad_enabled() or dispatch_through_custom_op(x) or not isinstance(self.fc2, nn.Linear)
                or not isinstance(self.norm, nn.Identity) or (self.training and self.drop1.p > 0)):
            return super().forward(x)
        h = self.fc1(x)
        weight = self.fc2.weight.to(h.dtype)  # what autocast would cast them to; autograd casts the grads back
        bias = None if self.fc2.bias is None else self.fc2.bias.to(h.dtype)
        with torch.autocast(h.device.type, enabled=False):
            out = _ActLinear.apply(h, weight, bias, self.act)
        return self.drop2(out)

"""RMSNorm computed in float32, as in Mamba's fused add + RMSNorm with ``residual_in_fp32``, and that residual add +
RMSNorm in one pass (:func:`add_rms_norm`), on the kernels of ``vmamba/kernels/layer_norm.py``."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from timm.layers import register_notrace_function, register_notrace_module
from torch import nn

from vmamba.kernels.layer_norm import add_rms_norm_last_dim_unchecked, rms_norm_last_dim_unchecked

__all__ = ['RmsNormFp32', 'add_rms_norm']


@register_notrace_module  # custom op with dtype logic: a leaf for torch.fx feature extraction
class RmsNormFp32(nn.Module):
    """``y = x * rsqrt(mean(x**2, -1) + eps) * weight``, computed in float32 (float64 for float64 x) and returned in
    the weight's dtype.

    Plain-backbone Mamba models keep the residual stream in fp32 and feed the mixers in the model dtype; this norm
    sits at that boundary (an fp32 stream in, model-dtype activations out). No bias. Runs
    :func:`~vmamba.kernels.layer_norm.rms_norm_last_dim` (Triton on CUDA; ``F.rms_norm`` elsewhere).

    Args:
        dim: normalised (last) dimension.
        eps: added to the mean square.
    """

    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def _check(self, x: torch.Tensor, what: str = 'x') -> None:
        if x.dim() < 1 or x.shape[-1] != self.weight.shape[0] or not x.is_floating_point():
            raise ValueError(f'{type(self).__name__}({self.weight.shape[0]}) expects a floating {what} of shape '
                             f'(..., {self.weight.shape[0]}), got {x.dtype} of shape {tuple(x.shape)}')

    def forward(self, x: torch.Tensor, out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """x: (..., dim) of any float dtype -> (..., dim) in ``out_dtype`` (default ``weight.dtype``)."""
        self._check(x)
        return rms_norm_last_dim_unchecked(x, self.weight, self.eps, out_dtype=out_dtype or self.weight.dtype)

    def add_forward(self, residual: torch.Tensor, branch: torch.Tensor, out_dtype: Optional[torch.dtype] = None,
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``s = residual + branch`` and ``y = self(s)`` in one pass (one Triton kernel on CUDA, forward and
        backward): residual, branch (..., dim) of one shape and device -> s (..., dim) in their promoted dtype (as
        ``residual + branch``), y (..., dim) in ``out_dtype`` (default ``weight.dtype``)."""
        self._check(residual, 'residual')
        if branch.shape != residual.shape or not branch.is_floating_point() or branch.device != residual.device:
            raise ValueError(f'{type(self).__name__}({self.weight.shape[0]}).add_forward expects a floating branch '
                             f'of the residual\'s shape {tuple(residual.shape)} on {residual.device}, got '
                             f'{branch.dtype} of shape {tuple(branch.shape)} on {branch.device}')
        return add_rms_norm_last_dim_unchecked(residual, branch, self.weight, self.eps, out_dtype or self.weight.dtype)

    def extra_repr(self) -> str:
        return f'{self.weight.shape[0]}, eps={self.eps}'


@register_notrace_function  # custom op with dtype logic: a call_function node in torch.fx graphs
def add_rms_norm(residual: torch.Tensor, branch: torch.Tensor, norm: nn.Module,
                 out_dtype: Optional[torch.dtype] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(..., D), (..., D) -> s = residual + branch, y = norm(s) (in ``out_dtype`` if given). One pass for an
    :class:`RmsNormFp32` (:meth:`RmsNormFp32.add_forward`: the norm is not called as a module, its forward hooks do
    not run); any other norm (e.g. the ``nn.Identity`` of a pruned final norm) runs after the add. A function so that
    torch.fx feature extraction keeps it as one node."""
    if isinstance(norm, RmsNormFp32):
        return norm.add_forward(residual, branch, out_dtype)
    s = residual + branch
    y = norm(s)
    return s, y if out_dtype is None else y.to(out_dtype)

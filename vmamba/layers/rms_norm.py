"""RMSNorm computed in float32, as in Mamba's fused add + RMSNorm with ``residual_in_fp32``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['RmsNormFp32']


class RmsNormFp32(nn.Module):
    """``y = x * rsqrt(mean(x**2, -1) + eps) * weight``, computed in float32 and returned in the weight's dtype.

    Plain-backbone Mamba models keep the residual stream in fp32 and feed the mixers in the model dtype; this norm
    sits at that boundary (an fp32 stream in, model-dtype activations out). No bias.

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., dim) of any float dtype -> (..., dim) in ``weight.dtype``."""
        # F.rms_norm: one fused pass on CUDA (the same formula; bit-identical to the composite on the CPU)
        x = F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps)
        return x.to(self.weight.dtype)

    def extra_repr(self) -> str:
        return f'{self.weight.shape[0]}, eps={self.eps}'

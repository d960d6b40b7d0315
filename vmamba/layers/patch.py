"""Patch stem and Swin patch merging on NCHW maps, shared by VMamba (v0) and EfficientVMamba.

Both follow the official VMamba classification code (``patchembed_version='v1'``, ``downsample_version='v1'``);
parameter names match the converted official checkpoints (``stem.conv1`` / ``stem.norm1``,
``downsample.norm`` / ``downsample.reduction``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .norm import LayerNorm2d
from .ss2d import Linear2d

__all__ = ['PatchStem', 'PatchMerging']


class PatchStem(nn.Module):
    """Non-overlapping patch stem (official ``patchembed_version='v1'``): patch_size x patch_size conv + LayerNorm.

    (B, in_chans, H, W) -> (B, dim, H // patch_size, W // patch_size).
    """

    def __init__(self, in_chans: int, dim: int, patch_size: int = 4, norm_eps: float = 1e-5, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size, **dd)
        self.norm1 = LayerNorm2d(dim, eps=norm_eps, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm1(self.conv1(x))


class PatchMerging(nn.Module):
    """Swin patch merging (official ``downsample_version='v1'``), NCHW.

    Odd maps are zero-padded at the bottom / right. The 2x2 neighbours are concatenated in the order
    (row 0, col 0), (row 1, col 0), (row 0, col 1), (row 1, col 1), then LayerNorm(4C) and a bias-free
    Linear(4C, C_out). (B, C, H, W) -> (B, C_out, ceil(H/2), ceil(W/2)).
    """

    def __init__(self, dim: int, dim_out: int, norm_eps: float = 1e-5, device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.norm = LayerNorm2d(4 * dim, eps=norm_eps, **dd)
        self.reduction = Linear2d(4 * dim, dim_out, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
        x = torch.cat([x[..., 0::2, 0::2], x[..., 1::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 1::2]], dim=1)
        return self.reduction(self.norm(x))

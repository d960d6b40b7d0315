"""EfficientVMamba's atrous scan (ES2D): the map is padded to even size and split into its 2x2 phase lattice.

Route k walks one phase (dilation 2) with its own traversal (shared/specs/efficientvmamba.md §4.1):

    k=0: pixels (2i, 2j)     row-major        k=1: pixels (2i+1, 2j)   column-major
    k=2: pixels (2i, 2j+1)   row-major        k=3: pixels (2i+1, 2j+1) column-major

Odd sizes are zero-padded at the bottom/right to (2*ceil(H/2), 2*ceil(W/2)) before the scan (the padded zeros are
scanned, as in the official code) and cropped after the merge. Every position is visited once, so the merge is a
write-back.
"""
import torch

from .base import ScanPattern


class AtrousScan(ScanPattern):
    name = 'atrous'
    num_routes = 4

    def build_routes(self, height, width):
        padded_h, padded_w = 2 * ((height + 1) // 2), 2 * ((width + 1) // 2)
        grid = torch.arange(padded_h * padded_w).view(padded_h, padded_w)
        index = torch.stack([
            grid[0::2, 0::2].reshape(-1),
            grid[1::2, 0::2].t().reshape(-1),
            grid[0::2, 1::2].reshape(-1),
            grid[1::2, 1::2].t().reshape(-1),
        ])
        return index, (False,) * 4, (padded_h, padded_w), None

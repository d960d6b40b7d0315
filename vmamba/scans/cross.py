"""VMamba's cross scan (SS2D): four routes over the whole map, merged by summation.

Routes: row-major, column-major, row-major reversed, column-major reversed. The reversed routes are the
official ``flip`` of the whole flattened sequence; here they are the kernel's ``reverse`` option on the same order
(the projections are pointwise along the sequence, so this is the same function).

``scan``/``merge`` are specialised with a transpose instead of the generic index gather (same result as the
index maps of :meth:`build_routes`, which the tests check against per-pixel loops): the merge reads the fp32 route
outputs once.
"""
import torch

from .base import ScanPattern, column_major, row_major


class CrossScan(ScanPattern):
    name = 'cross'
    num_routes = 4

    def build_routes(self, height, width):
        row, col = row_major(height, width), column_major(height, width)
        index = torch.stack([row, col, row, col])
        return index, (False, False, True, True), (height, width), None

    def scan(self, x):
        """(batch, C, H, W) -> (batch, 4, C, H*W): row, column, row, column (the last two scanned reversed)."""
        if x.dim() != 4:
            raise ValueError(f'{self.name} scan expects a (batch, C, H, W) map, got shape {tuple(x.shape)}')
        batch, channels, height, width = x.shape
        routes = self.routes(height, width, x.device)
        row = x.flatten(2)
        col = x.transpose(2, 3).flatten(2)
        return torch.stack([row, col, row, col], dim=1), routes

    def merge(self, ys, routes, height, width):
        """(batch, 4, C, H*W) -> (batch, C, H, W): sum of the four routes, each written back to its pixels."""
        batch, num_routes, channels, length = ys.shape
        if num_routes != 4 or length != height * width:
            raise ValueError(f'{self.name} merge: expected (batch, 4, C, {height * width}), got {tuple(ys.shape)}')
        y_row = (ys[:, 0] + ys[:, 2]).view(batch, channels, height, width)
        y_col = (ys[:, 1] + ys[:, 3]).view(batch, channels, width, height).transpose(2, 3)
        return y_row + y_col

"""Vim's bidirectional scan: the row-major (raster) sequence forward and backward.

For token sequences use a (1, L) "map". The backward route is the kernel's ``reverse`` option, so both routes read
the same order; ``scan``/``merge`` are specialised accordingly (no index gather).
"""
import torch

from .base import ScanPattern, row_major


class BidirectionalScan(ScanPattern):
    name = 'bidirectional'
    num_routes = 2

    def build_routes(self, height, width):
        row = row_major(height, width)
        return torch.stack([row, row]), (False, True), (height, width), None

    def scan(self, x):
        """(batch, C, H, W) -> (batch, 2, C, H*W), both in raster order (the second is scanned reversed)."""
        if x.dim() != 4:
            raise ValueError(f'{self.name} scan expects a (batch, C, H, W) map, got shape {tuple(x.shape)}')
        routes = self.routes(x.shape[2], x.shape[3], x.device)
        flat = x.flatten(2)
        return torch.stack([flat, flat], dim=1), routes

    def merge(self, ys, routes, height, width):
        """(batch, 2, C, H*W) -> (batch, C, H, W): sum of both directions."""
        batch, num_routes, channels, length = ys.shape
        if num_routes != 2 or length != height * width:
            raise ValueError(f'{self.name} merge: expected (batch, 2, C, {height * width}), got {tuple(ys.shape)}')
        return (ys[:, 0] + ys[:, 1]).view(batch, channels, height, width)

"""Vim's bidirectional scan: the row-major (raster) sequence forward and backward.

For token sequences use a (1, L) "map". The backward route is the kernel's ``reverse`` option.
"""
import torch

from .base import ScanPattern, row_major


class BidirectionalScan(ScanPattern):
    name = 'bidirectional'
    num_routes = 2

    def build_routes(self, height, width):
        row = row_major(height, width)
        return torch.stack([row, row]), (False, True), (height, width), None

"""VMamba's cross scan (SS2D): four routes over the whole map, merged by summation.

Routes: row-major, column-major, row-major reversed, column-major reversed. The reversed routes are the
official ``flip`` of the whole flattened sequence; here they are the kernel's ``reverse`` option on the same order
(the projections are pointwise along the sequence, so this is the same function).
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

"""LBMamba's locally bidirectional scan: one raster route whose scan adds an in-window backward recursion.

The window W is the kernel's ``local_window``. By default it follows the official CUDA kernel, where W is the
number of items per thread of its launch configuration and therefore a function of the sequence length L
(see shared/specs/lbmamba.md §1.1): L <= 128 -> 4, L <= 256 -> 8, otherwise 16.
"""
from typing import Optional

from .base import ScanPattern, row_major


def official_window_for_length(length: int) -> int:
    """Window W of the official LBMamba CUDA kernel (CUDA launch table) for a sequence of ``length`` tokens."""
    if length <= 128:
        return 4
    if length <= 256:
        return 8
    return 16


class LocalBidirectionalScan(ScanPattern):
    name = 'local_bidirectional'
    num_routes = 1

    def __init__(self, window: Optional[int] = None) -> None:
        super().__init__()
        if window is not None and (not isinstance(window, int) or window < 1):
            raise ValueError(f'local_bidirectional scan: window must be None or an int >= 1, got {window!r}')
        self.window = window

    def build_routes(self, height, width):
        length = height * width
        window = self.window or official_window_for_length(length)
        return row_major(height, width)[None], (False,), (height, width), window

    def __repr__(self):
        return f'{type(self).__name__}(window={self.window})'

"""2D scan patterns (reusable by every backbone). See ``base.py`` for the data model.

=====================  ==================================================  =====================
name                   routes                                              merge
=====================  ==================================================  =====================
``cross``              row, column, row reversed, column reversed (VMamba)  sum of 4 visits
``bidirectional``      row, row reversed (Vim)                             sum of 2 visits
``local_bidirectional`` row with in-window backward scan (LBMamba)         write-back
``atrous``             2x2 phase lattice, row/col per phase (EffVMamba)    write-back, crop pad
=====================  ==================================================  =====================
"""
from typing import Union

from .atrous import AtrousScan
from .base import ScanPattern, ScanRoutes
from .bidirectional import BidirectionalScan
from .cross import CrossScan
from .local_bidirectional import LocalBidirectionalScan, official_window_for_length

SCAN_PATTERNS = {
    'cross': CrossScan,
    'bidirectional': BidirectionalScan,
    'local_bidirectional': LocalBidirectionalScan,
    'atrous': AtrousScan,
}

__all__ = ['ScanPattern', 'ScanRoutes', 'get_scan_pattern', 'SCAN_PATTERNS', 'CrossScan', 'BidirectionalScan',
           'LocalBidirectionalScan', 'AtrousScan', 'official_window_for_length']


def get_scan_pattern(pattern: Union[str, ScanPattern], **kwargs) -> ScanPattern:
    """A pattern instance from a name (``'cross'``, ``'bidirectional'``, ``'local_bidirectional'``, ``'atrous'``)
    or an existing :class:`ScanPattern` (returned as is)."""
    if isinstance(pattern, ScanPattern):
        if kwargs:
            raise ValueError('get_scan_pattern: kwargs are only accepted together with a pattern name')
        return pattern
    if pattern not in SCAN_PATTERNS:
        raise ValueError(f'unknown scan pattern {pattern!r}; choose one of {sorted(SCAN_PATTERNS)}')
    return SCAN_PATTERNS[pattern](**kwargs)

"""Kernel-config variants of the chunked scan for GPU A/B runs, applied by swapping
``vmamba.kernels.triton.selective_scan.default_config`` (the launchers look it up at call time).

    segments           ScanConfig.suffix_segment=None for the chunked forward and backward (segmented suffix scans)
    segments-in-tile   segments, and the training forward at the inference tile (chunk_states_in_tile=True)
    default            the shipped configs
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

from vmamba.kernels.triton import selective_scan as scan

_shipped_default_config = scan.default_config


def _segments(kind, *args, **kwargs):
    config = _shipped_default_config(kind, *args, **kwargs)
    return replace(config, suffix_segment=None) if kind in ('fwd', 'bwd') else config


def _segments_in_tile(kind, *args, **kwargs):
    config = _segments(kind, *args, **kwargs)
    return replace(config, chunk_states_in_tile=True) if kind == 'fwd' else config


VARIANTS = {'default': _shipped_default_config, 'segments': _segments, 'segments-in-tile': _segments_in_tile}


@contextmanager
def scan_variant(name: str):
    """Run the block with the chunked scan's configs of variant ``name`` (one of ``VARIANTS``)."""
    if name not in VARIANTS:
        raise ValueError(f'unknown scan variant {name!r}; one of {sorted(VARIANTS)}')
    scan.default_config = VARIANTS[name]
    try:
        yield
    finally:
        scan.default_config = _shipped_default_config

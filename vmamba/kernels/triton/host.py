"""Host-side helpers shared by the Triton launchers.

``triton.cdiv`` and ``triton.next_power_of_2`` are constexpr functions in recent Triton releases: called from host
code each one unwraps its arguments and imports a module, a few microseconds per call (and ~4x that on a slow
host), and a launcher calls them several times. These are the same integer maths in plain Python.
"""
from __future__ import annotations

import functools
import os

import torch

__all__ = ['cdiv', 'next_power_of_2', 'interpreting', 'num_sms']


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for integers, b > 0."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (n >= 1)."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


def interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1`` (kernels run on the CPU in Triton's interpreter: tests use small tiles)."""
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


@functools.lru_cache(maxsize=None)
def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (1 for other devices), cached: the query costs host time."""
    if device.type != 'cuda':
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count

"""The selective scan shared by every backbone.

- :func:`selective_scan` (``interface.py``): the one public entry point (validation, autograd, dispatch).
- ``reference.py``: vectorised chunked PyTorch implementation (CPU path, and the spec of the kernels).
- ``triton/``: Triton forward/backward kernels used for CUDA tensors.
"""
from .interface import scan_backend, selective_scan
from .reference import selective_scan_ref

__all__ = ['selective_scan', 'selective_scan_ref', 'scan_backend']

"""The selective scan shared by every backbone.

- :func:`selective_scan` (``interface.py``): the one public entry point (validation, autograd, dispatch).
- ``reference.py``: vectorised chunked PyTorch implementation (CPU path, and the spec of the kernels).
- :func:`gather_routes` / :func:`merge_routes` (``routes.py``): token-major maps <-> scan routes (the layout change
  around the scan of channels-last blocks), adjoint custom ops.
- ``triton/``: Triton kernels used for CUDA tensors.
"""
from .interface import scan_backend, selective_scan
from .reference import selective_scan_ref
from .routes import gather_routes, merge_routes

__all__ = ['selective_scan', 'selective_scan_ref', 'scan_backend', 'gather_routes', 'merge_routes']

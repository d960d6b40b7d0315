"""Triton kernels of the selective scan (CUDA tensors; ``TRITON_INTERPRET=1`` runs them on CPU for tests)."""
from .selective_scan import ScanConfig, default_config, selective_scan_bwd, selective_scan_fwd

__all__ = ['ScanConfig', 'default_config', 'selective_scan_fwd', 'selective_scan_bwd']

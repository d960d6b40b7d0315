"""The selective scan shared by every backbone.

- :func:`selective_scan` (``interface.py``): the one public entry point (validation, autograd, dispatch).
- ``reference.py``: vectorised chunked PyTorch implementation (CPU path, and the spec of the kernels).
- :func:`gather_routes` / :func:`merge_routes` (``routes.py``): token-major maps <-> scan routes (the layout change
  around the scan of channels-last blocks), adjoint custom ops; :func:`merge_routes_layer_norm`: the merge followed
  by SS2D's out_norm.
- :func:`causal_conv_silu` (``conv.py``): Vim's depthwise conv + SiLU on token-major sequences, each output group
  forwards or over the reversed sequence.
- :func:`gated_group_sum` (``gated_sum.py``): Vim's mixer epilogue, sum of the G direction outputs gated by SiLU(z).
- :func:`layer_norm_last_dim` / :func:`layer_norm_channels_first` (``layer_norm.py``): LayerNorm of channels-last
  maps and of NCHW maps read in place, many rows per program; :func:`rms_norm_last_dim` and
  :func:`add_rms_norm_last_dim` (residual add + RMSNorm in one pass, Vim's blocks) on the same kernels.
- :func:`gelu_recompute_backward` (``gelu.py``): ``RecomputeActMlp``'s backward GELU recomputation, derivative and
  fc1 bias gradient in one pass.
- ``layout.py``: the memory orders (channel-major / token-major) of the scan's tensors.
- ``triton/``: Triton kernels used for CUDA tensors; each op's PyTorch reference sits in its module above.
"""
from .conv import causal_conv_silu
from .gated_sum import gated_group_sum
from .gelu import gelu_recompute_backward
from .interface import scan_backend, selective_scan
from .layer_norm import add_rms_norm_last_dim, layer_norm_channels_first, layer_norm_last_dim, rms_norm_last_dim
from .reference import selective_scan_ref
from .routes import gather_routes, merge_routes, merge_routes_layer_norm

__all__ = ['selective_scan', 'selective_scan_ref', 'scan_backend', 'gather_routes', 'merge_routes',
           'merge_routes_layer_norm',
           'causal_conv_silu', 'gated_group_sum', 'gelu_recompute_backward', 'layer_norm_last_dim',
           'layer_norm_channels_first', 'rms_norm_last_dim', 'add_rms_norm_last_dim']

"""Host cost per call of single ops on tiny CUDA tensors (the GPU work is negligible, so the time is the Python +
dispatch + launch cost), and a check that a model step has no host-device synchronisation.

    PYTHONPATH=.gpu_deps:. python benchmarks/host_cost_gpu.py vim_small_patch16_224 vmamba_tiny_s1l8
"""
import sys
import time
import warnings

import timm
import torch
import torch.nn.functional as F

import vmamba  # noqa: F401
from vmamba.kernels import selective_scan
from vmamba.kernels.layer_norm import layer_norm_last_dim


def per_call_us(fn, calls=2000):
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


dev = 'cuda'
x = torch.randn(4, 8, device=dev)
w = torch.randn(8, device=dev)
lin = torch.nn.Linear(8, 8, device=dev)
u = torch.randn(1, 8, 16, device=dev)
A = -torch.rand(8, 4, device=dev)
Bm = torch.randn(1, 1, 4, 16, device=dev)
rows = [
    ('aten add', lambda: x.add(1.0)),
    ('F.layer_norm', lambda: F.layer_norm(x, (8,), w, w)),
    ('F.linear', lambda: lin(x)),
    ('vmamba layer_norm_last_dim', lambda: layer_norm_last_dim(x, w, w)),
    ('vmamba selective_scan', lambda: selective_scan(u, u, A, Bm, Bm, D=w, delta_softplus=True)),
]
for name, fn in rows:
    print(f'{name:32s} {per_call_us(fn):7.1f} us/call', flush=True)

for name in sys.argv[1:]:
    model = timm.create_model(name).cuda().eval()
    images = torch.randn(8, 3, 224, 224, device=dev)
    with torch.no_grad(), torch.autocast('cuda', dtype=torch.float16):
        model(images)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode('warn')
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            model(images)
        torch.cuda.set_sync_debug_mode(0)
    syncs = [str(c.message).splitlines()[0][:100] for c in caught if 'synchron' in str(c.message)]
    print(f'{name}: {len(syncs)} synchronising calls in an inference step {syncs[:3]}', flush=True)

"""Host-side cost of one forward: batch 1 at 224x224 on the GPU (the GPU work is tiny, so the time per forward is
the Python / launch overhead the model adds per step). PYTHONPATH=.gpu_deps:. python benchmarks/overhead_gpu.py m1 m2"""
import sys
import time

import timm
import torch

import vmamba  # noqa: F401

for name in sys.argv[1:]:
    model = timm.create_model(name).cuda().eval()
    x = torch.randn(1, 3, 224, 224, device='cuda')
    with torch.no_grad(), torch.autocast('cuda', dtype=torch.float16):
        for _ in range(5):
            model(x)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(20):
            model(x)
        torch.cuda.synchronize()
    print(f'{name}: {(time.perf_counter() - start) / 20 * 1e3:.2f} ms per batch-1 forward', flush=True)

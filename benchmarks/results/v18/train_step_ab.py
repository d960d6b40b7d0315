"""CPU training step (forward + backward, batch 2, 224x224, 2 threads) with three versions of the reference scan,
round-robin in one process. Run from the repository root after:

    git show 98a9871:vmamba/kernels/reference.py > /tmp/v8_reference.py   # v8 layout
    git show 35fba7d:vmamba/kernels/reference.py > /tmp/head_ref.py       # channels innermost, indexed steps
"""
import os
import sys
import time

import timm
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from benchmarks.bench_cpu import load_reference, scan_implementation  # noqa: E402
from vmamba.kernels import interface  # noqa: E402

torch.set_num_threads(2)
impls = {'v8': load_reference('/tmp/v8_reference.py'), 'head': load_reference('/tmp/head_ref.py'),
         'work': interface.selective_scan_ref}
x = torch.randn(2, 3, 224, 224)
for name in ['vim_small_patch16_224', 'vmamba_tiny_s1l8']:
    model = timm.create_model(name)
    times = {k: [] for k in impls}
    for _ in range(4):
        for label, scan in impls.items():
            with scan_implementation(scan):
                start = time.perf_counter()
                model(x).sum().backward()
                times[label].append(time.perf_counter() - start)
    print(f'{name:24s} train step b2 (s, best of 3 after warm-up) '
          + '  '.join(f'{k} {min(v[1:]):.2f}' for k, v in times.items()), flush=True)

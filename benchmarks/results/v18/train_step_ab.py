"""CPU training step (forward + backward, batch 2, 224x224, 2 threads) with three versions of the reference scan,
round-robin in one process. Run from the repository root after:

    git show 98a9871:vmamba/kernels/reference.py > /tmp/v8_reference.py   # v8 layout
    git show 35fba7d:vmamba/kernels/reference.py > /tmp/head_ref.py       # channels innermost, indexed steps
"""
import importlib.util
import time

import timm
import torch

import vmamba  # noqa: F401
from vmamba.kernels import interface

torch.set_num_threads(2)


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.selective_scan_ref


impls = {'v8': load('/tmp/v8_reference.py', 'v8'), 'head': load('/tmp/head_ref.py', 'head'),
         'work': interface.selective_scan_ref}
x = torch.randn(2, 3, 224, 224)
for name in ['vim_small_patch16_224', 'vmamba_tiny_s1l8']:
    model = timm.create_model(name)
    times = {k: [] for k in impls}
    for _ in range(4):
        for label, scan in impls.items():
            interface.selective_scan_ref = scan
            start = time.perf_counter()
            model(x).sum().backward()
            times[label].append(time.perf_counter() - start)
    print(f'{name:24s} train step b2 (s, best of 3 after warm-up) '
          + '  '.join(f'{k} {min(v[1:]):.2f}' for k, v in times.items()), flush=True)

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


class _Capture:
    """Stands in for a Triton JIT kernel in its module: records the launch arguments, then launches."""

    def __init__(self, jit):
        self.jit, self.calls = jit, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append((grid, args, kwargs))
            return self.jit[grid](*args, **kwargs)
        return launch


def captured_launch(module, kernel_name, fn):
    """(grid, args, kwargs) of the first launch of ``module.kernel_name`` made by ``fn()``."""
    jit = getattr(module, kernel_name)
    capture = _Capture(jit)
    setattr(module, kernel_name, capture)
    try:
        fn()
    finally:
        setattr(module, kernel_name, jit)
    return jit, capture.calls[0]


def launch_rows(label, jit, call):
    """Host cost of the JIT launch and of the compiled kernel's direct launch (all params in order)."""
    grid, args, kwargs = call
    grid = tuple(grid) + (1,) * (3 - len(grid))  # the compiled kernel's launcher indexes all three grid dims
    compiled = jit[grid](*args, **kwargs)
    if not hasattr(compiled, '__getitem__'):  # Triton versions whose compiled kernels take no grid
        return [(f'{label}: JIT kernel[grid](...)', lambda: jit[grid](*args, **kwargs))]
    params = dict(zip(jit.arg_names, args))
    params.update({k: v for k, v in kwargs.items() if k in jit.arg_names})
    ordered = [params[name] for name in jit.arg_names]
    runner = compiled[grid]
    return [(f'{label}: JIT kernel[grid](...)', lambda: jit[grid](*args, **kwargs)),
            (f'{label}: compiled[grid](...)', lambda: runner(*ordered))]


class _Identity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t):
        return t

    @staticmethod
    def backward(ctx, g):
        return g


from vmamba.kernels import interface  # noqa: E402
from vmamba.kernels.triton import layer_norm as triton_ln, selective_scan as triton_scan  # noqa: E402
from vmamba.kernels.layer_norm import layer_norm_last_dim_unchecked  # noqa: E402

scan_args = (u, u, A, Bm, Bm, w, None, None, True, [False], 0, torch.float32)
jit, call = captured_launch(triton_scan, '_selective_scan_fwd_step_kernel',
                            lambda: interface._selective_scan_impl(*scan_args))
rows += [
    ('torch.empty (1,8,16)', lambda: torch.empty((1, 8, 16), device=dev)),
    ('empty autograd.Function', lambda: _Identity.apply(u)),
    ('scan: _EagerSelectiveScan.apply', lambda: interface._EagerSelectiveScan.apply(*scan_args)),
    ('scan: _selective_scan_impl', lambda: interface._selective_scan_impl(*scan_args)),
    ('scan: _validate', lambda: interface._validate(u, u, A, Bm, Bm, w, None, None, None)),
] + launch_rows('scan fwd step', jit, call)
jit, call = captured_launch(triton_ln, '_layer_norm_fwd_kernel',
                            lambda: layer_norm_last_dim_unchecked(x, w, w, 1e-5, None))
rows += [('layer_norm_last_dim_unchecked', lambda: layer_norm_last_dim_unchecked(x, w, w, 1e-5, None))]
rows += launch_rows('layer norm fwd', jit, call)
for name, fn in rows:
    print(f'{name:44s} {per_call_us(fn):7.1f} us/call', flush=True)

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

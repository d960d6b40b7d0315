"""Host (Python + dispatch) cost of the GPU code path, measured on the CPU: every Triton kernel is replaced by a stub
that accepts the launch and does nothing, and the ops are told to take their Triton path for CPU tensors. What is
left is exactly the Python of our wrappers, modules and autograd Functions plus PyTorch's CPU dispatch, i.e. what a
CUDA step pays on the host before Triton's own launcher (``benchmarks/host_cost_gpu.py`` measures that part).
The models keep their depth and block structure at 16-32 channels and a small image, so the aten compute stays
negligible. The outputs are garbage (the stubs write nothing); only the time is meaningful.

    python benchmarks/host_cost_cpu.py                       # per-call table + model steps
    python benchmarks/host_cost_cpu.py --profile 30          # + cProfile of one step per model (top 30 by tottime)
"""
import argparse
import cProfile
import importlib
import io
import pstats
import time

import torch

import vmamba  # noqa: F401
import timm

_TRITON_MODULES = ('conv', 'gated_sum', 'gelu', 'layer_norm', 'routes', 'selective_scan')
_BACKEND_USERS = ('interface', 'conv', 'gated_sum', 'gelu', 'layer_norm', 'routes')


class _StubKernel:
    """Accepts ``kernel[grid](*args, **kwargs)`` and launches nothing."""

    def __init__(self, name):
        self.name = name

    def __getitem__(self, grid):
        return _no_launch


def _no_launch(*args, **kwargs):
    return None


def stub_triton_path():
    """Route every op of vmamba.kernels to its Triton path with stubbed kernels (for CPU tensors)."""
    for name in _TRITON_MODULES:
        module = importlib.import_module(f'vmamba.kernels.triton.{name}')
        for attr in dir(module):
            obj = getattr(module, attr)
            if type(obj).__name__ == 'JITFunction' and attr.endswith('_kernel'):
                setattr(module, attr, _StubKernel(attr))
        for attr in ('num_sms', '_num_sms'):  # (older trees: per-module helpers)
            if hasattr(module, attr):
                setattr(module, attr, lambda device: 132)
        for attr in ('interpreting', '_interpreted', '_interpreting'):
            if hasattr(module, attr):
                setattr(module, attr, lambda: False)
    for name in _BACKEND_USERS:
        module = importlib.import_module(f'vmamba.kernels.{name}')
        module.scan_backend = lambda device: 'triton'


def per_call_us(fn, calls, rounds=5):
    """Best of ``rounds`` rounds of ``calls`` calls (host noise only adds time), after a warm-up."""
    for _ in range(max(3, calls // 20)):
        fn()
    best = float('inf')
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / calls * 1e6


def op_rows():
    from vmamba.kernels import selective_scan
    from vmamba.kernels.layer_norm import layer_norm_last_dim, layer_norm_last_dim_unchecked

    x = torch.randn(4, 8)
    w = torch.randn(8)
    lin = torch.nn.Linear(8, 8)
    u = torch.randn(1, 8, 16)
    A = -torch.rand(8, 4)
    Bm = torch.randn(1, 1, 4, 16)
    return [
        ('aten add', lambda: x.add(1.0)),
        ('F.linear', lambda: lin(x)),
        ('layer_norm_last_dim', lambda: layer_norm_last_dim(x, w, w)),
        ('layer_norm_last_dim_unchecked', lambda: layer_norm_last_dim_unchecked(x, w, w, 1e-5, None)),
        ('selective_scan (step kernel path)', lambda: selective_scan(u, u, A, Bm, Bm, D=w, delta_softplus=True)),
        ('selective_scan N=1 (chunked path)',
         lambda: selective_scan(u, u, A[:, :1], Bm[:, :, :1], Bm[:, :, :1], D=w, delta_softplus=True)),
    ]


def narrow_kwargs(name, image_size):
    """Same depth and block structure, 16-32 channels: the aten compute of the step stays negligible."""
    if 'vim' in name:
        return dict(img_size=image_size, embed_dim=32)
    if 'deit' in name:
        return dict(img_size=image_size, embed_dim=36)  # 6 heads
    if 'convnext' in name or 'mambaout' in name:
        return dict(dims=(16, 32, 64, 128))
    return dict(dims=16)


def model_steps(names, image_size, profile_top):
    rows = []
    for name in names:
        model = timm.create_model(name, **narrow_kwargs(name, image_size))
        x = torch.randn(1, 3, image_size, image_size)
        for mode in ('infer', 'train'):
            model.train(mode == 'train')

            def step():
                if mode == 'infer':
                    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
                        model(x)
                else:
                    with torch.autocast('cpu', dtype=torch.bfloat16):
                        out = model(x)
                    out.float().sum().backward()
            ms = per_call_us(step, 4) / 1e3
            rows.append((name, mode, ms))
            print(f'{name:28s} {mode:5s} {ms:8.2f} ms host per step', flush=True)
            if profile_top:
                profiler = cProfile.Profile()
                profiler.enable()
                step()
                profiler.disable()
                text = io.StringIO()
                pstats.Stats(profiler, stream=text).sort_stats('tottime').print_stats(profile_top)
                print('\n'.join(line for line in text.getvalue().splitlines()[6:] if line.strip()))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+',
                        default=['vmamba_tiny_s1l8', 'vim_small_patch16_224', 'efficientvmamba_tiny', 'convnext_tiny',
                                 'deit_small_patch16_224'])
    parser.add_argument('--image-size', type=int, default=64, help='small: the CPU compute of aten ops stays small')
    parser.add_argument('--profile', type=int, default=0, help='cProfile top-N functions of one step per model')
    args = parser.parse_args()
    torch.set_num_threads(1)
    stub_triton_path()
    for name, fn in op_rows():
        print(f'{name:36s} {per_call_us(fn, 500):7.1f} us/call', flush=True)
    rows = model_steps(args.models, args.image_size, args.profile)
    print('\n| model | mode | host ms / step |\n|---|---|---:|')
    for name, mode, ms in rows:
        print(f'| {name} | {mode} | {ms:.2f} |')


if __name__ == '__main__':
    main()

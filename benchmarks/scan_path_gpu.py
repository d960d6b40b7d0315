"""Step kernels vs chunked kernels for N > 1 (no LB window) at the scan shapes of EfficientVMamba-S and Vim-S.

    PYTHONPATH=.gpu_deps:. python benchmarks/scan_path_gpu.py

Times both kernel families on each shape (forward, forward + backward; do_bench median), forcing the launcher's
choice (`_uses_step_kernels`), which it otherwise makes by length (`STEP_FORWARD_MAX_LENGTH`). fp16 inputs, fp32 out
(EfficientVMamba's ES2D) / fp16 out (Vim), softplus, D, delta_bias, batch 128.
"""
import torch
from triton.testing import do_bench

from vmamba.kernels.triton import selective_scan as ts

CASES = [  # name, channels, groups, length, out dtype
    ('efficientvmamba_small stage 1 (4 x 128 ch, L 784)', 512, 4, 784, torch.float32),
    ('efficientvmamba_small stage 2 (4 x 256 ch, L 196)', 1024, 4, 196, torch.float32),
    ('efficientvmamba_tiny stage 1 (4 x 64 ch, L 784)', 256, 4, 784, torch.float32),
    ('vim_s mixer (2 x 768 ch, L 197)', 1536, 2, 197, torch.float16),
]


def inputs(channels, groups, length, batch=128, states=16):
    g = torch.Generator(device='cuda').manual_seed(0)
    r = lambda *s: torch.randn(*s, device='cuda', generator=g)  # noqa: E731
    u = r(batch, channels, length).half()
    delta = (r(batch, channels, length) * 0.5 - 4).half()
    A = -torch.rand(channels, states, device='cuda', generator=g) * 4 - 0.5
    B, C = r(batch, groups, states, length).half(), r(batch, groups, states, length).half()
    return u, delta, A, B, C, r(channels), None, r(channels) * 0.1


def main():
    step_rule = ts._uses_step_kernels
    print(f'# {torch.cuda.get_device_name()}')
    print('| case | step fwd ms | chunked fwd ms | step fwd+bwd ms | chunked fwd+bwd ms | max rel diff of out |')
    print('|---|---|---|---|---|---|')
    for name, channels, groups, length, out_dtype in CASES:
        args = inputs(channels, groups, length)
        rev = (False,) * groups
        results, outs = [], []
        for use_step in (True, False):
            ts._uses_step_kernels = (lambda n, w, *_, **__: n > 1 and not w) if use_step else (lambda *_, **__: False)
            fwd = lambda: ts.selective_scan_fwd(*args, True, rev, 0, out_dtype)  # noqa: E731
            out, _ = fwd()
            outs.append(out.float())
            grad = torch.randn_like(out)
            both = lambda: ts.selective_scan_bwd(grad, None, *args, True, rev, 0) and fwd()  # noqa: E731
            results += [do_bench(fwd, warmup=10, rep=50, return_mode='median'),
                        do_bench(both, warmup=5, rep=30, return_mode='median')]
        ts._uses_step_kernels = step_rule
        diff = ((outs[0] - outs[1]).abs().max() / outs[1].abs().max()).item()
        print(f'| {name} | {results[0]:.3f} | {results[2]:.3f} | {results[1]:.3f} | {results[3]:.3f} | {diff:.1e} |',
              flush=True)


if __name__ == '__main__':
    main()

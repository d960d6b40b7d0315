"""Count the sm_90 SASS of the chunked scan kernels without a GPU (Triton's ptxas / cuobjdump, offline).

Every Triton JIT call of the real launch path is compiled (a stand-in driver reports an sm_90 target; every run is
forced to warm-up, so nothing launches) from CPU tensors of the real shapes, which are 64-byte aligned like CUDA
allocations, so the kernels get the same specialisation (16-byte divisibility, vectorised loads) as on the device.
Run it with the device's Triton version first on the path (the GPU machine's 3.6), e.g.

    pip install --no-deps --target /tmp/t36 triton==3.6.0
    PYTHONPATH=/tmp/t36 python benchmarks/sass_offline.py [--tree OTHER_CHECKOUT] [--compile-sweep VARIANT ...]

and compare trees or variants by the printed counts (instructions, shuffles, MUFU, global / shared memory ops).
The counts are static sizes of the whole kernel (both direction programs), a proxy, not a timing.
``--compile-sweep`` instead compiles every launch path (inference forward, training forward, backward with its
pre-pass) of a grid of shapes, dtypes, directions, LB windows and z gating under the given
``benchmarks/scan_variants.py`` variants, and lists what fails to compile.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import replace

OPS = ('SHFL', 'MUFU', 'LDG', 'STG', 'REDG', 'STS', 'LDS', 'BAR')


class _Sm90Driver:
    """Just enough of a Triton driver for compilation: an sm_90 target, device 0, no stream."""

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget
        return GPUTarget('cuda', 90, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        import torch
        return torch.device('cpu')

    def is_active(self):
        return True


def capture_compiles():
    """Install the driver and force warm-up; returns the list that collects (kernel name, compiled kernel)."""
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction
    driver.set_active(_Sm90Driver())
    compiled = []
    run = JITFunction.run

    def warmup_only(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        compiled.append((self.fn.__name__, kernel))
        return kernel

    JITFunction.run = warmup_only
    return compiled


def sass_lines(kernel):
    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin', 'cuobjdump')
    with tempfile.NamedTemporaryFile(suffix='.cubin') as f:
        f.write(kernel.asm['cubin'])
        f.flush()
        text = subprocess.run([tool, '-sass', f.name], capture_output=True, text=True, check=True).stdout
    return [re.sub(r'/\*[0-9a-f]+\*/', '', line).strip() for line in text.splitlines()
            if re.match(r'\s+/\*[0-9a-f]{4,}\*/\s+\S', line)]


def opcode(line):
    parts = line.split()
    return (parts[1] if parts[0].startswith('@') else parts[0]).split('.')[0]


def compile_sweep(variants) -> int:
    """Compile every launch path of a grid of cases under each variant; returns the number of failures."""
    import torch
    from vmamba.kernels.triton import selective_scan as scan
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from scan_variants import scan_variant
    cases = []  # (channels, L, N, G, reverse, LB window, dtype, z)
    for length in (3136, 784, 196, 49, 3137, 200):
        cases += [(8, length, 1, 4, (False, False, True, True), 0, torch.float16, False),
                  (8, length, 1, 4, (False, False, True, True), 0, torch.bfloat16, False),
                  (8, length, 1, 4, (False, True, False, True), 0, torch.float32, False),
                  (8, length, 1, 1, (True,), 0, torch.float16, True),
                  (8, length, 1, 2, (False, True), 8, torch.float16, False),
                  (4, length, 16, 2, (False, True), 8, torch.float16, False),
                  (4, length, 4, 1, (False,), 0, torch.float16, True)]
    failures, paths = [], 0
    for variant in variants:
        for channels, length, states, groups, reverse, window, dtype, gated in cases:
            u, delta, grad_out = (torch.randn(1, channels, length).to(dtype) for _ in range(3))
            B, C = (torch.randn(1, groups, states, length).to(dtype) for _ in range(2))
            args = (u, delta, -torch.rand(channels, states), B, C, torch.randn(channels),
                    torch.randn(1, channels, length).to(dtype) if gated else None, torch.randn(channels))
            calls = {
                'forward': lambda: scan.selective_scan_fwd(*args, True, reverse, window, torch.float32),
                'training forward': lambda: scan.selective_scan_fwd(*args, True, reverse, window, torch.float32,
                                                                    save_chunk_states=True),
                'backward': lambda: scan.selective_scan_bwd(grad_out, None, *args, True, reverse, window)}
            for what, call in calls.items():
                paths += 1
                try:
                    with scan_variant(variant):
                        call()
                except Exception as exc:  # a compile error of any kind is what this sweep reports
                    failures.append(f'{variant} {what}: {channels} channels, L {length}, N {states}, G {groups}, '
                                    f'W {window}, {dtype}, z {gated}: {type(exc).__name__}: '
                                    f'{str(exc).splitlines()[0][:150]}')
    print(f'{paths} launch paths under {", ".join(variants)}: {len(failures)} failed to compile')
    for line in failures:
        print(' ', line)
    return len(failures)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--tree', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'),
                        help='checkout whose vmamba package is compiled (default: this one)')
    parser.add_argument('--compile-sweep', nargs='+', metavar='VARIANT',
                        help='compile a grid of launch paths under these scan_variants.py variants instead')
    opts = parser.parse_args()
    sys.path.insert(0, os.path.abspath(opts.tree))
    compiled = capture_compiles()
    if opts.compile_sweep:
        return 1 if compile_sweep(opts.compile_sweep) else 0
    import torch
    import triton
    from vmamba.kernels.triton import selective_scan as scan

    # VMamba-T stage 1 (batch 1: the batch is only the grid), cross-scan directions, fp16 activations.
    batch, channels, length, groups = 1, 768, 3136, 4
    per_group = channels // groups
    u, delta, grad_out = (torch.randn(batch, channels, length).half() for _ in range(3))
    A = -torch.rand(channels, 1)
    B, C = (torch.randn(batch, groups, 1, length).half() for _ in range(2))
    args = (u, delta, A, B, C, torch.randn(channels), None, torch.randn(channels))
    reverse = (False, False, True, True)
    fwd = scan.default_config('fwd', 1, length, per_group)
    bwd = scan.default_config('bwd', 1, length, per_group)
    states = torch.zeros(batch, channels, scan.cdiv(length, bwd.block_l), 1)
    cases = []
    for segment in (0, None):
        f, b = replace(fwd, suffix_segment=segment), replace(bwd, suffix_segment=segment)
        cases += [
            (f'inference forward, segment {segment}',
             lambda f=f: scan.selective_scan_fwd(*args, True, reverse, 0, torch.float32, config=f)),
            (f'training forward, segment {segment}',
             lambda f=f: scan.selective_scan_fwd(*args, True, reverse, 0, torch.float32, config=f,
                                                 save_chunk_states=True)),
            (f'training forward in tile, segment {segment}',
             lambda f=f: scan.selective_scan_fwd(*args, True, reverse, 0, torch.float32, save_chunk_states=True,
                                                 config=replace(f, chunk_states_in_tile=True))),
            (f'backward given states, segment {segment}',
             lambda b=b: scan.selective_scan_bwd(grad_out, None, *args, True, reverse, 0, config=b,
                                                 chunk_states=states)),
        ]
    print(f'Triton {triton.__version__}, sm_90, VMamba-T stage 1 ({channels} channels, L {length}, N 1, '
          f'reverse {reverse}); tree {os.path.abspath(opts.tree)}')
    print('| case | kernel | instructions | ' + ' | '.join(OPS) + ' | opcode md5 |\n|---|---|---:|'
          + '---:|' * len(OPS) + '---|')
    for label, call in cases:
        compiled.clear()
        try:
            call()
        except (TypeError, ValueError) as exc:  # e.g. an older tree without a config field
            print(f'| {label} | not compiled: {type(exc).__name__}: {exc} |')
            continue
        for name, kernel in compiled:
            lines = sass_lines(kernel)
            counts = collections.Counter(opcode(line) for line in lines)
            digest = hashlib.md5(' '.join(opcode(line) for line in lines).encode()).hexdigest()[:8]
            print(f'| {label} | {name} | {len(lines)} | ' + ' | '.join(str(counts[op]) for op in OPS)
                  + f' | {digest} |')


if __name__ == '__main__':
    sys.exit(main())

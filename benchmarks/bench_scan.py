"""GPU check and benchmark of the Triton selective scan (one call does everything).

    PYTHONPATH=. python benchmarks/bench_scan.py [--sweep] [--quick]

1. Correctness at real sizes: Triton forward/backward vs the PyTorch reference (``selective_scan_ref`` + autograd),
   fp32 and bf16, printed as relative-RMS errors.
2. Device-to-device copy bandwidth (``torch.Tensor.copy_`` of 1 GiB), the yardstick for "% of copy".
3. ``--sweep``: time a set of tile configurations per case and direction and report the best.
4. ``triton.testing.do_bench`` (median, L2 flushed) of forward, backward (with its pre-pass) and forward+backward,
   and for N = 1 the training path ("train": the forward keeps the backward's chunk states, the backward skips its
   pre-pass, as in a model's training step), for
   (a) VMamba-T stage-1 SS2D: batch 32, 4 groups x 96 channels, L=3136, N=1, bf16 in / fp32 out, softplus, D, bias,
       reverse=(F, F, T, T) as the cross scan passes it (official VMamba CUDA forward on H100: 0.284 ms);
   (b) Vim-S: batch 128, 768 channels, L=197, N=16, G=1, z gating, bf16 in/out, softplus, D, bias
       (official mamba CUDA forward: 0.758 ms);
   (c) Vim-S as ``vmamba.layers.MambaMixer`` calls it: both directions stacked as 2 groups (1536 channels,
       reverse=(F, T)), no z (the gate is applied after the two directions are summed).
5. The route gather / merge kernels at the VMamba-T stage-1 shape (batch 128), next to the PyTorch reference ops.
   Minimal bytes = every input read once + every output written once (forward: u, delta, z, B, C, A, D, delta_bias
   read; out, last_state written. Backward adds: grad_out, u, delta, z, B, C, A, D, delta_bias read; du, ddelta,
   dz, dB, dC, dA, dD, ddelta_bias written). GB/s = minimal bytes / time.
Writes ``scan_bench.json`` and ``scan_bench.md`` under ``$OUT`` when that is set. The table is printed last.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench



def _import_kernels():
    """Import the reference and the Triton launchers; if another part of the package fails to import (work in
    progress elsewhere), load just ``vmamba.kernels.*`` so the benchmark still runs."""
    try:
        from vmamba.kernels import reference
        from vmamba.kernels.triton import selective_scan as triton_scan
    except Exception as exc:  # noqa: BLE001
        import types
        print(f'warning: importing vmamba failed ({type(exc).__name__}: {exc}); loading vmamba.kernels only')
        for name in [m for m in sys.modules if m == 'vmamba' or m.startswith('vmamba.')]:
            del sys.modules[name]
        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'vmamba')
        for name, path in (('vmamba', root), ('vmamba.kernels', os.path.join(root, 'kernels'))):
            package = types.ModuleType(name)
            package.__path__ = [path]
            sys.modules[name] = package
        import importlib
        reference = importlib.import_module('vmamba.kernels.reference')
        triton_scan = importlib.import_module('vmamba.kernels.triton.selective_scan')
    return reference, triton_scan


_reference, _triton_scan = _import_kernels()
selective_scan_ref = _reference.selective_scan_ref
ScanConfig, default_config = _triton_scan.ScanConfig, _triton_scan.default_config
selective_scan_fwd, selective_scan_bwd = _triton_scan.selective_scan_fwd, _triton_scan.selective_scan_bwd

OFFICIAL_FWD_MS = {'vmamba_t_stage1': 0.284, 'vim_s': 0.758}
GRAD_NAMES = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')

CASES = {
    'vmamba_t_stage1': dict(batch=32, channels=384, length=3136, num_states=1, groups=4, z=False,
                            dtype=torch.bfloat16, out_dtype=torch.float32, reverse=(False, False, True, True)),
    'vmamba_t_stage3': dict(batch=128, channels=1536, length=196, num_states=1, groups=4, z=False,
                            dtype=torch.bfloat16, out_dtype=torch.float32, reverse=(False, False, True, True)),
    'vmamba_t_stage2': dict(batch=128, channels=768, length=784, num_states=1, groups=4, z=False,
                            dtype=torch.bfloat16, out_dtype=torch.float32, reverse=(False, False, True, True)),
    # the stage-3 call with its rows padded to a 16-multiple (208): what alignment alone is worth
    'vmamba_t_stage3_l208': dict(batch=128, channels=1536, length=208, num_states=1, groups=4, z=False,
                                 dtype=torch.bfloat16, out_dtype=torch.float32, reverse=(False, False, True, True)),
    'vim_s': dict(batch=128, channels=768, length=197, num_states=16, groups=1, z=True,
                  dtype=torch.bfloat16, out_dtype=torch.bfloat16, reverse=(False,)),
    'vim_s_mixer': dict(batch=128, channels=1536, length=197, num_states=16, groups=2, z=False,
                        dtype=torch.bfloat16, out_dtype=torch.bfloat16, reverse=(False, True)),
    # the same call with the token-major views the mixer passes since v7 (memory (batch, L, channels))
    'vim_s_mixer_token_major': dict(batch=128, channels=1536, length=197, num_states=16, groups=2, z=False,
                                    dtype=torch.bfloat16, out_dtype=torch.bfloat16, reverse=(False, True),
                                    token_major=True),
    # EfficientVMamba-S's ES2D scans (fp16 in, fp32 out, rows contiguous): stage 1's forward runs the chunked
    # kernel (L > 512), its backward and stage 2 run the step kernels
    'effvmamba_s_stage1': dict(batch=128, channels=512, length=784, num_states=16, groups=4, z=False,
                               dtype=torch.float16, out_dtype=torch.float32, reverse=(False, False, True, True)),
    'effvmamba_s_stage2': dict(batch=128, channels=1024, length=196, num_states=16, groups=4, z=False,
                               dtype=torch.float16, out_dtype=torch.float32, reverse=(False, False, True, True)),
}
# The official VMamba kernel only scans forward (the cross scan flips its inputs); this row times that setting.
EXTRA_ROWS = {'vmamba_t_stage1_forward_only': dict(CASES['vmamba_t_stage1'], reverse=(False,) * 4)}
OFFICIAL_FWD_MS['vmamba_t_stage1_forward_only'] = OFFICIAL_FWD_MS['vmamba_t_stage1']

SWEEP = {  # (block_d, block_l, num_warps, channel_blocks); Vim (N=16) runs the step kernels: block_d channels,
    # block_l positions per unrolled block
    # (..., suffix_segment): None = segmented suffix scans (v17, opt-in), the default 0 = Triton's reverse scan
    ('vmamba_t_stage1', 'fwd'): [(1, 512, 1, 1), (1, 256, 1, 1), (1, 128, 1, 1), (1, 64, 1, 1), (1, 512, 2, 1),
                                 (1, 512, 1, 1, None, True, False, None), (1, 256, 1, 1, None, True, False, None),
                                 (1, 128, 1, 1, None, True, False, None)],
    ('vim_s', 'fwd'): [(16, 8, 1, 1), (16, 4, 1, 1), (16, 16, 1, 1), (8, 8, 1, 1), (32, 4, 1, 1), (32, 8, 1, 1)],
    ('vmamba_t_stage1', 'bwd'): [(1, 128, 1, 1), (1, 64, 1, 1), (1, 256, 1, 1), (1, 128, 1, 1, None, True, False, None),
                                 (1, 256, 1, 1, None, True, False, None), (1, 64, 1, 1, None, True, False, None)],
    ('vmamba_t_stage3', 'fwd'): [(1, 256, 1, 1), (1, 128, 1, 1), (1, 64, 1, 1)],
    ('vmamba_t_stage3', 'bwd'): [(1, 128, 1, 1), (1, 256, 1, 1), (1, 64, 1, 1), (1, 256, 2, 1), (2, 64, 1, 1)],
    ('vmamba_t_stage3_l208', 'bwd'): [(1, 128, 1, 1), (1, 256, 1, 1), (1, 64, 1, 1), (1, 256, 2, 1)],
    ('vim_s', 'bwd'): [(16, 4, 1, 1), (16, 8, 1, 1), (8, 8, 1, 1), (8, 4, 1, 1), (8, 16, 1, 1), (32, 4, 1, 1)],
    # (block_d, block_l, warps, channel_blocks[, max_registers])
    # (..., max_registers, clamp_loads, lane_states): lane_states True is one channel per lane (v14)
    ('vim_s_mixer_token_major', 'fwd'): [(32, 2, 1, 1, None, True, True), (32, 2, 1, 1, 128), (32, 1, 1, 1, None, True, True),
                                         (32, 4, 1, 1, None, True, True), (64, 2, 1, 1, None, True, True),
                                         (64, 2, 2, 1, None, True, True), (32, 2, 1, 1, 64, True, True),
                                         (32, 2, 1, 1, None, False, True)],
    # the lane_states entries time the pre-pass with one channel per lane (the backward kernel is the same)
    ('vim_s_mixer_token_major', 'bwd'): [(32, 2, 1, 1, 168, False), (32, 2, 1, 1, 168, False, True)],
    ('effvmamba_s_stage2', 'fwd'): [(16, 4, 1, 1), (32, 4, 1, 1, None, True, True), (32, 2, 1, 1, None, True, True),
                                    (32, 8, 1, 1, None, True, True), (64, 4, 2, 1, None, True, True)],
    ('effvmamba_s_stage2', 'bwd'): [(32, 4, 1, 1), (32, 2, 1, 1, 128), (32, 2, 1, 1), (32, 4, 1, 1, 168),
                                    (16, 4, 1, 1), (16, 2, 1, 1, 128), (64, 4, 2, 1)],
    ('effvmamba_s_stage1', 'bwd'): [(32, 4, 1, 1), (32, 2, 1, 1, 128), (32, 2, 1, 1), (32, 4, 1, 1, 168),
                                    (16, 4, 1, 1), (16, 2, 1, 1, 128), (64, 4, 2, 1)],
}


def make_inputs(batch, channels, length, num_states, groups, z, dtype, device='cuda', seed=0, token_major=False):
    """Inputs shaped like the models produce them (softplus(delta + bias) in [1e-3, 0.1], A = -exp(A_log)).
    ``token_major``: u / delta / z / B / C as transposed views of (batch, L, ...) memory, as Vim's mixer passes them."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device)

    A_log = torch.log(torch.arange(1, num_states + 1, device=device, dtype=torch.float32)).repeat(channels, 1)
    A_log = A_log + 0.1 * randn(channels, num_states)
    dt_init = torch.exp(torch.rand(channels, generator=gen, device=device) * (torch.log(torch.tensor(0.1)) -
                                                                                torch.log(torch.tensor(1e-3)))
                        + torch.log(torch.tensor(1e-3)))
    inputs = dict(
        u=randn(batch, channels, length).to(dtype),
        delta=(0.5 * randn(batch, channels, length)).to(dtype),
        A=-torch.exp(A_log),
        B=randn(batch, groups, num_states, length).to(dtype),
        C=randn(batch, groups, num_states, length).to(dtype),
        D=torch.ones(channels, device=device) + 0.1 * randn(channels),
        z=randn(batch, channels, length).to(dtype) if z else None,
        delta_bias=dt_init + torch.log(-torch.expm1(-dt_init)),
    )
    if token_major:
        for name in ('u', 'delta', 'z'):
            if inputs[name] is not None:
                inputs[name] = inputs[name].transpose(1, 2).contiguous().transpose(1, 2)
        for name in ('B', 'C'):
            inputs[name] = inputs[name].permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    return inputs


def minimal_bytes(inputs, out_dtype, with_backward):
    """Bytes that any implementation must move: inputs read once, outputs written once."""
    tensors = [t for t in inputs.values() if t is not None]
    read = sum(t.numel() * t.element_size() for t in tensors)
    u = inputs['u']
    batch, channels, _ = u.shape
    num_states = inputs['A'].shape[1]
    out_bytes = u.numel() * torch.empty((), dtype=out_dtype).element_size()
    written = out_bytes + batch * channels * num_states * 4  # out + last_state
    total = read + written
    if with_backward:
        total += out_bytes + read  # grad_out + inputs read again
        total += read  # one gradient per input, same size and dtype class
    return total


def rel_rms(actual, expected):
    return ((actual.double() - expected.double()).norm() / expected.double().norm().clamp_min(1e-30)).item()


def check_case(name, case, batch, local_window=0, fwd_config=None, bwd_config=None):
    """Relative-RMS errors of Triton (default tiles, or the given configs) vs the fp32 reference at a real size
    (reduced batch)."""
    case = dict(case, batch=batch)
    inputs = make_inputs(case['batch'], case['channels'], case['length'], case['num_states'], case['groups'],
                         case['z'], case['dtype'], seed=1, token_major=case.get('token_major', False))
    args = [inputs[k] for k in GRAD_NAMES]
    rev = case['reverse']
    out, last = selective_scan_fwd(*args, True, rev, local_window, case['out_dtype'], config=fwd_config)
    grad_out = torch.randn_like(out)
    grad_last = torch.randn_like(last)
    grads = selective_scan_bwd(grad_out, grad_last, *args, True, rev, local_window, config=bwd_config)
    leaves = {k: (v.float().clone().requires_grad_(True) if v is not None else None) for k, v in inputs.items()}
    ref_out, ref_last = selective_scan_ref(
        leaves['u'], leaves['delta'], leaves['A'], leaves['B'], leaves['C'], D=leaves['D'], z=leaves['z'],
        delta_bias=leaves['delta_bias'], delta_softplus=True, reverse=rev, local_window=local_window or None,
        return_last_state=True, out_dtype=torch.float32)
    ((ref_out * grad_out.float()).sum() + (ref_last * grad_last).sum()).backward()
    errors = {'out': rel_rms(out, ref_out), 'last_state': rel_rms(last, ref_last)}
    for k, g in zip(GRAD_NAMES, grads):
        if g is not None:
            errors['d' + k] = rel_rms(g, leaves[k].grad)
    tol = 1e-4 if case['dtype'] == torch.float32 else 1e-2
    worst = max(errors.values())
    status = 'PASS' if worst <= tol else 'FAIL'
    print(f'  [{status}] {name} {str(case["dtype"]).replace("torch.", "")} W={local_window} worst={worst:.2e} '
          + ' '.join(f'{k}={v:.1e}' for k, v in errors.items()), flush=True)
    return dict(name=name, dtype=str(case['dtype']), local_window=local_window, errors=errors, status=status)


def copy_bandwidth():
    src = torch.empty(1 << 29, dtype=torch.bfloat16, device='cuda').normal_()
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode='median')
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9, ms


def bench_case(name, case, fwd_config=None, bwd_config=None, with_backward=True):
    inputs = make_inputs(case['batch'], case['channels'], case['length'], case['num_states'], case['groups'],
                         case['z'], case['dtype'], token_major=case.get('token_major', False))
    args = [inputs[k] for k in GRAD_NAMES]
    rev, out_dtype = case['reverse'], case['out_dtype']

    def fwd():
        return selective_scan_fwd(*args, True, rev, 0, out_dtype, config=fwd_config)

    out, _ = fwd()
    grad_out = torch.randn_like(out)

    def bwd():
        return selective_scan_bwd(grad_out, None, *args, True, rev, 0, config=bwd_config)

    def fwd_bwd():
        fwd()
        return bwd()

    def train():  # what a training step runs: the forward keeps the backward's chunk states, no pre-pass
        out, _, states = selective_scan_fwd(*args, True, rev, 0, out_dtype, save_chunk_states=True)
        return selective_scan_bwd(grad_out, None, *args, True, rev, 0, chunk_states=states)

    result = dict(fwd_ms=do_bench(fwd, warmup=25, rep=200, return_mode='median'),
                  fwd_bytes=minimal_bytes(inputs, out_dtype, False))
    if with_backward:
        result['bwd_ms'] = do_bench(bwd, warmup=25, rep=200, return_mode='median')
        result['fwd_bwd_ms'] = do_bench(fwd_bwd, warmup=25, rep=200, return_mode='median')
        result['fwd_bwd_bytes'] = minimal_bytes(inputs, out_dtype, True)
        if fwd_config is None and bwd_config is None and case['num_states'] == 1:
            result['train_ms'] = do_bench(train, warmup=25, rep=200, return_mode='median')
    return result


def bench_routes(copy_gbs, batch=128, device='cuda', timer=None, shapes=((56, 96), (28, 192))):
    """Route gather / merge kernels at VMamba-T stage-1 / stage-2 shapes (cross scan, 4 routes), next to the PyTorch
    reference ops (index_select + permute) timed in the same run. The merges run with strips of consecutive
    positions (``width`` unknown, the v9 tiling) and with map blocks (``width`` given; default 8 x 8 and a few other
    tiles), and as SS2D uses it: merge then the LayerNorm kernel (fp32 routes -> fp16 normalised map). Minimal bytes:
    gather reads the map once and writes K routes; merge reads K routes and writes the map; merge + LayerNorm reads
    K fp32 routes and writes the fp16 map."""
    from vmamba.kernels.layer_norm import layer_norm_last_dim_unchecked
    from vmamba.kernels.routes import gather_routes_ref, merge_routes_ref
    from vmamba.kernels.triton.routes import gather_routes_triton, merge_routes_triton
    from vmamba.scans import get_scan_pattern
    timer = timer or (lambda fn: do_bench(fn, warmup=25, rep=200, return_mode='median'))
    lines = [f'Route kernels, cross scan, batch {batch}', '',
             '| map | op | Triton ms | GB/s | % copy | PyTorch ops ms | PyTorch / Triton | MB |',
             '|---|---|---|---|---|---|---|---|']
    results = {}
    for size, channels in shapes:
        routes = get_scan_pattern('cross').routes(size, size, device)
        tokens = torch.randn(batch, size * size, channels, device=device, dtype=torch.float16)
        ys = torch.randn(batch, routes.num_routes, channels, routes.length, device=device)
        ys16 = ys.half()
        weight, bias = torch.randn(channels, device=device), torch.randn(channels, device=device)
        gather_bytes = tokens.numel() * 2 * (1 + routes.num_routes)
        cases = [('gather (fp16)', lambda: gather_routes_triton(tokens, routes.index),
                  lambda: gather_routes_ref(tokens, routes.index), gather_bytes)]
        for label, routes_in, elem in (('fp32', ys, 4), ('fp16', ys16, 2)):
            nbytes = routes_in.numel() * elem + tokens.numel() * elem
            ref = (lambda r=routes_in: merge_routes_ref(r, routes.inverse))
            for width, tile, block_c in ((0, None, None), (size, None, None), (size, (8, 8), 32)):
                name = f'merge ({label}) ' + ('strips' if not width else f'tile {tile or (8, 8)} c{block_c or 16}')
                cases.append((name, (lambda r=routes_in, w=width, t=tile, c=block_c:
                                     merge_routes_triton(r, routes.inverse, w, tile=t, block_c=c)), ref, nbytes))
        norm_bytes = ys.numel() * 4 + tokens.numel() * 2
        norm_ref = (lambda: F.layer_norm(merge_routes_ref(ys, routes.inverse), (channels,), weight, bias,
                                         1e-5).half())
        for width in (0, size):
            name = 'merge + LayerNorm (fp32 -> fp16) ' + ('strips' if not width else 'tile default')
            cases.append((name, (lambda w=width: layer_norm_last_dim_unchecked(
                merge_routes_triton(ys, routes.inverse, w), weight, bias, 1e-5, torch.float16)), norm_ref, norm_bytes))
        ref_ms_of = {}  # each PyTorch reference is timed once, not once per tiling that shares it
        for name, fn, ref, nbytes in cases:
            try:
                ms = timer(fn)
                ref_ms = ref_ms_of[ref] if ref in ref_ms_of else ref_ms_of.setdefault(ref, timer(ref))
            except Exception as exc:  # a tile may not compile (registers): report, keep going
                print(f'  routes {size}x{size} {name}: failed: {type(exc).__name__}: {str(exc)[:160]}', flush=True)
                continue
            gbs = nbytes / (ms * 1e-3) / 1e9
            results[f'{size}x{size}x{channels} {name}'] = dict(ms=ms, ref_ms=ref_ms, bytes=nbytes)
            lines.append(f'| {size}x{size}x{channels} | {name} | {ms:.4f} | {gbs:.0f} | {100 * gbs / copy_gbs:.0f}% | '
                         f'{ref_ms:.4f} | {ref_ms / ms:.2f}x | {nbytes / 1e6:.1f} |')
    return results, '\n'.join(lines)


def sweep_routes(time_budget_s, batch=128, device='cuda', shapes=((56, 96), (28, 192), (14, 384), (7, 768))):
    """Launch configurations of the merge kernel per VMamba-T stage shape (cross scan): median ms, best first."""
    from vmamba.kernels.triton.routes import merge_routes_triton
    from vmamba.scans import get_scan_pattern
    start = time.time()
    lines = ['| map | op | best configs (ms) |', '|---|---|---|']
    for size, channels in shapes:
        routes = get_scan_pattern('cross').routes(size, size, device)
        ys = torch.randn(batch, routes.num_routes, channels, routes.length, device=device)
        for label, r in (('merge fp32', ys), ('merge fp16', ys.half())):
            timings = []
            configs = [(t, c, w) for t in ((4, 8), (8, 8), (8, 16), (16, 8)) for c in (16, 32) for w in (2, 4)]
            for tile, block_c, warps in configs:
                if time.time() - start > time_budget_s:
                    break
                fn = (lambda t=tile, c=block_c, w=warps: merge_routes_triton(
                    r, routes.inverse, size, tile=t, block_c=c, num_warps=w))
                try:
                    fn()
                    timings.append((do_bench(fn, warmup=10, rep=50, return_mode='median'), tile, block_c, warps))
                except Exception as exc:  # registers / shared memory: report, keep going
                    print(f'  {size} {label} {tile} c{block_c} w{warps}: failed: {str(exc)[:120]}', flush=True)
            timings.sort(key=lambda t: t[0])
            best = ' · '.join(f'{t} c{c} w{w} {ms:.4f}' for ms, t, c, w in timings[:4])
            lines.append(f'| {size}x{size}x{channels} | {label} | {best} |')
            print(lines[-1], flush=True)
    return '\n'.join(lines)


def sweep(time_budget_s, cases=None, kinds=('fwd', 'bwd')):
    """Best tile config per (case, direction), by median time; stops when the time budget is used up."""
    start = time.time()
    best = {}
    for (name, kind), candidates in SWEEP.items():
        if (cases and name not in cases) or kind not in kinds:
            continue
        case = dict(CASES[name])
        if case['num_states'] == 1:  # the chunked kernels compile once per direction: sweep one, half the compiles
            case['reverse'] = (False,) * case['groups']
        inputs = make_inputs(case['batch'], case['channels'], case['length'], case['num_states'], case['groups'],
                             case['z'], case['dtype'], token_major=case.get('token_major', False))
        args = [inputs[k] for k in GRAD_NAMES]
        out, _ = selective_scan_fwd(*args, True, case['reverse'], 0, case['out_dtype'])
        grad_out = torch.randn_like(out)
        timings = []
        for block_d, block_l, warps, channel_blocks, *extra in candidates:
            if time.time() - start > time_budget_s:
                print(f'  sweep budget of {time_budget_s}s used up; skipping the rest of {name}/{kind}', flush=True)
                break
            cfg = ScanConfig(block_d, block_l, warps, channel_blocks, *extra)
            try:
                rev = case['reverse']
                if kind == 'fwd':
                    fn = lambda: selective_scan_fwd(*args, True, rev, 0, case['out_dtype'], config=cfg)  # noqa: E731
                else:
                    fn = lambda: selective_scan_bwd(grad_out, None, *args, True, rev, 0, config=cfg)  # noqa: E731
                fn()
                ms = do_bench(fn, warmup=10, rep=50, return_mode='median')
            except Exception as exc:  # a config may not compile (registers/shared memory): report, keep going
                print(f'  {name}/{kind} {cfg}: failed: {type(exc).__name__}: {str(exc)[:200]}', flush=True)
                continue
            timings.append((ms, cfg))
            print(f'  {name}/{kind} d={block_d:3d} l={block_l:5d} w={warps} cb={channel_blocks} '
                  f'regs<={cfg.max_registers} clamp={cfg.clamp_loads} lanes={cfg.lane_states} '
                  f'segment={cfg.suffix_segment}: {ms:.4f} ms',
                  flush=True)
        if kind == 'bwd' and case['num_states'] == 1:
            # The backward's forward pre-pass (chunk-start states) alone, at the default backward chunk.
            config = default_config('bwd', 1, case['length'], case['channels'] // case['groups'])
            chunks = -(-case['length'] // config.block_l)
            states = torch.empty((case['batch'], case['channels'], chunks, 1), device='cuda', dtype=torch.float32)
            prepass = lambda: _triton_scan._launch_fwd(  # noqa: E731
                *args[:5], None, None, args[7], True, case['reverse'], 0, config, None, None, states)
            ms = do_bench(prepass, warmup=10, rep=50, return_mode='median')
            print(f'  {name}/bwd pre-pass alone (block_l={config.block_l}): {ms:.4f} ms', flush=True)
        if kind == 'bwd' and case['num_states'] > 1:
            # The step backward's pre-pass (block-start states) alone, for every swept block_l / register cap.
            for cfg in dict.fromkeys(cfg for _, cfg in timings):
                chunks = -(-case['length'] // cfg.block_l)
                states = torch.empty((case['batch'], chunks, case['channels'], case['num_states']), device='cuda',
                                     dtype=torch.float32)
                prepass = lambda c=cfg, s=states: _triton_scan._launch_fwd_step(  # noqa: E731
                    *args[:5], None, None, args[7], True, case['reverse'], c, None, None, s)
                ms = do_bench(prepass, warmup=10, rep=50, return_mode='median')
                print(f'  {name}/bwd pre-pass alone (block_d={cfg.block_d}, block_l={cfg.block_l}, '
                      f'regs<={cfg.max_registers}, lanes={cfg.lane_states}): {ms:.4f} ms', flush=True)
        if timings:
            timings.sort(key=lambda t: t[0])
            default_kind = kind + '_step' if case['num_states'] > 1 else kind
            default = default_config(default_kind, case['num_states'], case['length'],
                                     case['channels'] // case['groups'], case.get('token_major', False),
                                     sequences=case['batch'] * case['groups'])
            best[(name, kind)] = timings[0][1]
            print(f'  best {name}/{kind}: {timings[0][1]} {timings[0][0]:.4f} ms (default {default})', flush=True)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sweep', action='store_true', help='time several tile configs and use the best')
    parser.add_argument('--sweep-budget', type=float, default=240.0, help='seconds for the sweep')
    parser.add_argument('--sweep-cases', nargs='*', default=None, help='sweep only these cases (default: all)')
    parser.add_argument('--quick', action='store_true', help='skip the reference check')
    parser.add_argument('--sweep-only', action='store_true', help='stop after the tile sweep')
    parser.add_argument('--sweep-kinds', nargs='*', default=('fwd', 'bwd'), help='sweep only these directions')
    parser.add_argument('--routes-only', action='store_true', help='only the route gather / merge kernels')
    parser.add_argument('--cases', nargs='*', default=None, help='benchmark only these cases (default: all)')
    parser.add_argument('--no-routes', action='store_true', help='skip the route gather / merge kernels')
    parser.add_argument('--routes-sweep', type=float, default=0, help='seconds for a sweep of the merge kernels')
    opts = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit('bench_scan.py needs a CUDA GPU')
    torch.backends.cuda.matmul.allow_tf32 = False
    device_name = torch.cuda.get_device_name()
    env = f'{device_name}, torch {torch.__version__}, triton {triton.__version__}'
    print(f'# {env}', flush=True)
    report = dict(device=device_name, torch=torch.__version__, triton=triton.__version__,
                  date=datetime.date.today().isoformat(), command='PYTHONPATH=. python benchmarks/bench_scan.py '
                  + ' '.join(sys.argv[1:]), checks=[], results={})

    t0 = time.time()
    if not opts.quick:
        print('## correctness vs reference (relative RMS; fp32 tol 1e-4, bf16 tol 1e-2)', flush=True)
        for dtype in (torch.float32, torch.bfloat16):
            for name, batch, window in (('vmamba_t_stage1', 2, 0), ('vim_s', 4, 0), ('vim_s', 4, 8),
                                        ('vim_s_mixer', 4, 0), ('vim_s_mixer_token_major', 4, 0)):
                case = dict(CASES[name], dtype=dtype, out_dtype=CASES[name]['out_dtype'] if dtype != torch.float32
                            else torch.float32)
                if window:
                    case['reverse'] = (True,)
                report['checks'].append(check_case(name, case, batch, window))
        print(f'  checks took {time.time() - t0:.1f}s', flush=True)

    copy_gbs, copy_ms = copy_bandwidth()
    report['copy_gbs'] = copy_gbs
    print(f'## device-to-device copy: {copy_gbs:.0f} GB/s (1 GiB bf16 copy_: {copy_ms:.3f} ms)', flush=True)

    best = {}
    if opts.sweep:
        print('## tile sweep', flush=True)
        best = sweep(opts.sweep_budget, opts.sweep_cases, opts.sweep_kinds)
        report['sweep_best'] = {f'{k[0]}/{k[1]}': vars(v) for k, v in best.items()}
        if opts.sweep_only:
            return

    print('## benchmark', flush=True)
    rows = []
    for name, case in [] if opts.routes_only else list(CASES.items()) + list(EXTRA_ROWS.items()):
        if opts.cases and name not in opts.cases:
            continue
        variants = [('default', None, None)]
        base = (name if (name, 'fwd') in SWEEP or (name, 'bwd') in SWEEP
                else next((b for b in ('vmamba_t_stage1', 'vim_s') if name.startswith(b)), name))
        if (base, 'fwd') in best or (base, 'bwd') in best:
            variants.append(('sweep-best', best.get((base, 'fwd')), best.get((base, 'bwd'))))
        for label, fwd_cfg, bwd_cfg in variants:
            res = bench_case(name, case, fwd_cfg, bwd_cfg)
            res['config'] = label
            report['results'][f'{name}/{label}'] = res
            fwd_gbs = res['fwd_bytes'] / (res['fwd_ms'] * 1e-3) / 1e9
            fb_gbs = res['fwd_bwd_bytes'] / (res['fwd_bwd_ms'] * 1e-3) / 1e9
            rows.append((f'{name} ({label})', res['fwd_ms'], fwd_gbs, 100 * fwd_gbs / copy_gbs,
                         OFFICIAL_FWD_MS.get(name, float('nan')) / res['fwd_ms'], res['bwd_ms'], res['fwd_bwd_ms'],
                         fb_gbs,
                         100 * fb_gbs / copy_gbs, res['fwd_bytes'] / 1e6, res['fwd_bwd_bytes'] / 1e6,
                         res.get('train_ms', float('nan'))))

    header = ('| case | fwd ms | fwd GB/s | fwd % copy | official fwd / ours | bwd ms | fwd+bwd ms | fwd+bwd GB/s '
              '| fwd+bwd % copy | fwd MB | fwd+bwd MB | train fwd+bwd ms | train % copy |')
    lines = [f'Device: {env}; copy bandwidth {copy_gbs:.0f} GB/s', '', header, '|' + '---|' * 13]
    for r in rows:
        official = f'{r[4]:.2f}x' if r[4] == r[4] else 'n/a'  # NaN: no official number for this case
        train = (f'{r[11]:.4f} | {100 * r[10] * 1e6 / (r[11] * 1e-3) / 1e9 / copy_gbs:.0f}%' if r[11] == r[11]
                 else 'n/a | n/a')
        lines.append(f'| {r[0]} | {r[1]:.4f} | {r[2]:.0f} | {r[3]:.0f}% | {official} | {r[5]:.4f} | {r[6]:.4f} | '
                     f'{r[7]:.0f} | {r[8]:.0f}% | {r[9]:.1f} | {r[10]:.1f} | {train} |')
    table = '\n'.join(lines)
    if not opts.no_routes:
        report['routes'], routes_table = bench_routes(copy_gbs)
        table += '\n\n' + routes_table
    if opts.routes_sweep:
        table += '\n\nMerge kernel configurations ((TILE_H, TILE_W), channels per tile, warps -> median ms)\n\n'
        table += sweep_routes(opts.routes_sweep)
    out_dir = os.environ.get('OUT')
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, 'scan_bench.json'), 'w') as f:
            json.dump(report, f, indent=2)
        with open(os.path.join(out_dir, 'scan_bench.md'), 'w') as f:
            f.write(table + '\n')
    print(f'## total {time.time() - t0:.1f}s')
    print(table)


if __name__ == '__main__':
    main()

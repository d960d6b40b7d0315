"""GPU benchmark of the fused causal depthwise conv + SiLU Triton kernels (Vim's mixer conv), forward and backward.

    PYTHONPATH=. python benchmarks/bench_conv.py [--sweep] [--budget SECONDS] [--json PATH]

Cases, as ``vmamba.layers.MambaMixer`` calls the op under fp16 autocast: fp16 ``x`` ``(batch, L, E)``, the first
half of the in_proj output ``xz`` ``(batch, L, 2E)`` (``xz.split(E, -1)[0]``: position stride 2E; ``--x-contiguous``:
a contiguous x instead), fp32 weight ``(G*E, K)`` and bias ``(G*E,)`` (the model's parameters), ``K = 4`` (d_conv),
``G = 2`` output groups (``reverse = (False, True)``: Vim's two directions), fp16 ``grad`` ``(batch, L, G*E)``:

* ``vim_s``: batch 128, L 197, E 768 -> G*E = 1536 outputs;
* ``vim_t``: batch 128, L 197, E 384 -> G*E = 768 outputs.

The default configs and the sweep's best are first checked against autograd through the fp32 PyTorch reference
(batch 16; relative RMS: ~3e-4 for y and dx, fp16 rounding; ~1e-7 for the fp32 dweight and dbias). Timed with
``triton.testing.do_bench`` (median; L2 flushed between calls):

* ``fwd``: ``causal_conv_silu_fwd`` (one kernel);
* ``bwd``: ``causal_conv_silu_bwd``: the fused backward kernel and the sums of the partial dweight / dbias rows. The
  default backward is also broken down per CUDA kernel (``torch.profiler``).

Minimal bytes (every input read once, every output written once; ``s`` = x's element size, 2 for fp16)::

    fwd = read x + write y                         = B*L*E*s + B*L*G*E*s
    bwd = read x + read grad + write dx + dweight  = B*L*E*s + B*L*G*E*s + B*L*E*s + G*E*K*4 (+ G*E*4 dbias)

(Vim-S: fwd 116 MB, bwd 155 MB.) GB/s = minimal bytes / time; "% copy" is against a device-to-device copy
bandwidth measured in the same run (``copy_`` of 1 GiB; 2 GiB moved).

``--sweep`` times candidate launch configs per kernel and reports the best:

* forward (CHUNK, BLOCK_C, num_warps, STEPS): CHUNK {32, 64, 100} x BLOCK_C {64, 128, 256} x warps {1, 2, 4} x
  STEPS {4, 8}, at least one channel per thread;
* backward (CHUNK, BLOCK_C, num_warps, STEPS, batch_per_program): CHUNK {32, 64} x BLOCK_C {64, 128} x warps {1, 2}
  x STEPS {2, 4} x batch_per_program {1, 2, 4}.

Candidates are first compiled in parallel worker processes (``--workers``; Triton's on-disk cache then serves the
timing process), and the sweep stops when ``--budget`` seconds (compiles included) are spent: each (case, kernel)
gets an equal share of what is left, the default config is timed first, and the skipped candidates are counted. The
sweep compiles ~100 kernels (~2.5 s each for sm_90 on one CPU core: with 8 workers ~30-40 s; a warm Triton cache
skips that); the precompile gets at most 60% of the budget. Total runtime: ~15-20 s without ``--sweep``, that + the
budget with it (default 60 s).
"""
from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import sys
import time

REPO_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from vmamba.kernels.conv import causal_conv_silu_ref  # noqa: E402
from vmamba.kernels.triton import conv as triton_conv  # noqa: E402

DEVICE = 'cuda'

CASES = {
    'vim_s': dict(batch=128, length=197, channels=768, reverse=(False, True), width=4, dtype=torch.float16),
    'vim_t': dict(batch=128, length=197, channels=384, reverse=(False, True), width=4, dtype=torch.float16),
}

SWEEP = {
    'fwd': [(t, c, w, s) for t in (32, 64, 100) for c in (64, 128, 256) for w in (1, 2, 4) for s in (4, 8)
            if c >= 32 * w],
    'bwd': [(t, c, w, s, b) for t in (32, 64) for c in (64, 128) for w in (1, 2) for s in (2, 4) for b in (1, 2, 4)],
}


def default_config(kernel):
    return {'fwd': triton_conv._FWD_CONFIG, 'bwd': triton_conv._BWD_CONFIG}[kernel]


def make_inputs(batch, length, channels, reverse, width, dtype, x_slice=True, seed=0, device=None):
    """x (batch, L, E): the first half of a (batch, L, 2E) buffer (``x_slice``) or contiguous; fp32 weight / bias,
    grad in x's dtype."""
    device = device or DEVICE
    gen = torch.Generator(device=device).manual_seed(seed)
    if x_slice:
        x = torch.randn(batch, length, 2 * channels, device=device, generator=gen).to(dtype)[..., :channels]
    else:
        x = torch.randn(batch, length, channels, device=device, generator=gen).to(dtype)
    groups = len(reverse)
    weight = torch.randn(groups * channels, width, device=device, generator=gen) / width ** 0.5
    bias = torch.randn(groups * channels, device=device, generator=gen)
    grad = torch.randn(batch, length, groups * channels, device=device, generator=gen).to(dtype)
    return dict(x=x, weight=weight, bias=bias, grad=grad, reverse=reverse)


def minimal_bytes(inputs, direction):
    """fwd: read x + write y; bwd: read x + read grad + write dx + write dweight and dbias."""
    x, weight, bias, grad = inputs['x'], inputs['weight'], inputs['bias'], inputs['grad']
    x_bytes = x.numel() * x.element_size()
    grad_bytes = grad.numel() * grad.element_size()  # = y's bytes
    if direction == 'fwd':
        return x_bytes + grad_bytes
    return 2 * x_bytes + grad_bytes + weight.numel() * weight.element_size() + bias.numel() * bias.element_size()


def run_fn(inputs, kernel='fwd', config=None):
    """A no-argument callable running the forward (``kernel='fwd'``) or the backward (``'bwd'``) at ``config``
    (None: the module default)."""
    x, weight, bias, grad, reverse = (inputs[k] for k in ('x', 'weight', 'bias', 'grad', 'reverse'))
    if kernel == 'fwd':
        return lambda: triton_conv.causal_conv_silu_fwd(x, weight, bias, reverse, config=config)
    return lambda: triton_conv.causal_conv_silu_bwd(grad, x, weight, bias, reverse, config=config)


def check(case, fwd_config=None, bwd_config=None, batch=16):
    """Relative RMS errors of y, dx, dweight, dbias (batch 16) against autograd through the fp32 PyTorch
    reference."""
    inputs = make_inputs(**dict(case, batch=batch), seed=1)
    x, weight, bias, grad, reverse = (inputs[k] for k in ('x', 'weight', 'bias', 'grad', 'reverse'))
    y = triton_conv.causal_conv_silu_fwd(x, weight, bias, reverse, config=fwd_config)
    grads = triton_conv.causal_conv_silu_bwd(grad, x, weight, bias, reverse, config=bwd_config)
    leaves = [t.detach().float().requires_grad_(True) for t in (x, weight, bias)]
    y_ref = causal_conv_silu_ref(*leaves, reverse)
    grads_ref = torch.autograd.grad(y_ref, leaves, grad.float())
    return {name: ((a.float() - b).square().mean().sqrt() / b.square().mean().sqrt()).item()
            for name, a, b in zip(('y', 'dx', 'dweight', 'dbias'), (y,) + tuple(grads), (y_ref,) + grads_ref)}


def bench(fn, quick=False):
    """Median ms of ``fn`` (do_bench: L2 flushed between calls)."""
    if quick:
        return do_bench(fn, warmup=5, rep=30, return_mode='median')
    return do_bench(fn, warmup=25, rep=200, return_mode='median')


def copy_bandwidth():
    """Device-to-device copy of 1 GiB: (GB/s counting the read and the write, ms)."""
    src = torch.empty(1 << 29, dtype=torch.float16, device=DEVICE).normal_()
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9, ms


def kernel_breakdown(fn, iters=20):
    """[(CUDA kernel name, ms per call of fn, launches per call)] from torch.profiler, slowest first."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    rows = []
    for evt in prof.key_averages():
        if not str(getattr(evt, 'device_type', '')).endswith('CUDA'):
            continue
        us = getattr(evt, 'self_device_time_total', None)
        if us is None:
            us = getattr(evt, 'self_cuda_time_total', 0)
        if us > 0:
            rows.append((evt.key, us / iters / 1e3, evt.count / iters))
    return sorted(rows, key=lambda r: -r[1])


def _precompile_worker(case, jobs, device):
    """Worker process: run each (kernel, config) once on a small batch with the same kernel specializations as the
    timed case (batch 16: a multiple of 16 like 128; same L, E and strides), filling Triton's on-disk cache."""
    inputs = make_inputs(**dict(case, batch=min(16, case['batch'])), device=device)
    failures = []
    for kernel, config in jobs:
        try:
            run_fn(inputs, kernel, config)()
        except Exception as exc:  # noqa: BLE001
            failures.append((kernel, config, f'{type(exc).__name__}: {exc}'.splitlines()[0][:200]))
    if device == 'cuda':
        torch.cuda.synchronize()
    return failures


def precompile(case, jobs, workers, timeout_s):
    """Compile ``jobs`` in ``workers`` spawned processes, stopping them after ``timeout_s``.
    Returns (seconds, all done, [(kernel, config, error)] of the candidates that failed)."""
    t0 = time.time()
    if workers < 1 or not jobs:
        return 0.0, False, []
    chunks = [jobs[i::workers] for i in range(workers)]
    pool = multiprocessing.get_context('spawn').Pool(workers)
    done, failures = False, []
    try:
        result = pool.starmap_async(_precompile_worker, [(case, chunk, DEVICE) for chunk in chunks if chunk])
        result.wait(max(timeout_s, 0.0))
        if result.ready():
            failures = [f for chunk_failures in result.get() for f in chunk_failures]
            done = True
            pool.close()
        else:
            pool.terminate()
    except Exception as exc:  # noqa: BLE001
        print(f'  precompile failed ({type(exc).__name__}: {exc}); compiling while timing', flush=True)
        pool.terminate()
    pool.join()
    return time.time() - t0, done, failures


def sweep(budget_s, workers, copy_gbs, cases):
    """Times SWEEP's candidates per (case, kernel) within ``budget_s`` seconds; returns (rows, best)."""
    t0 = time.time()
    jobs = [(kernel, config) for kernel, configs in SWEEP.items() for config in configs]
    # The cases differ in E only (multiples of 16 both), a runtime argument with the same specialization: the first
    # case's compiles serve the others.
    seconds, done, failures = precompile(next(iter(cases.values())), jobs, workers, 0.6 * budget_s)
    if workers:
        print(f'  precompiled {len(jobs)} candidates in {seconds:.1f}s with {workers} workers'
              + ('' if done else ' (stopped at the time limit; the rest compile while timing)'), flush=True)
    for kernel, config, error in failures:
        print(f'  precompile {kernel} {tuple(config)} failed: {error}', flush=True)
    queues = [(name, kernel) for name in cases for kernel in SWEEP]
    rows, best = [], {}
    for index, (name, kernel) in enumerate(queues):
        inputs = make_inputs(**cases[name])
        direction = 'fwd' if kernel == 'fwd' else 'bwd'
        num_bytes = minimal_bytes(inputs, direction)
        share_end = time.time() + (budget_s - (time.time() - t0)) / (len(queues) - index)
        default = default_config(kernel)
        candidates = [default] + [c for c in SWEEP[kernel] if tuple(c) != tuple(default)]
        timings, skipped = [], 0
        for config in candidates:
            if time.time() > share_end:
                skipped += 1
                continue
            try:
                ms = bench(run_fn(inputs, kernel, config), quick=True)
            except Exception as exc:  # noqa: BLE001
                print(f'  {name}/{kernel} {config}: failed ({type(exc).__name__}: '
                      f'{str(exc).splitlines()[0][:120]})', flush=True)
                continue
            gbs = num_bytes / (ms * 1e-3) / 1e9
            timings.append((ms, tuple(config)))
            rows.append(dict(case=name, kernel=kernel, timed=direction, config=list(config), ms=ms, gbs=gbs,
                             pct_copy=100 * gbs / copy_gbs, default=tuple(config) == tuple(default)))
            print(f'  {name}/{kernel} {config}: {direction} {ms:.4f} ms {gbs:.0f} GB/s '
                  f'({100 * gbs / copy_gbs:.0f}% copy)', flush=True)
        if timings:
            timings.sort()
            best[(name, kernel)] = timings[0][1]
            default_ms = next((ms for ms, c in timings if c == tuple(default)), float('nan'))
            print(f'  best {name}/{kernel}: {timings[0][1]} {timings[0][0]:.4f} ms (default {tuple(default)} '
                  f'{default_ms:.4f} ms); {len(timings)} timed, {skipped} skipped (budget)', flush=True)
    return rows, best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sweep', action='store_true', help='time the candidate launch configs of each kernel')
    parser.add_argument('--budget', type=float, default=60.0,
                        help='seconds for the sweep, compiles included (default 60)')
    parser.add_argument('--workers', type=int, default=min(8, max(1, (os.cpu_count() or 2) - 2)),
                        help='processes compiling the sweep candidates ahead (0: compile while timing)')
    parser.add_argument('--cases', nargs='*', default=list(CASES), choices=list(CASES), help='cases to run')
    parser.add_argument('--x-contiguous', action='store_true',
                        help='contiguous x (default: x = xz[..., :E] of a (batch, L, 2E) buffer, as the mixer)')
    parser.add_argument('--no-profile', action='store_true', help='skip the per-kernel breakdown (torch.profiler)')
    parser.add_argument('--json', metavar='PATH', help='save the results as JSON')
    opts = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit('bench_conv.py needs a CUDA GPU (torch.cuda.is_available() is False); nothing was timed')
    if os.environ.get('TRITON_INTERPRET', '0') == '1':
        sys.exit('bench_conv.py: unset TRITON_INTERPRET (the interpreter runs the kernels on the CPU)')

    t0 = time.time()
    device_name = torch.cuda.get_device_name()
    env = f'{device_name}, torch {torch.__version__}, triton {triton.__version__}'
    print(f'# {env}', flush=True)
    report = dict(device=device_name, torch=torch.__version__, triton=triton.__version__,
                  date=datetime.date.today().isoformat(),
                  command='PYTHONPATH=. python benchmarks/bench_conv.py ' + ' '.join(sys.argv[1:]),
                  defaults={k: list(default_config(k)) for k in SWEEP}, cases={}, results=[])

    copy_gbs, copy_ms = copy_bandwidth()
    torch.cuda.empty_cache()  # the copy's 2 GiB
    report.update(copy_gbs=copy_gbs, copy_ms=copy_ms)
    print(f'## device-to-device copy: {copy_gbs:.0f} GB/s (1 GiB fp16 copy_: {copy_ms:.3f} ms)', flush=True)

    cases = {name: dict(CASES[name], x_slice=not opts.x_contiguous) for name in opts.cases}
    lines = [f'Device: {env}; copy bandwidth {copy_gbs:.0f} GB/s', '',
             '| case | direction | configs | ms | GB/s | % copy | minimal MB |', '|---|---|---|---|---|---|---|']

    def record(name, direction, label, configs, ms, num_bytes):
        gbs = num_bytes / (ms * 1e-3) / 1e9
        report['results'].append(dict(case=name, direction=direction, label=label, configs=configs, ms=ms, gbs=gbs,
                                      pct_copy=100 * gbs / copy_gbs, minimal_bytes=num_bytes))
        config_text = ' '.join(f'{k}={tuple(v)}' for k, v in configs.items())
        lines.append(f'| {name} | {direction} ({label}) | {config_text} | {ms:.4f} | {gbs:.0f} | '
                     f'{100 * gbs / copy_gbs:.0f}% | {num_bytes / 1e6:.1f} |')
        print(f'  {name} {direction} ({label}): {ms:.4f} ms, {gbs:.0f} GB/s ({100 * gbs / copy_gbs:.0f}% copy), '
              f'minimal {num_bytes / 1e6:.1f} MB', flush=True)

    print('## default configs', flush=True)
    for name, case in cases.items():
        errors = check(case)
        report.setdefault('checks', {})[f'{name}/default'] = errors
        print(f'  {name} vs fp32 reference (batch 16, relative RMS): '
              + ' '.join(f'{k} {v:.1e}' for k, v in errors.items()), flush=True)
        inputs = make_inputs(**case)
        report['cases'][name] = dict({k: v for k, v in case.items() if k != 'dtype'}, dtype=str(case['dtype']),
                                     fwd_bytes=minimal_bytes(inputs, 'fwd'), bwd_bytes=minimal_bytes(inputs, 'bwd'))
        record(name, 'fwd', 'default', {'fwd': default_config('fwd')}, bench(run_fn(inputs, 'fwd')),
               minimal_bytes(inputs, 'fwd'))
        record(name, 'bwd', 'default', {'bwd': default_config('bwd')}, bench(run_fn(inputs, 'bwd')),
               minimal_bytes(inputs, 'bwd'))
        if not opts.no_profile:
            try:
                breakdown = kernel_breakdown(run_fn(inputs, 'bwd'))
            except Exception as exc:  # noqa: BLE001
                print(f'  (profiler breakdown failed: {type(exc).__name__}: {exc})', flush=True)
                breakdown = []
            report['cases'][name]['bwd_breakdown'] = [dict(kernel=k, ms=ms, launches=n) for k, ms, n in breakdown]
            for kernel, ms, count in breakdown:
                print(f'    {ms:.4f} ms  x{count:g}  {kernel[:110]}', flush=True)
        del inputs

    if opts.sweep:
        print(f'## sweep (budget {opts.budget:.0f}s)', flush=True)
        rows, best = sweep(opts.budget, opts.workers, copy_gbs, cases)
        report['sweep'] = rows
        report['sweep_best'] = {f'{name}/{kernel}': list(config) for (name, kernel), config in best.items()}
        print('## best configs together', flush=True)
        for name, case in cases.items():
            errors = check(case, best.get((name, 'fwd')), best.get((name, 'bwd')))
            report.setdefault('checks', {})[f'{name}/sweep best'] = errors
            print(f'  {name} vs fp32 reference (batch 16, relative RMS): '
                  + ' '.join(f'{k} {v:.1e}' for k, v in errors.items()), flush=True)
            inputs = make_inputs(**case)
            if (name, 'fwd') in best:
                record(name, 'fwd', 'sweep best', {'fwd': best[(name, 'fwd')]},
                       bench(run_fn(inputs, 'fwd', best[(name, 'fwd')])), minimal_bytes(inputs, 'fwd'))
            if (name, 'bwd') in best:
                record(name, 'bwd', 'sweep best', {'bwd': best[(name, 'bwd')]},
                       bench(run_fn(inputs, 'bwd', best[(name, 'bwd')])), minimal_bytes(inputs, 'bwd'))
            del inputs
        lines += ['', 'Best config per kernel:', '']
        lines += [f'- {name}/{kernel}: {tuple(config)} (default {tuple(default_config(kernel))})'
                  for (name, kernel), config in best.items()]

    report['total_s'] = time.time() - t0
    if opts.json:
        os.makedirs(os.path.dirname(os.path.abspath(opts.json)), exist_ok=True)
        with open(opts.json, 'w') as f:
            json.dump(report, f, indent=2)
    print(f'## total {report["total_s"]:.1f}s')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()

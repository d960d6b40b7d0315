"""CPU inference: batch-1 224x224 latency of the models with our chunked reference scan vs a plain step-by-step scan.

The step-by-step scan is the official CPU fallback's algorithm (``selective_scan_torch`` in VMamba, the
``selective_scan_ref`` loop in mamba_ssm): one Python iteration per time step, vectorised over batch, channels and
states. Both run in fp32 under ``torch.no_grad``.

    python benchmarks/bench_cpu.py [--threads 2] [--models vmamba_tiny_s1l8 vim_small_patch16_224] [--repeats 3]
        [--previous-reference OLD/vmamba/kernels/reference.py]

``--previous-reference`` also times the models with another version's reference scan (a ``reference.py`` file,
e.g. from ``git show REV:vmamba/kernels/reference.py``), in the same run, with the rest of the model unchanged.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import time
from contextlib import contextmanager
from datetime import date

import torch
import torch.nn.functional as F

import timm
import vmamba  # noqa: F401
from vmamba.kernels import interface


def step_by_step_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, reverse=False,
                      local_window=0, return_last_state=False, out_dtype=None):
    """One Python step per time step (no local-window support: only for the models benchmarked here)."""
    if local_window:
        raise NotImplementedError('step_by_step_scan: local_window is not supported')
    groups = B.shape[1]
    per_group = u.shape[1] // groups
    reverse = (reverse,) * groups if isinstance(reverse, bool) else tuple(reverse)
    dt = delta.float() + (delta_bias.float()[:, None] if delta_bias is not None else 0)
    dt = F.softplus(dt) if delta_softplus else dt
    u32 = u.float()
    Bc = B.float().repeat_interleave(per_group, 1)
    Cc = C.float().repeat_interleave(per_group, 1)
    flip = torch.tensor(reverse).repeat_interleave(per_group)[None, :, None]
    if any(reverse):
        u_s, dt_s = torch.where(flip, u32.flip(-1), u32), torch.where(flip, dt.flip(-1), dt)
        Bc, Cc = torch.where(flip[..., None], Bc.flip(-1), Bc), torch.where(flip[..., None], Cc.flip(-1), Cc)
    else:
        u_s, dt_s = u32, dt
    decay = torch.exp(dt_s.unsqueeze(2) * A.float()[None, :, :, None])
    inputs = (dt_s * u_s).unsqueeze(2) * Bc
    h = torch.zeros_like(decay[..., 0])
    ys = []
    for t in range(u.shape[-1]):
        h = decay[..., t] * h + inputs[..., t]
        ys.append((h * Cc[..., t]).sum(-1))
    y = torch.stack(ys, -1)
    if any(reverse):
        y = torch.where(flip, y.flip(-1), y)
    if D is not None:
        y = y + D.float()[:, None] * u32
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(out_dtype or u.dtype)
    return (y, h) if return_last_state else y


@contextmanager
def scan_implementation(fn):
    original = interface.selective_scan_ref
    interface.selective_scan_ref = fn
    try:
        yield
    finally:
        interface.selective_scan_ref = original


def load_reference(path: str):
    """``selective_scan_ref`` of another version's ``reference.py``."""
    spec = importlib.util.spec_from_file_location('previous_reference', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.selective_scan_ref


def latencies_ms(model, x, scans: dict, repeats: int) -> dict:
    """Best-of-``repeats`` latency of ``model(x)`` with each scan implementation, timed round-robin (one call of
    each per round) so that a shared machine's drift affects all of them alike."""
    times = {label: [] for label in scans}
    with torch.no_grad():
        for label, scan in scans.items():  # warm-up
            with scan_implementation(scan):
                model(x)
        for _ in range(repeats):
            for label, scan in scans.items():
                with scan_implementation(scan):
                    start = time.perf_counter()
                    model(x)
                    times[label].append(time.perf_counter() - start)
    return {label: 1000 * min(t) for label, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--models', nargs='*',
                        default=['vmamba_tiny_s1l8', 'vim_small_patch16_224', 'efficientvmamba_tiny'])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--json', default=None)
    parser.add_argument('--previous-reference', default=None, help="another version's reference.py, timed too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    previous = load_reference(args.previous_reference) if args.previous_reference else None
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = timm.create_model(name).eval()
        x = torch.randn(1, 3, 224, 224)
        scans = dict(ours=interface.selective_scan_ref, step_by_step=step_by_step_scan)
        if previous is not None:
            scans['previous'] = previous
        ms = latencies_ms(model, x, scans, args.repeats)
        row = dict(model=name, ours_ms=ms['ours'], step_by_step_ms=ms['step_by_step'],
                   speedup=ms['step_by_step'] / ms['ours'])
        if previous is not None:
            row['previous_ms'] = ms['previous']
        rows.append(row)
    print(f'\nCPU ({platform.processor() or platform.machine()}), {args.threads} threads, torch {torch.__version__}, '
          f'{date.today()}, batch 1, 224x224, fp32, best of {args.repeats} (round-robin)')
    extra = ' previous reference (ms) | ours vs previous |' if previous is not None else ''
    print(f'| model | chunked reference scan (ms) | step-by-step scan (ms) | speed-up |{extra}\n'
          f'|---|---|---|---|{"---|---|" if extra else ""}')
    for r in rows:
        line = f"| {r['model']} | {r['ours_ms']:.0f} | {r['step_by_step_ms']:.0f} | {r['speedup']:.1f}x |"
        if 'previous_ms' in r:
            line += f" {r['previous_ms']:.0f} | {r['previous_ms'] / r['ours_ms']:.2f}x |"
        print(line)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)


if __name__ == '__main__':
    main()

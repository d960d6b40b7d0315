#!/usr/bin/env python3
"""Throughput (inference and train fwd+bwd), peak memory, params and FLOPs of our models next to timm peers.

One process measures every model, so the peers (default: convnext_tiny, deit_small_patch16_224, mambaout_tiny,
mambaout_femto) run under the same conditions and each model's throughput is also reported as a ratio to each peer.

Examples::

    # GPU, all our ImageNet models + peers, AMP bf16, batch 128, 50 warm-up + 30 timed iterations:
    python tools/benchmark.py --models ours --amp -b 128 --out benchmarks/results/models
    python tools/benchmark.py --models vmamba_tiny_s1l8,vim_small_patch16_224 --no-peers --bench inference
    # the GPU work alone (each step replayed as one CUDA graph; models and peers alike):
    python tools/benchmark.py --models vmamba_tiny_s1l8 --peers convnext_tiny --amp --cuda-graph
    # CPU smoke test:
    python tools/benchmark.py --models test_vmamba --peers test_mambaout --img-size 32 -b 2 --warmup 1 --iters 2

Method (as timm's benchmark.py): random input at the model's pretrained-cfg resolution (or ``--img-size``),
``--warmup`` untimed iterations, then ``--iters`` timed iterations with a device synchronisation after each.
Train = forward + cross-entropy backward (no optimizer step; VMamba's "Train TP" definition). Peak memory is
``torch.cuda.max_memory_allocated`` per phase (CUDA only). FLOPs: :mod:`vmamba.flops` at batch 1 in the papers'
convention (1 per multiply-accumulate, scan = 9BLDN + BDL). Writes ``<out>.json``, ``<out>.md`` and ``<out>.png``
(throughput vs params).
"""
from __future__ import annotations

import argparse
import fnmatch
import gc
import os
import platform
import sys
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as common  # noqa: E402

import timm  # noqa: E402

from vmamba.flops import count_flops, count_params  # noqa: E402

DEFAULT_PEERS = ('convnext_tiny', 'deit_small_patch16_224', 'mambaout_tiny', 'mambaout_femto')


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', default='ours',
                   help="comma-separated names or patterns; 'ours' = every architecture of ours with weights")
    p.add_argument('--peers', default=','.join(DEFAULT_PEERS), help='comma-separated timm peers')
    p.add_argument('--no-peers', action='store_true')
    p.add_argument('--bench', default='both', choices=['both', 'inference', 'train'])
    p.add_argument('--batch-size', '-b', type=int, default=128)
    p.add_argument('--img-size', type=int, default=None, help='default: each model\'s pretrained cfg input size')
    p.add_argument('--warmup', type=int, default=50, help='untimed iterations')
    p.add_argument('--iters', type=int, default=30, help='timed iterations')
    p.add_argument('--amp', action='store_true', help='autocast (else fp32)')
    p.add_argument('--amp-dtype', default='bfloat16', choices=['bfloat16', 'float16'])
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--torchcompile', nargs='?', const='inductor', default=None,
                   help='torch.compile every model (peers too) with this backend; compile time is in the warm-up')
    p.add_argument('--cuda-graph', action='store_true',
                   help='capture each step (inference; train fwd+bwd) as one CUDA graph and time its replays, for '
                        'every model and peer alike: no host / launch overhead, the GPU work alone')
    p.add_argument('--no-flops', action='store_true')
    p.add_argument('--device', default=None)
    p.add_argument('--out', default=None, help='output prefix (writes .json/.md/.png); default benchmarks/results/'
                                                'models-<device>')
    return p


def expand_models(spec: str) -> List[str]:
    names: List[str] = []
    for item in [s.strip() for s in spec.split(',') if s.strip()]:
        if item == 'ours':
            found = sorted({n.split('.')[0] for n in common.our_model_names(pretrained=True)})
        elif any(c in item for c in '*?['):
            found = [n for n in timm.list_models() if fnmatch.fnmatch(n, item)]
            if not found:
                raise common.ToolError(f'pattern {item!r} matches no registered model')
        else:
            found = [common.check_model_name(item)]
        names += [n for n in found if n not in names]
    return names


def device_description(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)'


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _timed(step, device: torch.device, warmup: int, iters: int) -> float:
    """Seconds per iteration of ``step()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
        _sync(device)
    return (time.perf_counter() - start) / iters


def _graph_replay(step, device: torch.device, warmup: int):
    """Capture one call of ``step`` as a CUDA graph (after ``warmup`` (>= 3) calls on a side stream, which CUDA
    graph capture requires) and return the graph's ``replay``."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(max(warmup, 3)):
            step()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def _reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_mib(device: torch.device) -> Optional[float]:
    return torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == 'cuda' else None


def measure(name: str, args, device: torch.device, is_peer: bool) -> Dict[str, Any]:
    """One model's numbers; failures (e.g. out of memory) are recorded in ``error``, not raised."""
    cfg = common.pretrained_cfg_of(name)
    input_size = tuple(cfg.get('input_size', (3, 224, 224)))
    if args.img_size:
        input_size = (input_size[0], args.img_size, args.img_size)
    row: Dict[str, Any] = dict(model=name, peer=is_peer, input_size=list(input_size), batch_size=args.batch_size)
    model_kwargs = dict(img_size=input_size[-1]) if cfg.get('fixed_input_size') else {}
    try:
        meta_model = timm.create_model(name, device='meta', **model_kwargs)
        row['params_m'] = count_params(meta_model) / 1e6
        if not args.no_flops:
            row['gflops'] = count_flops(meta_model, input_size).gflops
        del meta_model
    except Exception as err:  # noqa: BLE001  (record and continue with the real model)
        row['flops_error'] = f'{type(err).__name__}: {err}'
    amp_dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
    # A captured graph replays the weight casts too: autocast's cast cache must not hand out tensors from outside it.
    autocast = ((lambda: torch.autocast(device.type, dtype=amp_dtype, cache_enabled=not args.cuda_graph))
                if args.amp else nullcontext)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    try:
        model = timm.create_model(name, **model_kwargs).to(device, memory_format=memory_format)
        row.setdefault('params_m', count_params(model) / 1e6)
        images = torch.randn((args.batch_size, *input_size), device=device).contiguous(memory_format=memory_format)
        run_model = torch.compile(model, backend=args.torchcompile) if args.torchcompile else model
        if args.bench in ('both', 'inference'):
            model.eval()
            _reset_memory(device)

            def infer_step():
                with torch.no_grad(), autocast():
                    run_model(images)
            if args.cuda_graph:
                infer_step = _graph_replay(infer_step, device, args.warmup)
            seconds = _timed(infer_step, device, args.warmup, args.iters)
            row.update(infer_img_s=args.batch_size / seconds, infer_ms=1e3 * seconds,
                       infer_mem_mib=_peak_memory_mib(device))
        if args.bench in ('both', 'train'):
            model.train()
            target = torch.randint(0, model.num_classes, (args.batch_size,), device=device)
            _reset_memory(device)

            def train_step():
                with autocast():
                    loss = F.cross_entropy(run_model(images).float(), target)
                loss.backward()
                model.zero_grad(set_to_none=True)
            if args.cuda_graph:
                train_step = _graph_replay(train_step, device, args.warmup)
            seconds = _timed(train_step, device, args.warmup, args.iters)
            row.update(train_img_s=args.batch_size / seconds, train_ms=1e3 * seconds,
                       train_mem_mib=_peak_memory_mib(device))
    except torch.OutOfMemoryError:
        row['error'] = f'out of memory at batch {args.batch_size}'
    except Exception as err:  # noqa: BLE001  (one broken model must not stop the run)
        row['error'] = f'{type(err).__name__}: {err}'
    finally:
        model = run_model = images = None  # noqa: F841
        _reset_memory(device)
    return row


# ----------------------------------------------------------------------------------------------------------------
# Reports

def _fmt(value: Optional[float], digits: int = 1) -> str:
    return '-' if value is None else f'{value:,.{digits}f}'


def markdown_table(report: Dict[str, Any]) -> str:
    rows = report['results']
    peers = [r for r in rows if r['peer'] and not r.get('error')]
    lines = [
        '# Model benchmark',
        '',
        f'Device: {report["device"]}; torch {report["torch"]}, timm {report["timm"]}; {report["date"]}.',
        f'Batch {report["batch_size"]}, {report["precision"]}, channels_last={report["channels_last"]}, torch.compile={report.get("torchcompile")}, '
        f'CUDA graphs={report.get("cuda_graph", False)}; '
        f'{report["warmup"]} warm-up + {report["iters"]} timed iterations. Train = fwd + bwd (no optimizer step).',
        f'GFLOPs at batch 1 in the papers\' convention (vmamba/flops.py). Command: `{report["command"]}`',
        '',
        '| model | params (M) | GFLOPs | input | infer img/s | train img/s | infer mem (MiB) | train mem (MiB) |',
        '|---|---:|---:|---|---:|---:|---:|---:|',
    ]
    for r in rows:
        name = f'{r["model"]} (peer)' if r['peer'] else r['model']
        if r.get('error'):
            lines.append(f'| {name} | {_fmt(r.get("params_m"), 2)} | {_fmt(r.get("gflops"), 3)} | '
                         f'{r["input_size"][-1]} | {r["error"]} | | | |')
            continue
        lines.append(
            f'| {name} | {_fmt(r.get("params_m"), 2)} | {_fmt(r.get("gflops"), 3)} | {r["input_size"][-1]} | '
            f'{_fmt(r.get("infer_img_s"))} | {_fmt(r.get("train_img_s"))} | {_fmt(r.get("infer_mem_mib"), 0)} | '
            f'{_fmt(r.get("train_mem_mib"), 0)} |')
    if peers:
        kinds = [k for k in ('infer', 'train') if any(f'{k}_img_s' in p for p in peers)]
        header = [f'{k} / {p["model"]}' for k in kinds for p in peers]
        lines += ['', 'Throughput relative to the peers (x > 1: faster than the peer):', '',
                  '| model | ' + ' | '.join(header) + ' |', '|---|' + '---:|' * len(header)]
        for r in rows:
            if r['peer'] or r.get('error'):
                continue
            cells = []
            for k in kinds:
                for p in peers:
                    ours, theirs = r.get(f'{k}_img_s'), p.get(f'{k}_img_s')
                    cells.append(f'{ours / theirs:.2f}x' if ours and theirs else '-')
            lines.append(f'| {r["model"]} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def plot(report: Dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rows = [r for r in report['results'] if r.get('params_m') and not r.get('error')]
    kinds = [k for k in ('infer', 'train') if any(r.get(f'{k}_img_s') for r in rows)]
    fig, axes = plt.subplots(1, max(len(kinds), 1), figsize=(6.5 * max(len(kinds), 1), 5), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for peer, style in ((False, dict(color='tab:blue', marker='o', label='vmamba zoo')),
                            (True, dict(color='tab:gray', marker='s', label='timm peers'))):
            pts = [r for r in rows if r['peer'] == peer and r.get(f'{kind}_img_s')]
            ax.scatter([r['params_m'] for r in pts], [r[f'{kind}_img_s'] for r in pts], **style)
            for r in pts:
                ax.annotate(r['model'], (r['params_m'], r[f'{kind}_img_s']), fontsize=7,
                            xytext=(3, 3), textcoords='offset points')
        ax.set_xlabel('params (M)')
        ax.set_ylabel(f'{"inference" if kind == "infer" else "train (fwd+bwd)"} img/s')
        ax.set_title(f'{report["device"]}, batch {report["batch_size"]}, {report["precision"]}', fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.iters < 1 or args.warmup < 0:
        raise common.ToolError('--iters must be >= 1 and --warmup >= 0')
    device = common.resolve_device(args.device)
    if args.cuda_graph and (device.type != 'cuda' or args.torchcompile):
        raise common.ToolError('--cuda-graph needs a CUDA device and no --torchcompile')
    models = expand_models(args.models)
    peers = [] if args.no_peers else [p for p in expand_models(args.peers) if p not in models]
    results = []
    for name, is_peer in [(m, False) for m in models] + [(p, True) for p in peers]:
        row = measure(name, args, device, is_peer)
        results.append(row)
        status = row.get('error') or (f'infer {_fmt(row.get("infer_img_s"))} img/s, '
                                      f'train {_fmt(row.get("train_img_s"))} img/s')
        print(f'{name:40s} {_fmt(row.get("params_m"), 2):>8s}M {_fmt(row.get("gflops"), 3):>7s} GFLOPs  {status}',
              flush=True)
    report = dict(
        device=device_description(device),
        device_type=device.type,
        torch=torch.__version__,
        timm=timm.__version__,
        date=datetime.now(timezone.utc).strftime('%Y-%m-%d'),
        batch_size=args.batch_size,
        precision=f'amp {args.amp_dtype}' if args.amp else 'fp32',
        channels_last=args.channels_last,
        torchcompile=args.torchcompile,
        cuda_graph=args.cuda_graph,
        warmup=args.warmup,
        iters=args.iters,
        command='python tools/benchmark.py ' + ' '.join(sys.argv[1:] if argv is None else argv),
        results=results,
    )
    out = Path(args.out) if args.out else common.REPO_ROOT / 'benchmarks' / 'results' / f'models-{device.type}'
    out.parent.mkdir(parents=True, exist_ok=True)
    common.write_json(out.with_suffix('.json'), report)
    out.with_suffix('.md').write_text(markdown_table(report))
    plot(report, out.with_suffix('.png'))
    print(f'wrote {out.with_suffix(".json")}, {out.with_suffix(".md")}, {out.with_suffix(".png")}')
    return report


if __name__ == '__main__':
    common.run_main(main)

"""Chunked scan kernels with the scans that run against the lane order as segments (``suffix_segment=None``: the
positions each thread holds) vs Triton's reverse ``associative_scan`` (``suffix_segment=0``, the default), in one
run on one GPU, alternating rounds.

    PYTHONPATH=. python benchmarks/suffix_scan_gpu.py [--rounds 1] [--cases vmamba_t_stage1 vmamba_t_stage3]

For each case (mixed directions (F, F, T, T) as the cross scan passes them): the inference forward at its default
tile (and at 256 positions), the backward with its pre-pass, and the training path (forward keeping the chunk
states + backward without pre-pass), as ms (do_bench median, L2 flushed) and % of the device-to-device copy
bandwidth for the minimal bytes (``bench_scan.minimal_bytes``). Before timing, each variant's forward and
gradients are checked against the reference at a reduced batch. Writes ``$OUT/suffix_scan.{md,json}``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from dataclasses import replace

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_scan  # noqa: E402  (the cases, inputs, byte counts and the reference check)

scan = bench_scan._triton_scan
ScanConfig = scan.ScanConfig
GRAD_NAMES = bench_scan.GRAD_NAMES


def variants(case):
    """(label, forward config, backward config) for the case's default tiles."""
    per_group = case['channels'] // case['groups']
    fwd = scan.default_config('fwd', case['num_states'], case['length'], per_group)
    bwd = scan.default_config('bwd', case['num_states'], case['length'], per_group)
    out = [('triton-reverse', replace(fwd, suffix_segment=0), replace(bwd, suffix_segment=0)),
           ('segments', replace(fwd, suffix_segment=None), replace(bwd, suffix_segment=None)),
           # the training path's forward at the inference tile, writing the backward's chunk states from inside it
           ('segments + states in tile', replace(fwd, suffix_segment=None, chunk_states_in_tile=True),
            replace(bwd, suffix_segment=None)),
           ('triton-reverse + states in tile', replace(fwd, suffix_segment=0, chunk_states_in_tile=True),
            replace(bwd, suffix_segment=0))]
    if fwd.block_l > 256:
        out.append(('segments fwd256', replace(fwd, block_l=256, suffix_segment=None), None))
    if bwd.block_d == 1 and bwd.block_l == 128 and case['num_states'] == 1:
        # Longer backward chunks: 8 positions a thread (one 16-byte fp16 load a row), half the chunk loop's carries
        # and per-chunk shuffles per position, more registers; and the same 256 positions over 2 warps.
        out += [('segments bwd256', None, replace(bwd, block_l=256, suffix_segment=None)),
                ('segments bwd256 2 warps', None, replace(bwd, block_l=256, num_warps=2, suffix_segment=None))]
    if case['length'] % 16:
        # Rows without proven alignment: the backward's default tile is (2 channels, 64), where segments do not
        # compile, and auto keeps Triton's scan for scalar loads; one-row tiles with forced segments (they compile:
        # 1,088 against 1,096 SASS instructions, 91 against 192 shuffles) against the same tile without.
        one_row = ScanConfig(block_d=1, block_l=128, num_warps=1)
        out += [('triton-reverse bwd 1x128', None, replace(one_row, suffix_segment=0)),
                ('segments bwd 1x128 seg4', None, replace(one_row, suffix_segment=4))]
    return out


def train_path_error(case, inputs, grad_out, fwd_config, bwd_config):
    """Largest relative-RMS difference between the backward given the forward's chunk states (the training path)
    and the backward that recomputes them in its pre-pass, over all gradients."""
    args = [inputs[k] for k in GRAD_NAMES]
    rev = case['reverse']
    _, _, states = scan.selective_scan_fwd(*args, True, rev, 0, case['out_dtype'], config=fwd_config,
                                           save_chunk_states=True)
    given = scan.selective_scan_bwd(grad_out, None, *args, True, rev, 0, chunk_states=states, config=bwd_config)
    recomputed = scan.selective_scan_bwd(grad_out, None, *args, True, rev, 0, config=bwd_config)
    return max(bench_scan.rel_rms(a, b) for a, b in zip(given, recomputed) if a is not None)


def time_variant(case, inputs, grad_out, fwd_config, bwd_config):
    args = [inputs[k] for k in GRAD_NAMES]
    rev, out_dtype = case['reverse'], case['out_dtype']
    result = {}
    if fwd_config is not None:
        result['fwd_ms'] = do_bench(lambda: scan.selective_scan_fwd(*args, True, rev, 0, out_dtype, config=fwd_config),
                                    warmup=25, rep=200, return_mode='median')
    if bwd_config is not None:
        result['bwd_ms'] = do_bench(lambda: scan.selective_scan_bwd(grad_out, None, *args, True, rev, 0,
                                                                     config=bwd_config),
                                    warmup=25, rep=200, return_mode='median')
    if fwd_config is not None and bwd_config is not None:
        def train():
            _, _, states = scan.selective_scan_fwd(*args, True, rev, 0, out_dtype, config=fwd_config,
                                                   save_chunk_states=True)
            return scan.selective_scan_bwd(grad_out, None, *args, True, rev, 0, chunk_states=states,
                                           config=bwd_config)
        result['train_ms'] = do_bench(train, warmup=25, rep=200, return_mode='median')
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rounds', type=int, default=1)
    parser.add_argument('--cases', nargs='*', default=['vmamba_t_stage1', 'vmamba_t_stage3'])
    opts = parser.parse_args()
    name = torch.cuda.get_device_name()
    copy_gbs, _ = bench_scan.copy_bandwidth()
    header = (f'Device: {name}, torch {torch.__version__}, triton {triton.__version__}; '
              f'{datetime.date.today()}; copy bandwidth {copy_gbs:.0f} GB/s')
    print(header, flush=True)
    rows, report = [], dict(device=name, copy_gbs=copy_gbs, cases={})
    for case_name in opts.cases:
        case = bench_scan.CASES[case_name]
        inputs = bench_scan.make_inputs(case['batch'], case['channels'], case['length'], case['num_states'],
                                        case['groups'], case['z'], case['dtype'])
        fwd_bytes = bench_scan.minimal_bytes(inputs, case['out_dtype'], False)
        all_bytes = bench_scan.minimal_bytes(inputs, case['out_dtype'], True)
        args = [inputs[k] for k in GRAD_NAMES]
        out, _ = scan.selective_scan_fwd(*args, True, case['reverse'], 0, case['out_dtype'])
        grad_out = torch.randn_like(out)
        results, checked_variants = {}, []
        for label, fwd_config, bwd_config in variants(case):
            try:
                checked = bench_scan.check_case(f'{case_name} {label}', case, 2, fwd_config=fwd_config,
                                                bwd_config=bwd_config)
            except Exception as exc:  # a variant that does not compile or does not match is reported, not timed
                print(f'  {case_name} {label}: FAILED {type(exc).__name__}: {str(exc)[:300]}', flush=True)
                report.setdefault('failed', []).append(f'{case_name} {label}: {type(exc).__name__}')
                continue
            if checked['status'] != 'PASS':
                report.setdefault('failed', []).append(f"{case_name} {label}: {checked['status']}")
                continue
            error = max(checked['errors'].values())
            if fwd_config is not None and bwd_config is not None:
                train_error = train_path_error(case, inputs, grad_out, fwd_config, bwd_config)
                print(f'  {case_name} {label}: training path (given chunk states) vs pre-pass: {train_error:.1e}',
                      flush=True)
                if train_error > 1e-3:
                    report.setdefault('failed', []).append(f'{case_name} {label}: training path {train_error:.1e}')
                    continue
            results[label] = dict(error=error, runs=[])
            checked_variants.append((label, fwd_config, bwd_config))
        for r in range(opts.rounds):
            for label, fwd_config, bwd_config in checked_variants:
                timing = time_variant(case, inputs, grad_out, fwd_config, bwd_config)
                results[label]['runs'].append(timing)
                print(f'  round {r} {case_name} {label}: ' + ', '.join(f'{k} {v:.4f}' for k, v in timing.items()),
                      flush=True)
        for label, res in results.items():
            best = {k: min(run[k] for run in res['runs']) for k in res['runs'][0]}
            res['best'] = best

            def pct(nbytes, ms):
                return f'{100 * nbytes / (ms * 1e-3) / 1e9 / copy_gbs:.0f}%'
            rows.append(f"| {case_name} | {label} | {res['error']:.1e} | "
                        + (f"{best['fwd_ms']:.4f} ({pct(fwd_bytes, best['fwd_ms'])})" if 'fwd_ms' in best else '-')
                        + ' | ' + (f"{best['bwd_ms']:.4f}" if 'bwd_ms' in best else '-')
                        + ' | ' + (f"{best['train_ms']:.4f} ({pct(all_bytes, best['train_ms'])})"
                                   if 'train_ms' in best else '-') + ' |')
        report['cases'][case_name] = dict(results=results, fwd_bytes=fwd_bytes, fwd_bwd_bytes=all_bytes)
    table = ('| case | variant | worst rel-RMS err | fwd ms (% copy) | bwd ms (with pre-pass) | '
             'train fwd+bwd ms (% copy) |\n|---|---|---|---|---|---|\n' + '\n'.join(rows))
    failed = ''.join(f'\n- not timed: {line}' for line in report.get('failed', []))
    text = (f'# Segmented suffix scans vs Triton reverse scans\n\n{header}; best of {opts.rounds} rounds\n\n{table}\n'
            f'{failed}\n')
    out_dir = os.environ.get('OUT')
    if out_dir:
        with open(os.path.join(out_dir, 'suffix_scan.md'), 'w') as f:
            f.write(text)
        with open(os.path.join(out_dir, 'suffix_scan.json'), 'w') as f:
            json.dump(report, f, indent=1, default=str)
    print(text)


if __name__ == '__main__':
    main()

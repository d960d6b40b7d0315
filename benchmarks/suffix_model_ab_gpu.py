"""Model-level A/B of the segmented suffix scans in one process on one GPU: each model's CUDA-graph inference and
training step (``tools/benchmark.py``'s ``measure``) with the chunked scan kernels' segmented suffix scans
(``suffix_segment=None``), with the default ``suffix_segment=0`` (Triton's reverse ``associative_scan``), and
with segments plus the training forward at the inference tile (``chunk_states_in_tile``), alternating, next to a
peer.

    PYTHONPATH=. python benchmarks/suffix_model_ab_gpu.py [--models vmamba_tiny_s1l8] [--peer convnext_tiny]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.insert(0, os.path.join(ROOT, 'tools'))
import benchmark  # noqa: E402  (tools/benchmark.py)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scan_variants import scan_variant  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', default='vmamba_tiny_s1l8')
    parser.add_argument('--peer', default='convnext_tiny')
    parser.add_argument('--rounds', type=int, default=1)
    opts, rest = parser.parse_known_args()
    args = benchmark.build_parser().parse_args(
        ['--amp', '--amp-dtype', 'float16', '--cuda-graph', '--no-flops', '-b', '128', '--warmup', '20',
         '--iters', '30'] + rest)
    device = torch.device('cuda')
    print(benchmark.device_description(device), flush=True)
    rows = []
    for r in range(opts.rounds):
        for model in opts.models.split(','):
            for label, variant in (('segments', 'segments'), ('triton-reverse', 'default'),
                                   ('segments + states in tile', 'segments-in-tile')):
                with scan_variant(variant):
                    row = benchmark.measure(model, args, device, False)
                rows.append((f'{model} {label}', row))
                print(f"round {r} {model} {label}: infer {row.get('infer_img_s', 0):,.0f} img/s, train "
                      f"{row.get('train_img_s', 0):,.0f} img/s {row.get('error', '')}", flush=True)
    if opts.peer:
        row = benchmark.measure(opts.peer, args, device, True)
        rows.append((f'{opts.peer} (peer)', row))
        print(f"{opts.peer}: infer {row.get('infer_img_s', 0):,.0f} img/s, train {row.get('train_img_s', 0):,.0f} "
              f"img/s {row.get('error', '')}", flush=True)
    print('\n| model / scan | CUDA graph infer img/s | train img/s |\n|---|---:|---:|')
    for label, row in rows:
        print(f"| {label} | {row.get('infer_img_s', 0):,.0f} | {row.get('train_img_s', 0):,.0f} |")


if __name__ == '__main__':
    main()

#!/usr/bin/env python3
"""Print the parameters and FLOPs of models (ours by default) at their pretrained-cfg resolution.

Examples::

    python tools/flops.py                                  # every architecture of ours with weights
    python tools/flops.py --models vmamba_tiny_s1l8,convnext_tiny --img-size 256
    python tools/flops.py --models 'vim_*' --convention torch --json flops.json

FLOPs follow the papers' convention by default (fvcore rules: 1 FLOP per multiply-accumulate, norms counted, the
selective scan as 9*B*L*D*N + B*D*L; see vmamba/flops.py). Models are built on the ``meta`` device: no weights are
downloaded and nothing is computed.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as common  # noqa: E402

import timm  # noqa: E402

from benchmark import expand_models  # noqa: E402
from vmamba.flops import CONVENTIONS, count_flops, count_params  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', default='ours', help="comma-separated names or patterns; 'ours' = our architectures")
    p.add_argument('--img-size', type=int, default=None, help="default: each model's pretrained cfg input size")
    p.add_argument('--batch-size', '-b', type=int, default=1)
    p.add_argument('--convention', default='paper', choices=CONVENTIONS)
    p.add_argument('--model-kwargs', nargs='*', default=None, help='extra constructor kwargs, key=value ...')
    p.add_argument('--json', default=None, help='also write the table as JSON')
    return p


def flops_row(name: str, img_size: Optional[int], batch_size: int, convention: str,
              model_kwargs: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Params and FLOPs of one model (built on the meta device)."""
    cfg = common.pretrained_cfg_of(name)
    input_size = tuple(cfg.get('input_size', (3, 224, 224)))
    if img_size:
        input_size = (input_size[0], img_size, img_size)
    kwargs = dict(model_kwargs or {})
    if cfg.get('fixed_input_size'):
        kwargs.setdefault('img_size', input_size[-1])
    model = timm.create_model(name, device='meta', **kwargs)
    count = count_flops(model, input_size, batch_size=batch_size, convention=convention)
    return dict(model=name, input_size=list(input_size), params_m=count_params(model) / 1e6, gflops=count.gflops,
                scan_gflops=count.scan / 1e9, convention=convention,
                by_op_gflops={k: v / 1e9 for k, v in sorted(count.by_op.items())})


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    args = build_parser().parse_args(argv)
    rows = []
    print(f'{"model":40s} {"input":>7s} {"params (M)":>11s} {"GFLOPs":>9s} {"scan GFLOPs":>12s}')
    for name in expand_models(args.models):
        row = flops_row(name, args.img_size, args.batch_size, args.convention, common.parse_kwargs(args.model_kwargs))
        rows.append(row)
        print(f'{name:40s} {row["input_size"][-1]:>7d} {row["params_m"]:>11.3f} {row["gflops"]:>9.3f} '
              f'{row["scan_gflops"]:>12.3f}', flush=True)
    if args.json:
        common.write_json(args.json, rows)
    return rows


if __name__ == '__main__':
    common.run_main(main)

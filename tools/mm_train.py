#!/usr/bin/env python
"""Train an mmseg / mmdet config of configs/seg or configs/det with mmengine's Runner.

    python tools/mm_train.py configs/seg/upernet_vmamba_tiny_s1l8_ade20k_512x512_160k.py \\
        --data-root data/ade/ADEChallengeData2016 --mmcv-ops-compat \\
        --cfg-options model.backbone.pretrained=vmamba_tiny_s1l8.safetensors
    # multi-GPU: torchrun --nproc_per_node 8 tools/mm_train.py CONFIG --launcher pytorch ...

``--resume`` continues from the latest checkpoint in the work dir (or a given file). Resuming unpickles that one
file fully (mmengine checkpoints hold non-tensor objects that torch >= 2.6 refuses): resume only from checkpoints you
wrote. ``--load-from`` (e.g. converted official seg/det weights) and pretrained weights stay tensors-only.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
from vmamba.adapters.cli import add_common_args, explain_missing_mmcv_ops, load_config  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='config file')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help="resume from the latest checkpoint of the work dir ('auto', the default when the flag "
                             "has no value) or from the given checkpoint")
    parser.add_argument('--load-from', help='initialise the whole model from this checkpoint (tensors only)')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision (AmpOptimWrapper)')
    add_common_args(parser)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = load_config(args)
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.load_from:
        cfg.load_from = args.load_from
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    from vmamba.adapters import TrustedResumeRunner

    with explain_missing_mmcv_ops():
        runner = TrustedResumeRunner.from_cfg(cfg)
        runner.train()


if __name__ == '__main__':
    main()

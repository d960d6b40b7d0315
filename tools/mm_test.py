#!/usr/bin/env python
"""Evaluate a checkpoint on an mmseg / mmdet config of configs/seg or configs/det with mmengine's Runner.

    python tools/mm_test.py configs/seg/upernet_vmamba_tiny_s1l8_ade20k_512x512_160k.py CHECKPOINT \\
        --data-root data/ade/ADEChallengeData2016 --mmcv-ops-compat [--tta]

The checkpoint is loaded tensors-only: converted official weights (``vmamba.adapters.convert_official_mm_checkpoint``)
load as they are. A checkpoint written by tools/mm_train.py holds non-tensor training state; pass
``--trust-checkpoint`` to unpickle that one file fully (only for files you produced).
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
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='unpickle the checkpoint fully (needed for mmengine training checkpoints on torch>=2.6)')
    parser.add_argument('--tta', action='store_true', help="test-time augmentation (the config's tta_model / "
                                                           "tta_pipeline; ADE20K: 6 scales + flip)")
    add_common_args(parser)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = load_config(args)
    cfg.load_from = args.checkpoint
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise SystemExit(f'{args.config} defines no tta_model / tta_pipeline')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model

    from mmengine.runner import Runner

    from vmamba.adapters import trusted_checkpoint

    with explain_missing_mmcv_ops():
        runner = Runner.from_cfg(cfg)
        if args.trust_checkpoint:
            with trusted_checkpoint(args.checkpoint):
                return runner.test()
        return runner.test()


if __name__ == '__main__':
    main()

"""Command-line helpers of tools/mm_train.py and tools/mm_test.py: shared arguments and config edits."""
from __future__ import annotations

import argparse
import contextlib
import os
from typing import Iterator

from mmengine.config import Config, DictAction


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--data-root', help='dataset root (ADE20K: .../ADEChallengeData2016, COCO: .../coco/)')
    parser.add_argument('--work-dir', help='directory for logs and checkpoints (default: work_dirs/<config name>)')
    parser.add_argument('--mmcv-ops-compat', action='store_true',
                        help='serve the mmcv ops UperNet / Mask R-CNN need from torchvision (mmcv-lite installs; '
                             'see docs/mm.md)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config entries (key=value)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def load_config(args: argparse.Namespace) -> Config:
    """Read the config, apply --cfg-options / --data-root / --work-dir / --launcher."""
    if args.mmcv_ops_compat:
        import vmamba.adapters.mmcv_ops_compat  # noqa: F401  (must precede any import of mmcv.ops)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or os.path.join(
        'work_dirs', os.path.splitext(os.path.basename(args.config))[0])
    if args.data_root:
        set_data_root(cfg, args.data_root)
    return cfg


def set_data_root(cfg: Config, data_root: str) -> None:
    """Point every dataloader (and COCO evaluators' annotation files) at ``data_root``."""
    data_root = data_root.rstrip('/') + '/'
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(name)
        if not loader:
            continue
        dataset = loader['dataset']
        while 'dataset' in dataset:  # wrappers such as RepeatDataset
            dataset = dataset['dataset']
        dataset['data_root'] = data_root
    for name in ('val_evaluator', 'test_evaluator'):
        evaluator = cfg.get(name)
        if isinstance(evaluator, dict) and evaluator.get('ann_file'):
            ann = evaluator['ann_file']
            marker = 'annotations/'
            evaluator['ann_file'] = data_root + ann[ann.index(marker):] if marker in ann else ann


@contextlib.contextmanager
def explain_missing_mmcv_ops() -> Iterator[None]:
    """Turn mmcv-lite's missing compiled ops (``ModuleNotFoundError: mmcv._ext``) into one exit message naming the
    two fixes; other errors pass through."""
    try:
        yield
    except ModuleNotFoundError as err:
        if err.name == 'mmcv._ext':
            raise SystemExit(f'{err}\nmmcv-lite has no compiled ops: rerun with --mmcv-ops-compat (torchvision-backed '
                             f'nms / roi_align) or install compiled mmcv==2.1.0 (docs/mm.md).') from err
        raise

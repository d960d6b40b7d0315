#!/usr/bin/env python3
"""Train an image classifier (any timm-registered model, ours included) on an ImageFolder dataset or the embedded
digits dataset.

Examples::

    python tools/train.py                       # embedded default: a small VMamba on scikit-learn digits (CPU, ~1-2 min)
    python tools/train.py --config vmamba_tiny --data-dir /data/imagenet          # official VMamba-T recipe
    torchrun --nproc_per_node=8 tools/train.py --config vim_small --data-dir /data/imagenet
    python tools/train.py --resume output/train/<run>/last.pth                   # continue exactly where it stopped

Without ``--data-dir`` (and without ``--config``) the recipe ``configs/train/digits.yaml`` is used. Values from
``--config FILE`` are defaults; command-line flags override them. Multi-process training uses torchrun + DDP (NCCL on
GPU, gloo on CPU). Each epoch writes ``summary.csv``, ``log.json``, ``steps.csv`` (per-step loss and lr) and
``last.pth`` (+ ``best.pth``) in ``--output``; checkpoints hold tensors and plain Python values only and are written
atomically.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as common  # noqa: E402  (puts the repository on sys.path and imports vmamba)

from timm.data import Mixup, create_dataset, create_transform, resolve_data_config  # noqa: E402
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy  # noqa: E402
from timm.optim import create_optimizer_v2  # noqa: E402
from timm.scheduler import create_scheduler_v2  # noqa: E402
from timm.utils import ModelEmaV3, NativeScaler, dispatch_clip_grad, random_seed  # noqa: E402
from timm.utils.distributed import init_distributed_device_so  # noqa: E402

from vmamba.data import DIGITS_MEAN, DIGITS_NUM_CLASSES, DIGITS_STD, DigitsDataset, SyntheticImages  # noqa: E402
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # noqa: E402

CHECKPOINT_VERSION = 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', '-c', default=None, help='recipe YAML (a path or a name in configs/train/)')
    g = p.add_argument_group('data')
    g.add_argument('--data-dir', default=None, help='ImageNet-style root with <train-split>/ and <val-split>/ class '
                                                    'folders; omit for the embedded digits dataset')
    g.add_argument('--synthetic', type=int, default=None, metavar='N',
                   help='N random ImageNet-shaped training images (throughput / scaling runs; val gets N // 10)')
    g.add_argument('--train-split', default='train')
    g.add_argument('--val-split', default='val')
    g.add_argument('--num-classes', type=int, default=None, help='default: number of class folders (digits: 10)')
    g.add_argument('--img-size', type=int, default=None, help='train/eval resolution (default: the model cfg)')
    g.add_argument('--crop-pct', type=float, default=None)
    g.add_argument('--interpolation', default='')
    g.add_argument('--workers', '-j', type=int, default=4, help='data loader processes per rank')
    g.add_argument('--max-shift', type=int, default=2, help='digits: random translation in pixels')
    g = p.add_argument_group('model')
    g.add_argument('--model', default=None, help='registered model name, e.g. vmamba_tiny_s1l8')
    g.add_argument('--model-kwargs', nargs='*', default=None, help='extra constructor kwargs, key=value ...')
    g.add_argument('--pretrained', action='store_true', help='start from the registered pretrained weights')
    g.add_argument('--pretrained-path', default=None, help='start from a local weight file (family filter applies)')
    g.add_argument('--drop', type=float, default=None, help='dropout before the classifier')
    g.add_argument('--drop-path', type=float, default=None, help='stochastic depth rate')
    g.add_argument('--layer-shuffle-prob', type=float, default=None,
                   help='ShuffleMamba layer-wise token shuffle (plain models such as Vim / LBVim)')
    g.add_argument('--grad-checkpointing', action='store_true')
    g.add_argument('--channels-last', action='store_true')
    g.add_argument('--torchcompile', nargs='?', const='inductor', default=None, help='torch.compile backend')
    g = p.add_argument_group('optimisation')
    g.add_argument('--batch-size', '-b', type=int, default=128, help='per process')
    g.add_argument('--epochs', type=int, default=300)
    g.add_argument('--opt', default='adamw')
    g.add_argument('--lr', type=float, default=None, help='absolute lr (overrides --lr-base scaling)')
    g.add_argument('--lr-base', type=float, default=5e-4, help='lr at a global batch of --lr-base-size')
    g.add_argument('--lr-base-size', type=int, default=512)
    g.add_argument('--weight-decay', type=float, default=0.05)
    g.add_argument('--momentum', type=float, default=0.9)
    g.add_argument('--opt-eps', type=float, default=None)
    g.add_argument('--layer-decay', type=float, default=None, help='layer-wise lr decay (uses group_matcher)')
    g.add_argument('--clip-grad', type=float, default=None)
    g.add_argument('--clip-mode', default='norm', choices=['norm', 'value', 'agc'])
    g.add_argument('--sched', default='cosine')
    g.add_argument('--warmup-epochs', type=float, default=5)
    g.add_argument('--warmup-lr', type=float, default=1e-6)
    g.add_argument('--min-lr', type=float, default=1e-5)
    g.add_argument('--cooldown-epochs', type=int, default=0)
    g.add_argument('--amp', action='store_true', help='mixed precision (autocast)')
    g.add_argument('--amp-dtype', default='bfloat16', choices=['bfloat16', 'float16'])
    g = p.add_argument_group('augmentation and regularisation')
    g.add_argument('--aa', default=None, help="RandAugment / AutoAugment policy, e.g. 'rand-m9-mstd0.5-inc1'")
    g.add_argument('--color-jitter', type=float, default=0.4)
    g.add_argument('--reprob', type=float, default=0.0, help='random erasing probability')
    g.add_argument('--remode', default='pixel')
    g.add_argument('--hflip', type=float, default=0.5)
    g.add_argument('--mixup', type=float, default=0.0)
    g.add_argument('--cutmix', type=float, default=0.0)
    g.add_argument('--mixup-prob', type=float, default=1.0)
    g.add_argument('--mixup-switch-prob', type=float, default=0.5)
    g.add_argument('--mixup-mode', default='batch')
    g.add_argument('--smoothing', type=float, default=0.1)
    g.add_argument('--model-ema', action='store_true')
    g.add_argument('--model-ema-decay', type=float, default=0.9999)
    g.add_argument('--model-ema-warmup', action='store_true')
    g = p.add_argument_group('run')
    g.add_argument('--output', default=None, help='run directory (default output/train/<time>-<model>)')
    g.add_argument('--resume', default=None, help='checkpoint to continue from (last.pth)')
    g.add_argument('--stop-after-epoch', type=int, default=None,
                   help='exit after this many finished epochs (the schedule still spans --epochs); resume later')
    g.add_argument('--steps-per-epoch', type=int, default=None, help='cap on optimizer steps per epoch')
    g.add_argument('--seed', type=int, default=42)
    g.add_argument('--device', default=None, help='default: cuda if available, else cpu')
    g.add_argument('--no-progress', action='store_true', help='no progress bar')
    return p


# ----------------------------------------------------------------------------------------------------------------
# Data

def build_datasets(args, model) -> Dict[str, Any]:
    """Train and val datasets plus what the model needs to know about them."""
    if args.synthetic is not None:
        if args.data_dir is not None:
            raise common.ToolError('--synthetic and --data-dir are mutually exclusive')
        img_size = args.img_size or 224
        num_classes = args.num_classes or 1000
        train = SyntheticImages(args.synthetic, img_size, num_classes, seed=args.seed)
        val = SyntheticImages(max(1, args.synthetic // 10), img_size, num_classes, seed=args.seed + 1)
        return dict(train=train, val=val, num_classes=num_classes, dataset='synthetic',
                    data_config=dict(input_size=(3, img_size, img_size), mean=IMAGENET_DEFAULT_MEAN,
                                     std=IMAGENET_DEFAULT_STD))
    if args.data_dir is None:
        img_size = args.img_size or 32
        train = DigitsDataset('train', image_size=img_size, max_shift=args.max_shift)
        val = DigitsDataset('val', image_size=img_size)
        num_classes = DIGITS_NUM_CLASSES
        return dict(train=train, val=val, num_classes=num_classes, dataset='digits',
                    data_config=dict(input_size=(3, img_size, img_size), mean=DIGITS_MEAN, std=DIGITS_STD))
    train_dir = common.check_image_folder(args.data_dir, args.train_split)
    val_dir = common.check_image_folder(args.data_dir, args.val_split)
    train_classes, val_classes = common.image_folder_classes(train_dir), common.image_folder_classes(val_dir)
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))[:5]
        only_val = sorted(set(val_classes) - set(train_classes))[:5]
        raise common.ToolError(f'{train_dir} has {len(train_classes)} classes and {val_dir} {len(val_classes)}; '
                               f'they must match (only in train: {only_train}, only in val: {only_val})')
    data_config = resolve_data_config(
        dict(img_size=args.img_size, crop_pct=args.crop_pct, interpolation=args.interpolation or None), model=model)
    train = create_dataset('', root=args.data_dir, split=args.train_split, is_training=True)
    val = create_dataset('', root=args.data_dir, split=args.val_split, is_training=False)
    train.transform = create_transform(
        data_config['input_size'], is_training=True, hflip=args.hflip, color_jitter=args.color_jitter,
        auto_augment=args.aa, interpolation='random', mean=data_config['mean'], std=data_config['std'],
        re_prob=args.reprob, re_mode=args.remode)
    val.transform = create_transform(**data_config, is_training=False)
    return dict(train=train, val=val, num_classes=len(train_classes), dataset=str(args.data_dir),
                data_config=data_config)


def seed_worker(worker_id: int) -> None:
    # DataLoader seeds torch and `random` per worker from its base seed; numpy follows torch here.
    np.random.seed(torch.initial_seed() % 2 ** 32)


# ----------------------------------------------------------------------------------------------------------------
# RNG state (tensors and plain types only, so checkpoints load with weights_only=True)

def rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    state = dict(
        torch=torch.get_rng_state(),
        numpy=dict(keys=torch.from_numpy(np_state[1].astype(np.int64)), pos=int(np_state[2]),
                   has_gauss=int(np_state[3]), cached_gaussian=float(np_state[4])),
        python=json_tuple(random.getstate()),
    )
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state()
    return state


def json_tuple(value):
    return [json_tuple(v) for v in value] if isinstance(value, (tuple, list)) else value


def to_tuple(value):
    return tuple(to_tuple(v) for v in value) if isinstance(value, list) else value


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state['torch'])
    npy = state['numpy']
    np.random.set_state(('MT19937', npy['keys'].numpy().astype(np.uint32), npy['pos'], npy['has_gauss'],
                         npy['cached_gaussian']))
    random.setstate(to_tuple(state['python']))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])


# ----------------------------------------------------------------------------------------------------------------

class Trainer:
    """Holds the run's objects; ``fit()`` trains, evaluates and checkpoints epoch by epoch."""

    def __init__(self, args):
        self.args = args
        device = common.resolve_device(args.device)
        device_name = str(device) if device.type != 'cuda' else 'cuda'
        self.device_str, self.distributed, self.world_size, self.rank, self.local_rank = self._init_distributed(
            device_name)
        self.device = torch.device(self.device_str)
        self.is_primary = self.rank == 0
        random_seed(args.seed, self.rank)

        self.resume_state = common.load_checkpoint_file(args.resume) if args.resume else None
        if self.resume_state is not None:
            self._check_resume_args()

        common.check_model_name(args.model)
        # build once without a head size to resolve the data config, then the real model
        probe = common.create_model_from_args(args.model, num_classes=0, img_size=args.img_size,
                                              model_kwargs=common.parse_kwargs(args.model_kwargs), device='meta') \
            if args.data_dir is not None else None
        self.data = build_datasets(args, probe)
        num_classes = self.data['num_classes']
        if args.num_classes is not None and args.num_classes != num_classes:
            raise common.ToolError(f'--num-classes {args.num_classes} but the dataset has {num_classes} classes '
                                   f'({self.data["dataset"]})')
        self.num_classes = num_classes
        self.model = common.create_model_from_args(
            args.model, num_classes=num_classes, pretrained=args.pretrained, pretrained_path=args.pretrained_path,
            img_size=self.data['data_config']['input_size'][-1], model_kwargs=common.parse_kwargs(args.model_kwargs),
            drop_rate=args.drop, drop_path_rate=args.drop_path,
            layer_shuffle_prob=args.layer_shuffle_prob or None)
        if args.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.model.to(self.device)
        if args.channels_last:
            self.model.to(memory_format=torch.channels_last)

        self.global_batch = args.batch_size * self.world_size
        self.lr = args.lr if args.lr is not None else args.lr_base * self.global_batch / args.lr_base_size
        opt_kwargs = dict(eps=args.opt_eps) if args.opt_eps is not None else {}
        self.optimizer = create_optimizer_v2(
            self.model, opt=args.opt, lr=self.lr, weight_decay=args.weight_decay, momentum=args.momentum,
            layer_decay=args.layer_decay, **opt_kwargs)

        self.amp_dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
        self.scaler = NativeScaler(device=self.device.type) if args.amp and self.amp_dtype == torch.float16 else None

        self.model_ema = ModelEmaV3(self.model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup) \
            if args.model_ema else None

        self.train_loader, self.train_sampler, self.val_loader = self._build_loaders()
        updates_per_epoch = len(self.train_loader)
        if args.steps_per_epoch:
            updates_per_epoch = min(updates_per_epoch, args.steps_per_epoch)
        if updates_per_epoch < 1:
            raise common.ToolError(f'the training set ({len(self.data["train"])} images) is smaller than one global '
                                   f'batch ({self.global_batch}); lower --batch-size')
        self.updates_per_epoch = updates_per_epoch
        self.scheduler, self.num_epochs = create_scheduler_v2(
            self.optimizer, sched=args.sched, num_epochs=args.epochs, warmup_epochs=args.warmup_epochs,
            warmup_lr=args.warmup_lr, min_lr=args.min_lr, cooldown_epochs=args.cooldown_epochs,
            step_on_epochs=False, updates_per_epoch=updates_per_epoch)

        self.mixup = None
        if args.mixup > 0 or args.cutmix > 0:
            self.mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                               switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                               label_smoothing=args.smoothing, num_classes=num_classes)
            self.train_loss_fn = SoftTargetCrossEntropy()
        elif args.smoothing > 0:
            self.train_loss_fn = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
        else:
            self.train_loss_fn = torch.nn.CrossEntropyLoss()

        self.train_model = self.model
        if args.torchcompile:
            self.train_model = torch.compile(self.train_model, backend=args.torchcompile)
        if self.distributed:
            self.train_model = DistributedDataParallel(
                self.train_model, device_ids=[self.local_rank] if self.device.type == 'cuda' else None)

        self.start_epoch, self.step, self.best_top1, self.history = 0, 0, None, []
        self.output_dir = self._output_dir()
        if self.resume_state is not None:
            self._restore(self.resume_state)
            self.resume_state = None

    # ----------------------------------------------------------------------------------------------------------
    def _init_distributed(self, device_name: str):
        info = init_distributed_device_so(device=device_name)
        return info['device'], info['distributed'], info['world_size'], info['global_rank'], info['local_rank']

    def _check_resume_args(self) -> None:
        saved = self.resume_state.get('args', {})
        if not isinstance(saved, dict) or 'model' not in saved:
            raise common.ToolError(f'{self.args.resume} is not a tools/train.py checkpoint (no saved args)')
        if self.args.model is None:
            self.args.model = saved['model']
        if saved['model'] != self.args.model:
            raise common.ToolError(f'--resume checkpoint is for model {saved["model"]!r}, not {self.args.model!r}')
        if saved.get('world_size', 1) != int(os.environ.get('WORLD_SIZE', 1)):
            print(f'warning: resuming a {saved.get("world_size")}-process run with {os.environ.get("WORLD_SIZE", 1)} '
                  f'processes; the data order and loss curve will differ', file=sys.stderr)

    def _output_dir(self) -> Path:
        if self.args.output:
            out = Path(self.args.output)
        elif self.args.resume:
            out = Path(self.args.resume).resolve().parent
        else:
            stamp = datetime.now().strftime('%Y%m%d-%H%M%S')
            out = common.REPO_ROOT / 'output' / 'train' / f'{stamp}-{self.args.model}'
        if self.is_primary:
            out.mkdir(parents=True, exist_ok=True)
        return out

    def _build_loaders(self):
        args = self.args
        workers = args.workers if args.data_dir is not None else 0
        sampler = DistributedSampler(self.data['train'], num_replicas=self.world_size, rank=self.rank,
                                     shuffle=True, seed=args.seed, drop_last=True)
        train_loader = DataLoader(
            self.data['train'], batch_size=args.batch_size, sampler=sampler, num_workers=workers, drop_last=True,
            pin_memory=self.device.type == 'cuda', worker_init_fn=seed_worker, persistent_workers=False)
        val_loader = DataLoader(
            common.shard(self.data['val'], self.rank, self.world_size), batch_size=args.batch_size,
            shuffle=False, num_workers=workers, pin_memory=self.device.type == 'cuda')
        return train_loader, sampler, val_loader

    def autocast(self):
        if not self.args.amp:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ----------------------------------------------------------------------------------------------------------
    def checkpoint(self, epoch: int, metrics: Dict[str, Any]) -> Dict[str, Any]:
        rng = [rng_state()]
        if self.distributed:
            gathered: List[Any] = [None] * self.world_size
            dist.all_gather_object(gathered, rng[0])
            rng = gathered
        args = common.json_safe(vars(self.args))
        args['world_size'] = self.world_size
        return dict(
            version=CHECKPOINT_VERSION,
            arch=self.args.model,
            epoch=epoch,
            step=self.step,
            model=self.model.state_dict(),
            model_ema=self.model_ema.module.state_dict() if self.model_ema is not None else None,
            optimizer=self.optimizer.state_dict(),
            scheduler=common.json_safe(self.scheduler.state_dict()),
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            rng=rng,
            best_top1=self.best_top1,
            history=common.json_safe(self.history),
            metrics=common.json_safe(metrics),
            num_classes=self.num_classes,
            data_config=common.json_safe(self.data['data_config']),
            args=args,
        )

    def _restore(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state['model'])
        if self.model_ema is not None:
            if state.get('model_ema') is None:
                raise common.ToolError('--model-ema is on but the checkpoint has no EMA weights')
            self.model_ema.module.load_state_dict(state['model_ema'])
        self.optimizer.load_state_dict(state['optimizer'])
        self.scheduler.load_state_dict(state['scheduler'])
        if self.scaler is not None and state.get('scaler') is not None:
            self.scaler.load_state_dict(state['scaler'])
        self.start_epoch = state['epoch'] + 1
        self.step = state['step']
        self.best_top1 = state.get('best_top1')
        self.history = list(state.get('history') or [])
        rng = state['rng']
        set_rng_state(rng[self.rank] if self.rank < len(rng) else rng[0])
        if self.is_primary:
            print(f'resumed from {self.args.resume}: epoch {self.start_epoch}, step {self.step}')

    # ----------------------------------------------------------------------------------------------------------
    def train_one_epoch(self, epoch: int) -> Dict[str, float]:
        args = self.args
        self.train_model.train()
        self.train_sampler.set_epoch(epoch)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        seen = 0
        from tqdm import tqdm
        progress = tqdm(total=self.updates_per_epoch, desc=f'epoch {epoch + 1}/{self.num_epochs}', leave=False,
                        disable=True if (args.no_progress or not self.is_primary) else None, dynamic_ncols=True)
        steps_file = open(self.output_dir / 'steps.csv', 'a', newline='') if self.is_primary else None
        steps_writer = csv.writer(steps_file) if steps_file else None
        if steps_file is not None and steps_file.tell() == 0:
            steps_writer.writerow(['step', 'epoch', 'loss', 'lr'])
        start = time.perf_counter()
        try:
            for batch_idx, (images, target) in enumerate(self.train_loader):
                if batch_idx >= self.updates_per_epoch:
                    break
                images = images.to(self.device, non_blocking=True)
                target = target.to(self.device, non_blocking=True)
                if args.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                if self.mixup is not None:
                    images, target = self.mixup(images, target)
                self.scheduler.step_update(num_updates=self.step)
                with self.autocast():
                    output = self.train_model(images)
                    loss = self.train_loss_fn(output.float(), target)
                if not math.isfinite(loss.item()):
                    raise RuntimeError(f'loss is {loss.item()} at step {self.step}; stopping')
                self.optimizer.zero_grad(set_to_none=True)
                if self.scaler is not None:
                    self.scaler(loss, self.optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                                parameters=self.model.parameters())
                else:
                    loss.backward()
                    if args.clip_grad is not None:
                        dispatch_clip_grad(self.model.parameters(), args.clip_grad, mode=args.clip_mode)
                    self.optimizer.step()
                if self.model_ema is not None:
                    self.model_ema.update(self.model, step=self.step)
                self.step += 1
                batch = images.shape[0]
                loss_value = loss.detach()
                loss_sum += loss_value.double() * batch
                seen += batch
                lr = self.optimizer.param_groups[-1]['lr']
                if steps_writer is not None:
                    steps_writer.writerow([self.step, epoch, f'{loss_value.item():.9g}', f'{lr:.9g}'])
                elapsed = time.perf_counter() - start
                progress.set_postfix(loss=f'{loss_value.item():.4f}', lr=f'{lr:.2e}',
                                     img_s=f'{seen * self.world_size / max(elapsed, 1e-9):.0f}')
                progress.update()
        finally:
            progress.close()
            if steps_file is not None:
                steps_file.close()
        if self.device.type == 'cuda':
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        totals = torch.tensor([loss_sum.item(), float(seen)], dtype=torch.float64, device=self.device)
        if self.distributed:
            dist.all_reduce(totals)
        return dict(train_loss=totals[0].item() / max(totals[1].item(), 1), train_images=int(totals[1].item()),
                    train_time_s=elapsed, train_img_s=totals[1].item() / max(elapsed, 1e-9),
                    lr=self.optimizer.param_groups[-1]['lr'])

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> Dict[str, float]:
        model.eval()
        totals = torch.zeros(4, dtype=torch.float64, device=self.device)  # loss sum, top1, top5, count
        for images, target in self.val_loader:
            images = images.to(self.device, non_blocking=True)
            target = target.to(self.device, non_blocking=True)
            if self.args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with self.autocast():
                output = model(images)
            output = output.float()
            top1, top5 = common.accuracy_counts(output, target, (1, 5))
            totals += torch.tensor([F.cross_entropy(output, target, reduction='sum').item(), top1, top5,
                                    target.numel()], dtype=torch.float64, device=self.device)
        if self.distributed:
            dist.all_reduce(totals)
        count = max(totals[3].item(), 1)
        return dict(val_loss=totals[0].item() / count, top1=100 * totals[1].item() / count,
                    top5=100 * totals[2].item() / count, val_images=int(totals[3].item()))

    def _log_epoch(self, record: Dict[str, Any]) -> None:
        summary = self.output_dir / 'summary.csv'
        new = not summary.exists()
        with open(summary, 'a', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=list(record))
            if new:
                writer.writeheader()
            writer.writerow(record)
        common.write_json(self.output_dir / 'log.json', dict(args=vars(self.args), epochs=self.history))

    def fit(self) -> Dict[str, Any]:
        args = self.args
        if self.is_primary:
            params = sum(p.numel() for p in self.model.parameters())
            print(f'model {args.model} ({params / 1e6:.2f}M params) | data {self.data["dataset"]}: '
                  f'{len(self.data["train"])} train / {len(self.data["val"])} val images, {self.num_classes} classes | '
                  f'{self.world_size} process(es) on {self.device.type}, global batch {self.global_batch}, '
                  f'lr {self.lr:.3g} | output {self.output_dir}', flush=True)
        last_epoch = self.num_epochs if args.stop_after_epoch is None else min(self.num_epochs, args.stop_after_epoch)
        metrics: Dict[str, Any] = {}
        for epoch in range(self.start_epoch, last_epoch):
            train_metrics = self.train_one_epoch(epoch)
            metrics = self.evaluate(self.model)
            record = dict(epoch=epoch + 1, step=self.step, **train_metrics, **metrics)
            if self.model_ema is not None:
                ema = self.evaluate(self.model_ema.module)
                record.update(ema_top1=ema['top1'], ema_top5=ema['top5'], ema_val_loss=ema['val_loss'])
            improved = self.best_top1 is None or metrics['top1'] > self.best_top1
            if improved:
                self.best_top1 = metrics['top1']
            self.history.append(record)
            state = self.checkpoint(epoch, record)  # collective (RNG gather): every rank calls it
            if self.is_primary:
                save = common.save_checkpoint_atomic
                save(state, self.output_dir / 'last.pth')
                if improved:
                    save(state, self.output_dir / 'best.pth')
                self._log_epoch(record)
                ema_text = f' | ema top-1 {record["ema_top1"]:.2f}%' if 'ema_top1' in record else ''
                print(f'epoch {epoch + 1}/{self.num_epochs}: train loss {record["train_loss"]:.4f} | '
                      f'val loss {record["val_loss"]:.4f} | top-1 {record["top1"]:.2f}% | top-5 {record["top5"]:.2f}%'
                      f'{ema_text} | lr {record["lr"]:.3g} | {record["train_img_s"]:.0f} img/s', flush=True)
        if self.is_primary and self.history:
            final = self.history[-1]
            print(f'validation accuracy ({self.data["dataset"]}, {final["val_images"]} images): '
                  f'top-1 {final["top1"]:.2f}%, top-5 {final["top5"]:.2f}% after {final["epoch"]} epochs '
                  f'(best top-1 {self.best_top1:.2f}%) | checkpoint {self.output_dir / "last.pth"}', flush=True)
        if self.distributed and self.history:
            final = self.history[-1]  # every rank holds the same all-reduced metrics
            print(f'[rank {self.rank}/{self.world_size}] all-reduced val top-1 {final["top1"]:.4f}% '
                  f'top-5 {final["top5"]:.4f}% ({final["val_images"]} images)', flush=True)
        return dict(history=self.history, output_dir=str(self.output_dir))

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    no_data = not any(a == '--data-dir' or a.startswith('--data-dir=') for a in argv)
    has_config = any(a in ('--config', '-c') or a.startswith('--config=') for a in argv)
    resuming = any(a == '--resume' or a.startswith('--resume=') for a in argv)
    default_config = common.DEFAULT_CONFIG if (no_data and not has_config and not resuming) else None
    args, _ = common.parse_with_config(parser, argv, default_config=default_config)
    if args.resume and not has_config:
        # a resumed run continues with the saved arguments; flags given now override them
        saved = common.load_checkpoint_file(args.resume).get('args')
        if not isinstance(saved, dict):
            raise common.ToolError(f'{args.resume} is not a tools/train.py checkpoint (no saved args)')
        dests = {a.dest for a in parser._actions}
        parser.set_defaults(**{k: v for k, v in saved.items() if k in dests and k not in ('resume', 'output', 'stop_after_epoch')})
        args = parser.parse_args(argv)
        args.config = saved.get('config')
    if args.model is None:
        raise common.ToolError('--model is required (or a --config recipe that sets it)')
    trainer = Trainer(args)
    try:
        return trainer.fit()
    finally:
        trainer.close()


if __name__ == '__main__':
    common.run_main(main)

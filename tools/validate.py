#!/usr/bin/env python3
"""Top-1 / top-5 accuracy of a model on an ImageFolder validation set or the embedded digits val split.

Examples::

    python tools/validate.py --model vmamba_tiny_s1l8.in1k --pretrained --data-dir /data/imagenet
    python tools/validate.py --checkpoint output/train/<run>/last.pth          # digits val split, train.py's setup
    python tools/validate.py --model vim_tiny_patch16_224 --checkpoint vim_t.safetensors --data-dir /data/imagenet --amp

ImageFolder evaluation uses the model's pretrained data config (``timm.data.resolve_data_config``: resize, crop_pct,
interpolation, mean/std); ``--img-size`` / ``--crop-pct`` override it. A ``tools/train.py`` checkpoint carries its
model name, class count, model kwargs and data config, so ``--checkpoint`` alone reproduces the accuracy train.py
logged for it. Results are printed and, with ``--results-file``, written as JSON.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import nullcontext
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as common  # noqa: E402

from timm.data import create_dataset, create_transform, resolve_data_config  # noqa: E402

from vmamba.data import DIGITS_NUM_CLASSES, DigitsDataset  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data-dir', default=None, help='ImageNet-style root; omit for the embedded digits val split')
    p.add_argument('--split', default='val')
    p.add_argument('--model', default=None, help='model name (default: the one stored in a train.py checkpoint)')
    p.add_argument('--model-kwargs', nargs='*', default=None, help='extra constructor kwargs, key=value ...')
    p.add_argument('--pretrained', action='store_true', help='the registered pretrained weights')
    p.add_argument('--checkpoint', default=None, help='train.py checkpoint, state dict (.pth) or .safetensors')
    p.add_argument('--use-ema', action='store_true', help='the EMA weights of a train.py checkpoint')
    p.add_argument('--num-classes', type=int, default=None)
    p.add_argument('--img-size', type=int, default=None)
    p.add_argument('--crop-pct', type=float, default=None)
    p.add_argument('--interpolation', default=None)
    p.add_argument('--batch-size', '-b', type=int, default=None, help='default 128 (or the train.py batch size)')
    p.add_argument('--workers', '-j', type=int, default=4)
    p.add_argument('--amp', action='store_true')
    p.add_argument('--amp-dtype', default='bfloat16', choices=['bfloat16', 'float16'])
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--device', default=None)
    p.add_argument('--results-file', default=None, help='write the results as JSON')
    p.add_argument('--no-progress', action='store_true')
    return p


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = build_parser().parse_args(argv)
    device = common.resolve_device(args.device)

    checkpoint = common.load_checkpoint_file(args.checkpoint) if args.checkpoint else None
    saved_args = checkpoint.get('args') if isinstance(checkpoint, dict) and isinstance(checkpoint.get('args'), dict) \
        else {}
    model_name = args.model or saved_args.get('model')
    if not model_name:
        raise common.ToolError('--model is required (unless --checkpoint is a tools/train.py checkpoint)')
    model_kwargs = common.parse_kwargs(saved_args.get('model_kwargs')) if not args.model_kwargs else {}
    model_kwargs.update(common.parse_kwargs(args.model_kwargs))
    num_classes = args.num_classes or (checkpoint.get('num_classes') if saved_args else None)
    if num_classes is None and args.data_dir is None and not args.pretrained:
        num_classes = DIGITS_NUM_CLASSES
    on_digits = args.data_dir is None
    img_size = args.img_size or (saved_args.get('img_size') if saved_args else None) or (32 if on_digits else None)
    if args.pretrained and args.checkpoint:
        raise common.ToolError('use either --pretrained or --checkpoint, not both')

    model = common.create_model_from_args(model_name, num_classes=num_classes, pretrained=args.pretrained,
                                          img_size=img_size, model_kwargs=model_kwargs)
    if checkpoint is not None:
        state = common.model_state_from_checkpoint(checkpoint, use_ema=args.use_ema)
        from vmamba.official import load_state_dict_strict
        load_state_dict_strict(model, state, source=str(args.checkpoint))
    model.to(device).eval()
    if args.channels_last:
        model.to(memory_format=torch.channels_last)

    if on_digits:
        dataset = DigitsDataset(args.split, image_size=img_size)
        data_config = dict(input_size=(3, img_size, img_size), dataset='digits')
        workers = 0
        if model.num_classes != DIGITS_NUM_CLASSES:
            raise common.ToolError(f'the digits split has {DIGITS_NUM_CLASSES} classes but the model has '
                                   f'{model.num_classes} outputs (pass --data-dir for ImageFolder data)')
    else:
        split_dir = common.check_image_folder(args.data_dir, args.split)
        num_folders = len(common.image_folder_classes(split_dir))
        if num_folders != model.num_classes:
            raise common.ToolError(f'{split_dir} has {num_folders} class folders but the model has '
                                   f'{model.num_classes} outputs')
        data_config = resolve_data_config(
            dict(img_size=args.img_size, crop_pct=args.crop_pct, interpolation=args.interpolation), model=model,
            use_test_size=True)
        dataset = create_dataset('', root=args.data_dir, split=args.split, is_training=False)
        dataset.transform = create_transform(**data_config, is_training=False)
        workers = args.workers
    batch_size = args.batch_size or saved_args.get('batch_size') or 128
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == 'cuda')

    amp_dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
    autocast = torch.autocast(device.type, dtype=amp_dtype) if args.amp else nullcontext()
    from tqdm import tqdm
    totals = torch.zeros(4, dtype=torch.float64)  # loss sum, top1, top5, count
    start = time.perf_counter()
    with torch.no_grad():
        for images, target in tqdm(loader, desc='validate', leave=False, disable=True if args.no_progress else None):
            images = images.to(device, non_blocking=True)
            target = target.to(device, non_blocking=True)
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast:
                output = model(images)
            output = output.float()
            top1, top5 = common.accuracy_counts(output, target, (1, 5))
            totals += torch.tensor([F.cross_entropy(output, target, reduction='sum').item(), top1, top5,
                                    target.numel()], dtype=torch.float64)
    elapsed = time.perf_counter() - start
    count = max(totals[3].item(), 1)
    results = dict(
        model=model_name,
        checkpoint=args.checkpoint,
        use_ema=args.use_ema,
        dataset='digits' if on_digits else str(args.data_dir),
        split=args.split,
        images=int(totals[3].item()),
        top1=100 * totals[1].item() / count,
        top5=100 * totals[2].item() / count,
        loss=totals[0].item() / count,
        params_m=sum(p.numel() for p in model.parameters()) / 1e6,
        input_size=list(data_config['input_size']),
        crop_pct=data_config.get('crop_pct'),
        interpolation=data_config.get('interpolation'),
        amp=args.amp,
        device=str(device),
        img_per_s=count / max(elapsed, 1e-9),
    )
    print(f'{model_name} on {results["dataset"]} ({results["split"]}, {results["images"]} images): '
          f'top-1 {results["top1"]:.3f}%  top-5 {results["top5"]:.3f}%  loss {results["loss"]:.4f}')
    if args.results_file:
        common.write_json(args.results_file, results)
    return results


if __name__ == '__main__':
    common.run_main(main)

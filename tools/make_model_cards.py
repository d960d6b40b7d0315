#!/usr/bin/env python3
"""Generate ``model_cards/<arch>.<tag>.md``: one card per registered pretrained model of our families.

Sources: the timm registry (pretrained cfg: weight source, licence, paper, input size), the model itself (params and
FLOPs counted on the meta device with vmamba/flops.py), the official accuracy table below (from the official READMEs,
as recorded in the project specs) and measured throughput from ``benchmarks/results/*.json`` when present.

    python tools/make_model_cards.py            # (re)writes model_cards/ and removes cards of unregistered tags
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as common  # noqa: E402

from flops import flops_row  # noqa: E402

CARDS_DIR = common.REPO_ROOT / 'model_cards'
RESULTS_DIR = common.REPO_ROOT / 'benchmarks' / 'results'

# Official ImageNet-1k top-1 (224x224) of every released weight set, and where it is published.
_VMAMBA_SRC = 'VMamba README / assets/performance.md (github.com/MzeroMiko/VMamba)'
_VIM_SRC = 'Vim README (github.com/hustvl/Vim)'
_EFFVMAMBA_SRC = 'EfficientVMamba README (github.com/TerryPei/EfficientVMamba)'
OFFICIAL_TOP1: Dict[str, tuple] = {
    'vmamba_tiny_s1l8.in1k': (82.6, _VMAMBA_SRC),
    'vmamba_small_s1l20.in1k': (83.3, _VMAMBA_SRC),
    'vmamba_base_s1l20.in1k': (83.8, _VMAMBA_SRC),
    'vmamba_tiny_s2l5.in1k': (82.5, _VMAMBA_SRC),
    'vmamba_small_s2l15.in1k': (83.6, _VMAMBA_SRC),
    'vmamba_base_s2l15.in1k': (83.9, _VMAMBA_SRC),
    'vmamba_tiny_v0.in1k': (82.2, _VMAMBA_SRC),
    'vmamba_small_v0.in1k': (83.5, _VMAMBA_SRC),
    'vmamba_base_v0.in1k': (83.7, _VMAMBA_SRC),
    'vim_tiny_patch16_224.in1k': (76.1, _VIM_SRC),
    'vim_tiny_patch16_stride8_224.in1k': (78.3, _VIM_SRC + ', "Vim-Ti+" (fine-tuned at stride 8)'),
    'vim_small_patch16_224.in1k': (80.5, _VIM_SRC),
    'vim_small_patch16_stride8_224.in1k': (81.6, _VIM_SRC + ', "Vim-S+" (fine-tuned at stride 8)'),
    'vim_base_patch16_224.in1k': (81.9, _VIM_SRC),
    'efficientvmamba_tiny.in1k': (76.5, _EFFVMAMBA_SRC),
    'efficientvmamba_small.in1k': (78.7, _EFFVMAMBA_SRC),
    'efficientvmamba_base.in1k': (81.8, _EFFVMAMBA_SRC),
}

FAMILIES: Dict[str, Dict[str, str]] = {
    'vmamba': dict(
        title='VMamba',
        summary='Hierarchical 4-stage backbone (strides 4-32) of VSS blocks: LayerNorm -> SS2D (linear, depthwise '
                'conv, 4-route selective scan, merge, norm, linear) -> residual, plus an MLP in the v2 designs. '
                '`_v0` models are the original "Vanilla-VMamba" (gated SS2D, d_state 16, no MLP).',
        scan="'cross' (4 routes: rows, columns, and both reversed; SS2D)",
        citation='@article{liu2024vmamba,\n  title={VMamba: Visual State Space Model},\n  author={Liu, Yue and Tian, '
                 'Yunjie and Zhao, Yuzhong and Yu, Hongtian and Xie, Lingxi and Wang, Yaowei and Ye, Qixiang and '
                 'Jiao, Jianbin and Liu, Yunfan},\n  journal={arXiv preprint arXiv:2401.10166},\n  year={2024}\n}'),
    'vim': dict(
        title='Vision Mamba (Vim)',
        summary='Plain (non-hierarchical) backbone: 16x16 patch embedding (stride 16, or 8 for the `stride8` '
                'fine-tunes), absolute position embeddings, a class token in the middle of the sequence, 24 '
                'bidirectional Mamba blocks (RMSNorm, residual in fp32); the class token feeds the head.',
        scan="'bidirectional' (forward and backward 1-D scans over the raster-ordered tokens)",
        citation='@article{zhu2024vim,\n  title={Vision Mamba: Efficient Visual Representation Learning with '
                 'Bidirectional State Space Model},\n  author={Zhu, Lianghui and Liao, Bencheng and Zhang, Qian and '
                 'Wang, Xinlong and Liu, Wenyu and Wang, Xinggang},\n  journal={arXiv preprint arXiv:2401.09417},\n'
                 '  year={2024}\n}'),
    'lbvim': dict(
        title='LBVim (locally bidirectional Vim)',
        summary='Vim with LBMamba mixers (a forward scan plus a local backward scan inside windows), no class token, '
                'mean-pooled tokens.',
        scan="'local_bidirectional'",
        citation=''),
    'efficientvmamba': dict(
        title='EfficientVMamba',
        summary='Light-weight hierarchical backbone: stages 0-1 use EVSS blocks (atrous-scan SS2D "ES2D" and a '
                'convolutional branch, gated by squeeze-excitation); stages 2-3 use MobileNetV2 inverted residuals.',
        scan="'atrous' (2x2 skip-sampled sub-grids, 4 routes; ES2D)",
        citation='@article{pei2024efficientvmamba,\n  title={EfficientVMamba: Atrous Selective Scan for Light '
                 'Weight Visual Mamba},\n  author={Pei, Xiaohuan and Huang, Tao and Xu, Chang},\n  journal={arXiv '
                 'preprint arXiv:2403.09977},\n  year={2024}\n}'),
}


def family_of(arch: str) -> str:
    import timm.models._registry as registry
    module = registry._model_to_module.get(arch, '')
    if module not in FAMILIES:
        raise common.ToolError(f'{arch} is registered by module {module!r}, which has no family entry in '
                               f'tools/make_model_cards.py')
    return module


def _superseded_models(report: Dict[str, Any]) -> set:
    """Models a benchmark report marks as re-measured elsewhere: ``superseded.models`` and the ``models`` of each
    ``superseded.later`` entry (re-measurements added by later sessions)."""
    superseded = report.get('superseded') or {}
    models = set(superseded.get('models', ()))
    for later in superseded.get('later', ()):
        models.update(later.get('models', ()))
    return models


def measured_throughput(arch: str, results_dir: Path = RESULTS_DIR) -> List[Dict[str, Any]]:
    """Rows for ``arch`` from every benchmark JSON (GPU runs first), except reports that list it as superseded."""
    rows = []
    for path in sorted(results_dir.glob('*.json')):
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(report, dict) or 'results' not in report:
            continue
        superseded = _superseded_models(report)  # re-measured after a code change elsewhere
        for r in report['results']:
            if r.get('model') == arch and arch not in superseded and not r.get('error') and (
                    r.get('infer_img_s') or r.get('train_img_s')):
                rows.append(dict(r, device=report.get('device'), device_type=report.get('device_type'),
                                 date=report.get('date'), precision=report.get('precision'),
                                 mode='CUDA graph' if report.get('cuda_graph') else 'eager', file=path.name))
    return sorted(rows, key=lambda r: r.get('device_type') != 'cuda')


def weight_source(cfg: Dict[str, Any]) -> str:
    if cfg.get('hf_hub_id'):
        repo = cfg['hf_hub_id']
        file = cfg.get('hf_hub_filename')
        return f'Hugging Face `{repo}`' + (f', file `{file}`' if file else '') + f' (https://huggingface.co/{repo})'
    if cfg.get('url'):
        return cfg['url']
    return 'not set'


def card_text(name: str) -> str:
    arch, _, tag = name.partition('.')
    family = FAMILIES[family_of(arch)]
    cfg = common.pretrained_cfg_of(name)
    stats = flops_row(arch, None, 1, 'paper')
    top1 = OFFICIAL_TOP1.get(name)
    measured = measured_throughput(arch)
    notes = cfg.get('notes') or ()
    lines = [
        f'# {name}',
        '',
        f'{family["title"]} image classifier / feature backbone, ported from the official weights and run on the '
        f'vmamba zoo\'s shared selective-scan kernel (Triton on GPU, PyTorch reference on CPU).',
        '',
        '## Model details',
        '',
        f'- **Architecture:** `{arch}` ({family["title"]}). {family["summary"]}',
        f'- **Scan pattern:** {family["scan"]}',
        f'- **Params:** {stats["params_m"]:.2f} M',
        f'- **FLOPs:** {stats["gflops"]:.3f} G at {cfg["input_size"][-1]}x{cfg["input_size"][-1]} '
        f'(selective scan {stats["scan_gflops"]:.3f} G; papers\' convention, vmamba/flops.py)',
        f'- **Input:** {cfg["input_size"][-1]}x{cfg["input_size"][-1]}, crop_pct {cfg.get("crop_pct")}, '
        f'{cfg.get("interpolation")} interpolation, mean {tuple(cfg.get("mean", ()))}, std {tuple(cfg.get("std", ()))}',
        f'- **Dataset:** ImageNet-1k ({cfg.get("num_classes")} classes)',
        '- **Official top-1:** ' + (f'{top1[0]:.1f}% (ImageNet-1k val; source: {top1[1]})' if top1
                                     else 'not published'),
        f'- **Papers:** {cfg.get("paper_name") or family["title"]} ({cfg.get("paper_ids") or "n/a"})',
        f'- **Original code:** {cfg.get("origin_url") or "n/a"}',
        f'- **Weights:** {weight_source(cfg)}; converted on first use by the family\'s `checkpoint_filter_fn` and '
        f'cached as safetensors',
        f'- **Licence:** {cfg.get("license") or "not stated"}' + ''.join(f'; note: {n}' for n in notes),
        '',
        '## Measured throughput',
        '',
    ]
    if measured:
        lines += ['| device | date | precision | mode | batch | input | infer img/s | train img/s | source |',
                  '|---|---|---|---|---:|---:|---:|---:|---|']
        for r in measured:
            infer = f'{r["infer_img_s"]:,.1f}' if r.get('infer_img_s') else '-'
            train = f'{r["train_img_s"]:,.1f}' if r.get('train_img_s') else '-'
            lines.append(f'| {r["device"]} | {r["date"]} | {r["precision"]} | {r["mode"]} | {r.get("batch_size")} | '
                         f'{r["input_size"][-1]} | {infer} | {train} | benchmarks/results/{r["file"]} |')
    else:
        lines.append('Not yet measured (run `python tools/benchmark.py` and regenerate the cards).')
    lines += [
        '',
        '## Usage',
        '',
        '```python',
        'import timm',
        'import torch',
        'import vmamba  # registers the models in timm',
        '',
        f"model = timm.create_model('{name}', pretrained=True).eval()",
        'config = timm.data.resolve_data_config({}, model=model)',
        'transform = timm.data.create_transform(**config)',
        'with torch.no_grad():',
        '    probabilities = model(transform(image).unsqueeze(0)).softmax(-1)  # image: a PIL RGB image',
        '',
        f"features = timm.create_model('{arch}', pretrained=True, features_only=True)  # multi-scale feature maps",
        f"embedder = timm.create_model('{arch}', pretrained=True, num_classes=0)  # pooled embeddings",
        '```',
        '',
        f'Validate: `python tools/validate.py --model {name} --pretrained --data-dir /path/to/imagenet`',
        '',
    ]
    if family['citation']:
        lines += ['## Citation', '', '```bibtex', family['citation'], '```', '']
    return '\n'.join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out-dir', default=str(CARDS_DIR))
    return p


def main(argv: Optional[Sequence[str]] = None) -> List[Path]:
    args = build_parser().parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = common.our_model_names(pretrained=True)
    written = []
    for name in names:
        path = out_dir / f'{name}.md'
        path.write_text(card_text(name))
        written.append(path)
        print(f'wrote {path}')
    keep = {p.name for p in written} | {'README.md'}
    for stale in out_dir.glob('*.md'):
        if stale.name not in keep:
            stale.unlink()
            print(f'removed {stale} (no such registered pretrained model)')
    index = ['# Model cards', '', 'Generated by `python tools/make_model_cards.py`; one card per registered pretrained '
             'model.', '', '| model | official top-1 |', '|---|---:|']
    for name in names:
        top1 = OFFICIAL_TOP1.get(name)
        index.append(f'| [{name}]({name}.md) | {f"{top1[0]:.1f}" if top1 else "-"} |')
    (out_dir / 'README.md').write_text('\n'.join(index) + '\n')
    return written


if __name__ == '__main__':
    common.run_main(main)

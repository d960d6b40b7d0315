"""GPU check: every family's Triton fast path against the PyTorch reference path, real sizes (224x224).

For each model (random init, fixed seed, eval mode) the same input runs with the Triton scan and with
``VMAMBA_SCAN_BACKEND=reference``: logits in fp32 (TF32 off) must agree to 1e-4 relative (RMS), logits under bf16
autocast to 1e-2; the gradient of the input-side parameters from one backward pass must agree to 1e-3 (fp32).

    PYTHONPATH=. python benchmarks/check_models_gpu.py [--models ...] [--batch 2] [--json out.json]
        [--scan-variant segments]

``--scan-variant``: run the Triton path with another set of chunked-scan configs (``benchmarks/scan_variants.py``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

import timm
import vmamba  # noqa: F401

DEFAULT_MODELS = ['vmamba_tiny_s1l8', 'vmamba_tiny_v0', 'vim_small_patch16_224', 'efficientvmamba_tiny',
                  'lbvim_tiny_patch16_224']


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def run(model, x, backend: str, amp: bool, grad: bool):
    os.environ['VMAMBA_SCAN_BACKEND'] = backend
    model.zero_grad(set_to_none=True)
    with torch.autocast('cuda', dtype=torch.bfloat16, enabled=amp), torch.set_grad_enabled(grad):
        out = model(x)
    grads = None
    if grad:
        out.float().square().mean().backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach().float(), grads


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--models', nargs='*', default=DEFAULT_MODELS)
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--json', default=None)
    parser.add_argument('--scan-variant', default='default', help='benchmarks/scan_variants.py variant')
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from scan_variants import scan_variant
    with scan_variant(args.scan_variant):
        return check(args)


def check(args) -> int:
    rows, failed = [], False
    for name in args.models:
        torch.manual_seed(0)
        model = timm.create_model(name).cuda().eval()
        x = torch.randn(args.batch, 3, 224, 224, device='cuda')
        ref32, gref = run(model, x, 'reference', amp=False, grad=True)
        fast32, gfast = run(model, x, 'triton', amp=False, grad=True)
        refbf, _ = run(model, x, 'reference', amp=True, grad=False)
        fastbf, _ = run(model, x, 'triton', amp=True, grad=False)
        grad_err = max(rel_rms(gfast[k], gref[k]) for k in gref)
        worst = max(gref, key=lambda k: rel_rms(gfast[k], gref[k]))
        row = dict(model=name, fp32_logits_rel=rel_rms(fast32, ref32), bf16_logits_rel=rel_rms(fastbf, refbf),
                   fp32_grad_rel_max=grad_err, worst_grad=worst)
        row['ok'] = row['fp32_logits_rel'] < 1e-4 and row['bf16_logits_rel'] < 1e-2 and grad_err < 1e-3
        failed |= not row['ok']
        rows.append(row)
        print(json.dumps(row), flush=True)
    os.environ.pop('VMAMBA_SCAN_BACKEND', None)
    print('\n| model | fp32 logits rel | bf16 logits rel | fp32 grads rel (max) | ok |\n|---|---|---|---|---|')
    for r in rows:
        print(f"| {r['model']} | {r['fp32_logits_rel']:.2e} | {r['bf16_logits_rel']:.2e} | "
              f"{r['fp32_grad_rel_max']:.2e} ({r['worst_grad']}) | {r['ok']} |")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())

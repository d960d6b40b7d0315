#!/usr/bin/env bash
# One GPU session on the device machine (H100): GPU tests, Triton-vs-reference model check, model throughput vs
# timm peers. Run from the repo root; results go to $OUT (default benchmarks/results/gpu).
#   PART=check  : GPU-marked tests + benchmarks/check_models_gpu.py
#   PART=bench  : tools/benchmark.py, batch 128, 224x224, AMP fp16, 50 warm-up + 30 timed iterations
# The device image has an older timm: put timm 1.0.31 (and pytest) on PYTHONPATH from .gpu_deps/ if present.
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu}
PART=${PART:-check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/.gpu_deps:$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python -c "import torch, triton, timm; print('torch', torch.__version__, 'triton', triton.__version__, 'timm', timm.__version__)"
if [ "$PART" = check ]; then
  python -m pytest tests/kernels tests/models -m gpu -q -p no:cacheprovider 2>&1 | tail -15
  python benchmarks/check_models_gpu.py --json "$OUT/check_models.json" 2>&1 | tail -12
else
  MODELS=${MODELS:-vmamba_tiny_s1l8,vmamba_small_s2l15,vmamba_base_s2l15,vim_tiny_patch16_224,vim_small_patch16_224,efficientvmamba_tiny,efficientvmamba_small,efficientvmamba_base,lbvim_tiny_patch16_224}
  python tools/benchmark.py --models "$MODELS" --amp --amp-dtype float16 -b 128 --warmup 50 --iters 30 \
      --out "$OUT/models" 2>&1 | tail -45
fi

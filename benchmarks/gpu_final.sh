#!/usr/bin/env bash
# Final GPU session of 2026-11-24 (one call): GPU tests, model throughput vs peers, 1-GPU torchrun training run.
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu}; mkdir -p "$OUT"
export PYTHONPATH="$PWD/.gpu_deps:$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 120 python -m pytest tests/kernels tests/models -m gpu -q -p no:cacheprovider 2>&1 | tail -4
MODELS=vmamba_tiny_s1l8,vmamba_small_s2l15,vim_tiny_patch16_224,vim_small_patch16_224,efficientvmamba_tiny,efficientvmamba_small,efficientvmamba_base,lbvim_tiny_patch16_224
timeout 330 python tools/benchmark.py --models "$MODELS" --amp --amp-dtype float16 -b 128 --warmup 50 --iters 30 \
    --out "$OUT/models" 2>&1 | grep "img/s\|wrote\|rror"
for m in vmamba_tiny_s1l8 vim_small_patch16_224; do
  timeout 90 torchrun --standalone --nproc_per_node=1 tools/train.py --model $m --synthetic 5120 --batch-size 128 \
      --epochs 1 --steps-per-epoch 40 --amp --amp-dtype float16 --no-progress --output "$OUT/train_$m" 2>&1 | grep -v Warning | tail -3
done

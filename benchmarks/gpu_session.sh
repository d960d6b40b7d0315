#!/usr/bin/env bash
# One GPU session on the device machine (H100), run from the repo root; results go to $OUT.
#   PARTS    : any of "tests check bench scan conv path suffix suffix_models profile host ab graph baseline" (default "tests check bench"), in the order given; a failing
#              part does not stop the others.
#   tests    : GPU-marked tests in $TESTS (default: tests/kernels tests/models).
#   check    : benchmarks/check_models_gpu.py (Triton path vs reference path) on $CHECK_MODELS (default: its list).
#   bench    : tools/benchmark.py on $MODELS next to $PEERS, batch 128, 224x224, AMP fp16, 50 warm-up + 30 timed.
#   scan     : benchmarks/bench_scan.py $SCAN_ARGS (default --quick: no reference check) -> $OUT/scan.md / scan.json.
#   conv     : benchmarks/bench_conv.py $CONV_ARGS (e.g. "--sweep --budget 90") -> $OUT/conv.json, and, if
#              $BASELINE_TREE has one, the baseline tree's bench_conv.py (defaults only) -> $OUT/conv_old.json.
#   path     : benchmarks/scan_path_gpu.py: step vs chunked kernels for N > 1 at EfficientVMamba / Vim shapes.
#   suffix   : the segmented suffix scans (ScanConfig.suffix_segment=None) against Triton's reverse scans (the
#              default, 0), each also with the training forward at the inference tile (chunk_states_in_tile):
#              compiled tests (-k "suffix or chunk_states", real sizes included), benchmarks/suffix_scan_gpu.py
#              (kernel A/B with a reference check of each variant) -> $OUT/suffix_scan.md. At most ~450 s.
#   suffix_models: benchmarks/suffix_model_ab_gpu.py (VMamba-T CUDA-graph A/B of the variants next to
#              convnext_tiny) -> $OUT/suffix_model_ab.txt, and benchmarks/check_models_gpu.py --scan-variant
#              segments (models with the segments vs the reference path) -> $OUT/check_models_segments.json. At
#              most ~540 s: a call of its own (a device call may run 600 s).
#   profile  : benchmarks/step_anatomy_gpu.py for $PROFILE_MODELS: wall / kernel / enqueue time and the top CUDA
#              kernels of an AMP inference and train step (PROFILE_ARGS="--modes infer": inference only).
#   host     : benchmarks/host_cost_gpu.py on $PROFILE_MODELS: host cost per call of aten ops and ours (split into
#              validation, autograd.Function, Triton JIT launch, direct compiled-kernel launch) and a sync check.
#   ab       : $ROUNDS (default 2) alternating rounds of "baseline tree, then this tree" (models + peers in both, no
#              FLOPs), so that a drift of the host's speed during the session hits both alike -> $OUT/ab_{old,new}_<r>.
#   graph    : the bench part with --cuda-graph (every step replayed as one CUDA graph: the GPU work alone) for this
#              tree (models + peers) and, if $BASELINE_TREE is set, the baseline tree -> $OUT/graph_{new,old} (a
#              baseline older than --cuda-graph needs this tree's tools/benchmark.py copied into it: the tools
#              import the vmamba package of the tree they are in).
#   baseline : the same benchmark of $BASELINE_MODELS from an older checkout in $BASELINE_TREE (made with
#              `git archive <commit> vmamba tools | tar -x -C <dir>`), in the same run, so old and new are comparable.
# The device image has an older timm: timm 1.0.31 (and pytest) go on PYTHONPATH from .gpu_deps/ if present.
set -uo pipefail
ROOT=$PWD
OUT=${OUT:-benchmarks/results/gpu}
PARTS=${PARTS:-tests check bench}
TESTS=${TESTS:-tests/kernels tests/models}
MODELS=${MODELS:-vmamba_tiny_s1l8,vmamba_small_s2l15,vim_tiny_patch16_224,vim_small_patch16_224,efficientvmamba_tiny,efficientvmamba_small,efficientvmamba_base,lbvim_tiny_patch16_224}
PEERS=${PEERS:-convnext_tiny,deit_small_patch16_224,mambaout_tiny,mambaout_femto}
BENCH_ARGS=${BENCH_ARGS:-"--amp --amp-dtype float16 -b 128 --warmup 50 --iters 30"}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$ROOT/.gpu_deps:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python -c "import torch, triton, timm; print('torch', torch.__version__, 'triton', triton.__version__, 'timm', timm.__version__)"
for part in $PARTS; do
  echo "== $part"
  case $part in
    tests) timeout 200 python -m pytest $TESTS -m gpu -q -p no:cacheprovider 2>&1 | tail -12 ;;
    check) timeout 200 python benchmarks/check_models_gpu.py ${CHECK_MODELS:+--models ${CHECK_MODELS//,/ }} \
             --json "$OUT/check_models.json" 2>&1 | tail -12 ;;
    bench) timeout 360 python tools/benchmark.py --models "$MODELS" --peers "$PEERS" $BENCH_ARGS \
             --out "$OUT/models" 2>&1 | grep -v Warning | tail -30 ;;
    scan) OUT="$OUT" timeout 300 python benchmarks/bench_scan.py ${SCAN_ARGS:---quick} 2>&1 | tee "$OUT/scan_log.txt" \
            | grep -v "^  .*/fwd " | tail -40 ;;
    conv) timeout 300 python benchmarks/bench_conv.py ${CONV_ARGS:-} --json "$OUT/conv.json" 2>&1 | grep -v Warning \
            | tee "$OUT/conv_log.txt" | grep -v "^  vim_./" | tail -40
          if [ -n "${BASELINE_TREE:-}" ] && [ -f "$BASELINE_TREE/benchmarks/bench_conv.py" ]; then
            (cd "$BASELINE_TREE" && PYTHONPATH="$ROOT/.gpu_deps:$PWD" timeout 120 python benchmarks/bench_conv.py \
               --no-profile --json "$OUT/conv_old.json" 2>&1 | grep -v Warning | tail -8 | sed 's/^/old /')
          fi ;;
    suffix) timeout 120 python -m pytest tests/kernels/test_triton_scan.py -q -p no:cacheprovider -k "suffix or chunk_states" 2>&1 | tail -4
            OUT="$OUT" timeout 330 python benchmarks/suffix_scan_gpu.py 2>&1 | grep -v Warning | tee "$OUT/suffix_log.txt" \
              | tail -12 ;;
    suffix_models) timeout 300 python benchmarks/suffix_model_ab_gpu.py 2>&1 | grep -v Warning \
              | tee "$OUT/suffix_model_ab.txt" | tail -8
            timeout 240 python benchmarks/check_models_gpu.py --scan-variant segments --models vmamba_tiny_s1l8 \
              efficientvmamba_tiny lbvim_tiny_patch16_224 --json "$OUT/check_models_segments.json" 2>&1 \
              | grep -v Warning | tail -6 ;;
    path) timeout 200 python benchmarks/scan_path_gpu.py 2>&1 | grep -v Warning | tee "$OUT/scan_path.md" ;;
    profile) timeout 300 python benchmarks/step_anatomy_gpu.py ${PROFILE_MODELS//,/ } --kernels 20 ${PROFILE_ARGS:-} 2>&1 \
               | grep -v Warning ;;
    host) timeout 200 python benchmarks/host_cost_gpu.py ${PROFILE_MODELS//,/ } 2>&1 | grep -v Warning ;;
    ab) for r in $(seq 1 "${ROUNDS:-2}"); do
          (cd "$BASELINE_TREE" && PYTHONPATH="$ROOT/.gpu_deps:$PWD" timeout 280 python tools/benchmark.py \
             --models "$BASELINE_MODELS" --peers "$PEERS" --no-flops $BENCH_ARGS --out "$OUT/ab_old_$r" 2>&1 \
             | grep -v Warning | grep img/s | sed 's/^/old /')
          timeout 280 python tools/benchmark.py --models "$MODELS" --peers "$PEERS" --no-flops $BENCH_ARGS \
             --out "$OUT/ab_new_$r" 2>&1 | grep -v Warning | grep img/s | sed 's/^/new /'
        done ;;
    graph) timeout 280 python tools/benchmark.py --models "$MODELS" --peers "$PEERS" --no-flops --cuda-graph $BENCH_ARGS \
             --out "$OUT/graph_new" 2>&1 | grep -v Warning | grep img/s | sed 's/^/new /'
           if [ -n "${BASELINE_TREE:-}" ]; then
             (cd "$BASELINE_TREE" && PYTHONPATH="$ROOT/.gpu_deps:$PWD" timeout 200 python tools/benchmark.py \
               --models "$BASELINE_MODELS" --no-peers --no-flops --cuda-graph $BENCH_ARGS --out "$OUT/graph_old" 2>&1 \
               | grep -v Warning | grep img/s | sed 's/^/old /')
           fi ;;
    baseline) (cd "$BASELINE_TREE" && PYTHONPATH="$ROOT/.gpu_deps:$PWD" timeout 200 python tools/benchmark.py \
             --models "$BASELINE_MODELS" --no-peers --no-flops $BENCH_ARGS --out "$OUT/baseline" 2>&1 \
             | grep -v Warning | tail -12) ;;
    *) echo "unknown part $part" ;;
  esac
done

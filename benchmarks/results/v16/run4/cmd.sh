# v16/run4: final code (one launch for both directions when L % 16 == 0): scan bench vs v15 tree, VMamba-T real-size
# check, CUDA-graph model throughput vs the v15 tree and the peers in the same run, scan tests compiled on the GPU.
set -u
export PYTHONPATH=$PWD/.gpu_deps:$PWD
CASES="vmamba_t_stage1 vmamba_t_stage2 vmamba_t_stage3"
OUT=$OUT/scan_new timeout 90 python benchmarks/bench_scan.py --quick --cases $CASES --no-routes > $OUT/scan_new.log 2>&1
echo new; grep "^| vmamba" $OUT/scan_new.log
PARTS="check graph" MODELS=vmamba_tiny_s1l8,efficientvmamba_small PEERS=convnext_tiny,mambaout_femto \
  BASELINE_TREE=.gpu_v15 BASELINE_MODELS=vmamba_tiny_s1l8,efficientvmamba_small CHECK_MODELS=vmamba_tiny_s1l8,efficientvmamba_small \
  bash benchmarks/gpu_session.sh 2>&1 | tail -30
timeout 200 python -m pytest tests/kernels/test_triton_scan.py -q -p no:cacheprovider -k "fp32 or launches or split or real_sizes or low_precision" 2>&1 | tail -3

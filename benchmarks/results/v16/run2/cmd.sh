# v16/run2: the chunked kernels' training-path numbers (this tree = v15 kernels), and ablations of the N = 1
# chunked backward at the stage-1 shape (timing only; a, b, c compute wrong gradients):
#   a: no dB / dC atomics; b: the adjoint's decay from the lane's own decay (no second delta load + softplus); c: both
set -u
export OUT
CASES="vmamba_t_stage1 vmamba_t_stage2 vmamba_t_stage3 vmamba_t_stage1_forward_only"
PYTHONPATH=$PWD/.gpu_deps:$PWD OUT=$OUT/scan timeout 150 python benchmarks/bench_scan.py --quick --cases $CASES --no-routes > $OUT/scan.log 2>&1
tail -8 $OUT/scan.log
for v in a b c; do
  PYTHONPATH=$PWD/.gpu_deps:$PWD/.gpu_abl/$v OUT=$OUT/abl_$v timeout 100 python benchmarks/bench_scan.py --quick --cases vmamba_t_stage1 vmamba_t_stage1_forward_only --no-routes > $OUT/abl_$v.log 2>&1
  echo "ablation $v"; grep "^| vmamba" $OUT/abl_$v.log
done

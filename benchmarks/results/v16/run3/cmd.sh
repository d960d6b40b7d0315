# v16/run3: chunked scan kernels with both directions in one launch (this tree) vs the v15 tree (.gpu_v15, one
# launch per direction run), same run; then the scan tests compiled on the GPU.
set -u
export PYTHONPATH=$PWD/.gpu_deps:$PWD
CASES="vmamba_t_stage1 vmamba_t_stage2 vmamba_t_stage3 vmamba_t_stage1_forward_only"
for round in 1 2; do
  OUT=$OUT/scan_new_$round timeout 100 python benchmarks/bench_scan.py --quick --cases $CASES --no-routes > $OUT/scan_new_$round.log 2>&1
  (cd .gpu_v15 && PYTHONPATH=$PWD/../.gpu_deps:$PWD OUT=$OUT/scan_old_$round timeout 100 python ../benchmarks/bench_scan.py --quick --cases $CASES --no-routes > $OUT/scan_old_$round.log 2>&1)
  echo "round $round new"; grep "^| vmamba" $OUT/scan_new_$round.log
  echo "round $round old"; grep "^| vmamba" $OUT/scan_old_$round.log
done
timeout 240 python -m pytest tests/kernels/test_triton_scan.py -q -x -p no:cacheprovider -k "fp32 or chunk or real_sizes or split or one_launch or explicit or low_precision or channel_blocks" 2>&1 | tail -3

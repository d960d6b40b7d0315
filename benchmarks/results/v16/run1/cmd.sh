set -u
export PYTHONPATH=$PWD/.gpu_deps:$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 150 python -m pytest tests/kernels/test_triton_scan.py -q -x -p no:cacheprovider -k "row_walk or chunk_states or real_sizes" 2>&1 | tail -4
CASES="vmamba_t_stage1 vmamba_t_stage2 vmamba_t_stage3 vmamba_t_stage1_forward_only"
OUT=$OUT/scan_new timeout 240 python benchmarks/bench_scan.py --quick --sweep --sweep-budget 130 --sweep-cases vmamba_t_stage1 vmamba_t_stage2 vmamba_t_stage3 --cases $CASES --no-routes > $OUT/scan_new.log 2>&1
grep -E "^  (best|vmamba.*(rows|d=  1))" $OUT/scan_new.log | grep -v "/fwd d" | head -40
(cd .gpu_v15 && PYTHONPATH=$PWD/../.gpu_deps:$PWD OUT=$OUT/scan_old timeout 120 python ../benchmarks/bench_scan.py --quick --cases $CASES --no-routes > $OUT/scan_old.log 2>&1)
echo NEW; tail -12 $OUT/scan_new.log | grep "^|"
echo OLD; tail -8 $OUT/scan_old.log | grep "^|"

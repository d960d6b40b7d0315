"""Vim-S mixer scan forward (token-major, bf16, batch 128): the (N, block_d) tile kernel against the one-channel-per-lane
kernel over tile sizes, with B / C read in place from the token buffer (bf16, the library's path) or packed to fp32
rows (``fp32-bc``, monkeypatched, for the comparison only); and the backward's pre-pass (block-start states) with
either kernel. Prints median ms (triton do_bench) and the max relative difference of each output to the tile
kernel's."""
import sys

import torch
from triton.testing import do_bench

sys.path.insert(0, '.')
from benchmarks.bench_scan import CASES, GRAD_NAMES, make_inputs  # noqa: E402
from vmamba.kernels.triton import selective_scan as scan  # noqa: E402

case = CASES['vim_s_mixer_token_major']
inputs = make_inputs(case['batch'], case['channels'], case['length'], case['num_states'], case['groups'], case['z'],
                     case['dtype'], token_major=True)
args = [inputs[k] for k in GRAD_NAMES]
assert args[3].stride(2) == 1, 'B must be a token-major view (stride 1 along N)'


def run(cfg):
    return scan.selective_scan_fwd(*args, True, case['reverse'], 0, case['out_dtype'], config=cfg)


baseline = scan.ScanConfig(32, 2, 1, max_registers=128)
ref_out, ref_last = run(baseline)
pack = scan._state_rows
rows = []
configs = [('tile', baseline, False)]
for bd, bl, w, cap in [(64, 2, 1, None), (64, 2, 1, 160), (64, 2, 1, 128), (64, 1, 1, None), (32, 2, 1, None),
                       (128, 2, 2, None)]:
    configs.append(('lanes', scan.ScanConfig(bd, bl, w, max_registers=cap, lane_states=True), False))
configs.append(('lanes-fp32-bc', scan.ScanConfig(64, 2, 1, lane_states=True), True))
for name, cfg, fp32_rows in configs:
    scan._state_rows = (lambda B, C: pack(B.transpose(2, 3).contiguous().transpose(2, 3),
                                          C.transpose(2, 3).contiguous().transpose(2, 3))) if fp32_rows else pack
    try:
        out, last = run(cfg)
        torch.cuda.synchronize()
        ms = do_bench(lambda: run(cfg), warmup=10, rep=60, return_mode='median')
    except Exception as exc:
        print(f'{name} {cfg}: failed {type(exc).__name__}: {str(exc)[:150]}', flush=True)
        continue
    d_out = ((out.float() - ref_out.float()).abs().max() / ref_out.float().abs().max()).item()
    d_last = ((last - ref_last).abs().max() / ref_last.abs().max()).item()
    rows.append((name, cfg.block_d, cfg.block_l, cfg.num_warps, cfg.max_registers, ms, d_out, d_last))
    print(f'{name:14s} d={cfg.block_d} l={cfg.block_l} w={cfg.num_warps} cap={cfg.max_registers}: {ms:.4f} ms '
          f'(max rel diff out {d_out:.1e}, last {d_last:.1e})', flush=True)
scan._state_rows = pack
print('\n| pre-pass kernel | block_d | block_l | reg cap | ms |\n|---|---|---|---|---|')
for name, cfg in [('tile', scan.ScanConfig(32, 2, 1, max_registers=168, clamp_loads=False)),
                  ('lanes', scan.ScanConfig(64, 2, 1, lane_states=True)),
                  ('lanes', scan.ScanConfig(32, 2, 1, lane_states=True))]:
    chunks = -(-case['length'] // cfg.block_l)
    states = torch.empty((case['batch'], chunks, case['channels'], case['num_states']), device='cuda',
                         dtype=torch.float32)
    ms = do_bench(lambda: scan._launch_fwd_step(*args[:5], None, None, args[7], True, case['reverse'], cfg, None, None,
                                                states), warmup=10, rep=60, return_mode='median')
    print(f'| {name} | {cfg.block_d} | {cfg.block_l} | {cfg.max_registers} | {ms:.4f} |', flush=True)
print('\n| kernel | block_d | block_l | warps | reg cap | fwd ms | out diff | last-state diff |\n|---|---|---|---|---|---|---|---|')
for r in rows:
    print('| ' + ' | '.join(str(x) if not isinstance(x, float) else (f'{x:.4f}' if x > 1e-3 else f'{x:.1e}')
                            for x in r) + ' |')

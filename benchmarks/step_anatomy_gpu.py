"""Where one batch-128 step goes: wall time, GPU kernel time, host (enqueue) time, launches, top kernels, top Python.

    PYTHONPATH=.gpu_deps:. python benchmarks/step_anatomy_gpu.py vim_small_patch16_224 vmamba_tiny_s1l8 --modes infer train

A step is GPU-bound when its kernel time ~ its wall time, host-bound when its enqueue time ~ its wall time.
"""
import argparse
import cProfile
import io
import pstats
import time

import timm
import torch

import vmamba  # noqa: F401

parser = argparse.ArgumentParser()
parser.add_argument('models', nargs='+')
parser.add_argument('--batch', type=int, default=128)
parser.add_argument('--modes', nargs='+', default=['infer', 'train'])
parser.add_argument('--kernels', type=int, default=14, help='top kernels to print')
parser.add_argument('--python', type=int, default=0, help='top Python functions (cProfile tottime) to print')
args = parser.parse_args()


def make_step(model, x, mode):
    if mode == 'infer':
        def step():
            with torch.no_grad(), torch.autocast('cuda', dtype=torch.float16):
                model(x)
    else:
        def step():
            with torch.autocast('cuda', dtype=torch.float16):
                loss = model(x).float().logsumexp(-1).mean()
            loss.backward()
    return step


summary = []
for name in args.models:
    model = timm.create_model(name).cuda()
    x = torch.randn(args.batch, 3, 224, 224, device='cuda')
    for mode in args.modes:
        model.train(mode == 'train')
        step = make_step(model, x, mode)
        for _ in range(5):
            step()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(10):
            step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - start) / 10 * 1e3
        enqueue = []
        for _ in range(3):
            torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            enqueue.append((time.perf_counter() - start) * 1e3)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(2):
                step()
            torch.cuda.synchronize()
        kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
        gpu = sum(e.self_device_time_total for e in kernels) / 2 / 1e3
        launches = sum(e.count for e in kernels) / 2
        print(f'\n== {name} {mode}: wall {wall:.2f} ms/step, kernels {gpu:.2f} ms, enqueue {min(enqueue):.2f} ms, '
              f'{launches:.0f} launches', flush=True)
        for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:args.kernels]:
            print(f'  {e.self_device_time_total / 2 / 1e3:7.3f} ms {e.count / 2:6.0f}x  {e.key[:90]}')
        if args.python:
            profiler = cProfile.Profile()
            torch.cuda.synchronize()
            profiler.enable()
            step()
            profiler.disable()
            torch.cuda.synchronize()
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats('tottime').print_stats(args.python)
            print('\n'.join(line for line in text.getvalue().splitlines()[6:] if line.strip()))
        summary.append((name, mode, wall, gpu, min(enqueue), launches))
        del step
    del model
    torch.cuda.empty_cache()

print('\n| model | mode | wall ms | kernel ms | enqueue ms | launches |')
print('|---|---|---:|---:|---:|---:|')
for name, mode, wall, gpu, enqueue, launches in summary:
    print(f'| {name} | {mode} | {wall:.2f} | {gpu:.2f} | {enqueue:.2f} | {launches:.0f} |')

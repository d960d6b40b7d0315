"""Profile one AMP fp16 train step (forward + backward) of a model on the GPU: top CUDA kernels by total time.

    PYTHONPATH=.gpu_deps:. python benchmarks/profile_gpu.py --model vmamba_tiny_s1l8 --batch 128
"""
import argparse

import torch
import timm
import vmamba  # noqa: F401

parser = argparse.ArgumentParser()
parser.add_argument('--model', default='vmamba_tiny_s1l8')
parser.add_argument('--batch', type=int, default=128)
parser.add_argument('--rows', type=int, default=30)
parser.add_argument('--infer', action='store_true')
args = parser.parse_args()
model = timm.create_model(args.model).cuda()
x = torch.randn(args.batch, 3, 224, 224, device='cuda')


def step():
    if args.infer:
        with torch.no_grad(), torch.autocast('cuda', dtype=torch.float16):
            model(x)
        return
    with torch.autocast('cuda', dtype=torch.float16):
        loss = model(x).float().logsumexp(-1).mean()
    loss.backward()


for _ in range(5):
    step()
torch.cuda.synchronize()
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
    for _ in range(3):
        step()
    torch.cuda.synchronize()
print(f'== {args.model} batch {args.batch} {"inference" if args.infer else "train"} (3 steps)')
print(prof.key_averages().table(sort_by='cuda_time_total', row_limit=args.rows, max_name_column_width=70))

"""Where the training step's time goes: a per-kernel breakdown from torch.profiler (issue 7).

    python bench/profile_step.py                         # ours, bf16, batch 128
    python bench/profile_step.py --ops reference         # eager PyTorch + cuDNN
    python bench/profile_step.py --precision tf32 --top 30

Runs a few warm-up steps of the step timed in bench/bench_step.py, profiles `--steps` more,
and prints the CUDA kernels by total device time with their share of the step and the
step's peak memory: the table to paste into bench/RESULTS.md before and after a change.
"""
import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `python bench/<script>.py`
from alexnet.network.config import AlexNetConfig  # noqa: E402
from alexnet.network.model import AlexNet  # noqa: E402
from bench.bench_step import PRECISIONS, make_step, peak_memory_bytes  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", choices=("triton", "reference"), default="triton")
    ap.add_argument("--precision", choices=tuple(PRECISIONS), default="bf16")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--top", type=int, default=20, help="kernels to list")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        ap.error("needs a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    step = make_step(args.ops, PRECISIONS[args.precision], AlexNet(AlexNetConfig(ops="reference")).state_dict())
    peak = peak_memory_bytes(step)  # also the warm-up (compilation, autotuning, cuDNN's algorithm choice)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
    device_us = defaultdict(float)
    calls = defaultdict(int)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            device_us[event.name] += event.device_time_total
            calls[event.name] += 1
    total = sum(device_us.values())
    print(f"{args.ops} {args.precision}: {total / args.steps / 1e3:.3f} ms of kernels per step "
          f"({args.steps} steps), peak memory {peak / 2**30:.2f} GiB")
    print(f"{'share':>7} {'ms/step':>9} {'calls/step':>10}  kernel")
    for name, us in sorted(device_us.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"{us / total:7.1%} {us / args.steps / 1e3:9.3f} {calls[name] / args.steps:10.1f}  {name[:100]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

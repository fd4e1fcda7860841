"""The whole training step timed on a GPU in every configuration issue 13 compares, for
bench/gpu_report.py's `step` stage (also `python bench/step_timing.py`):

    ours           Triton ops, FlatPaperSGD (16-bit weight copies in bf16), plain step
    ours+graph     the same captured in a CUDA graph (alexnet.training.step_graph, as --cuda-graph)
    eager          the same network in plain PyTorch + cuDNN, torch's foreach SGD (PaperSGD)
    eager+graph    that captured in a CUDA graph
    compile        torch.compile(eager model), default mode
    compile-max    torch.compile(eager model, mode="max-autotune") (inductor's own CUDA graphs)

for bf16 and tf32, batch 128. Each row: ms per step (CUDA events over `steps` back-to-back
steps, so a host-bound step shows), the host's ms to issue one step, peak memory, and the
ratio to eager's time measured in the same run. Every configuration is built from the same
weights, in its own try: one that fails is a row with its error.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STACKS = ("eager", "ours", "ours+graph", "eager+graph", "compile", "compile-max")  # eager first: the yardstick
PRECISIONS = {"bf16": torch.bfloat16, "tf32": torch.float32}


def make_step(stack: str, dtype: torch.dtype, state: dict, batch: int):
    from alexnet.network.config import AlexNetConfig
    from alexnet.network.model import AlexNet
    from alexnet.training.step import build_optimizer, training_step
    from alexnet.training.step_graph import StepRunner

    ops = "triton" if stack.startswith("ours") else "reference"
    model = AlexNet(AlexNetConfig(ops=ops, channels_last=True, dropout_seed=0)).cuda()
    model.load_state_dict(state)
    optimizer = build_optimizer(model, ops, dtype, 0.01, 0.9, 5e-4)
    forward = model
    if stack.startswith("compile"):
        forward = torch.compile(model, mode="max-autotune" if stack == "compile-max" else None)
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(batch, 3, 224, 224, device="cuda", generator=g).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (batch,), device="cuda", generator=g)
    finite = torch.ones((), dtype=torch.bool, device="cuda")
    runner = StepRunner(training_step, forward, optimizer, finite, capture=stack.endswith("+graph"), warmup=3,
                        log=lambda m: None)
    return lambda: runner(x, labels), runner


def time_step(step, steps: int) -> dict:
    for _ in range(6):  # compile / autotune / cuDNN algorithm choice, then capture (after 3)
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    issued = time.perf_counter() - t0
    end.record()
    torch.cuda.synchronize()
    return {"ms": start.elapsed_time(end) / steps, "host_issue_ms": issued * 1e3 / steps,
            "peak_GiB": torch.cuda.max_memory_allocated() / 2**30}


def step_rows(batch: int = 128, steps: int = 20):
    """Yields one row per (precision, stack)."""
    from alexnet.network.config import AlexNetConfig
    from alexnet.network.model import AlexNet

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    state = AlexNet(AlexNetConfig(ops="reference")).state_dict()
    eager_ms = {}
    # max-autotune last: its tuning can take minutes, and a time box cut there loses least
    order = [(p, s) for s in STACKS if s != "compile-max" for p in PRECISIONS] + \
        [(p, "compile-max") for p in PRECISIONS]
    for precision, stack in order:
        dtype = PRECISIONS[precision]
        row = {"name": f"step {precision} {stack}", "precision": precision, "stack": stack, "batch": batch}
        try:
            step, runner = make_step(stack, dtype, state, batch)
            row.update(time_step(step, steps))
            if stack.endswith("+graph"):
                row["captured"] = runner.graph is not None
            if stack == "eager":
                eager_ms[precision] = row["ms"]
            if precision in eager_ms:
                row["vs_eager"] = eager_ms[precision] / row["ms"]
        except Exception as err:  # noqa: BLE001 (a failing configuration is a row, not the end)
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
        torch.cuda.empty_cache()
        yield row


if __name__ == "__main__":
    for r in step_rows():
        print(r, flush=True)

"""The training step's host side, on the CPU: launches per step by kind and host microseconds
per step, ours against eager PyTorch + cuDNN-style ops timed the same way in the same run (issue 13).

    python bench/host_step.py                  # table: single device and one column, bf16, batch 128
    python bench/host_step.py --json           # one JSON object (fields below)
    python bench/host_step.py --precision fp32 --steps 50 --ops   # also the per-op histogram

Method. Every tensor of the step (weights, activations, gradients, optimizer buffers) lives on
torch's 'meta' device: aten ops run their real dispatch path (argument parsing, autograd,
dispatcher, shape/stride inference, the caching allocator's bookkeeping is replaced by meta
storage) but no kernel. Triton runs its real launch path too: a stand-in driver reports an
sm_90 CUDA target, and `JITFunction._do_compile` is replaced so that the first call of each
specialisation stores a stub kernel in Triton's own cache; every later call goes through
Triton's binder (argument specialisation, alignment checks), cache-key computation, cache
lookup and grid evaluation, and ends in the stub's `run`, which counts the launch. The
autotuner's benchmark returns a constant (it then keeps its first candidate) and the
instrument points TRITON_CACHE_DIR at a temporary folder so nothing it "tunes" is stored.

Counting: one step runs under a TorchDispatchMode that classifies each aten op touching a
meta tensor: `alloc` (empty*, not a device launch on a warm caching allocator), `copy`
(copy_/clone/_to_copy without a dtype change), `cast` (a dtype change), `collective` (c10d),
`view` (no launch, not counted), `sync` (_local_scalar_dense: a host-device sync; on meta it
raises, so a step that syncs cannot finish here), `custom_op` (a call of an alexnet_triton op
through torch.library: not a launch itself; the census runs its implementation, so the aten
ops and Triton launches inside are counted; the eager step makes none, kernels.runtime.dispatch.call's
fast path) and `torch_op` (every other op = one device kernel). The step counted is a warm
one (the second call): first-call work such as autotuning or state made on first use is not
per step. `launches_per_step` = triton + torch_op + copy + cast (+ collective for the column).
`launches_by_origin` attributes each launch to the project file whose code made it (the ops
autograd runs in C++ during backward, e.g. F.linear's gradients and the accumulation into
.grad, fall to the caller of backward(), alexnet/training/loop.py). `conv_side` gathers what the
convolution (kernels/conv*, kernels/_conv*) costs: its launches, the host time spent inside
its autograd Functions (timed in separate steps), and the wgrad split search (below).

Timing: the same step without the counting mode, `--steps` times after warm-up, ours and
eager interleaved call by call, garbage collection off. `host_us_per_step` is the median CPU
time the process spends on one step (time.process_time): what the host pays, and, unlike wall
time, nearly blind to other jobs sharing the CPU (on the 2-core machine this was written on,
wall-time ratios swung 1.1x-3.4x between runs; CPU-time ratios hold within ~10%). The wall
times are reported too (`wall_us_per_step`, median, and `wall_us_per_step_min`). The yardstick
`eager_host_us_per_step` is the same
network built from plain PyTorch ops (kernels.reference: F.conv2d, F.local_response_norm,
F.max_pool2d, F.dropout, F.linear) with torch's foreach SGD (PaperSGD), timed in the same
process by the same means.

Limits (what a real GPU step adds that this does not see):
- the CUDA driver's launch call (cuLaunchKernel, ~2-5 us per launch) for every launch of
  both stacks, and Triton's C launcher (packing the arguments, ~1-3 us);
- cuDNN's own host work in the eager step (descriptor setup, algorithm-cache lookup: about
  10-20 us per convolution call), so the eager yardstick here is a lower bound and the
  ratio ours/eager an upper bound;
- the caching allocator (meta storage allocation is cheaper than a cudaCaching lookup);
- on 'meta' the conv weight-gradient split search (`wgrad_splits`) returns 1 at once (it
  runs only for CUDA tensors): its per-call cost is timed separately, on a stand-in CUDA
  device, and reported as `conv_side.wgrad_splits_us_per_call`;
- first-call costs (compilation, autotuning) are excluded by design (warm-up).
The 2-core CPU this runs on is shared and slower than a GPU host's; compare ratios measured
in one run, not absolute microseconds across machines.
"""
from __future__ import annotations

import argparse
import atexit
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    if "triton" in sys.modules:
        raise RuntimeError("bench/host_step.py needs Triton's compiled-launch path: run it in a process without "
                           "TRITON_INTERPRET=1 (the tests start it as a subprocess)")
    os.environ.pop("TRITON_INTERPRET")
if "TRITON_CACHE_DIR" not in os.environ:  # a private cache: the stub "tunes" nothing into the real one
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="host_step_triton_")
    atexit.register(shutil.rmtree, os.environ["TRITON_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import torch  # noqa: E402 (after the environment above)

BATCH = 128
PRECISIONS = {"bf16": torch.bfloat16, "fp32": torch.float32}

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `python bench/<script>.py`
from bench.launch_stubs import ALL_KINDS, PYTHON_META_CALLS, count_step, install_stubs  # noqa: E402


def time_steps(steps: dict, repeats: int, warmup: int = 3) -> dict:
    """Host microseconds of one call of each step in `steps` (name -> callable): the median
    CPU time of this process, the median and the least wall time,
    interleaved call by call so that both see the same load on a shared machine."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    wall = {name: [] for name in steps}
    cpu = {name: [] for name in steps}
    gc.collect()
    gc.disable()  # as timeit: a collection landing in one stack's steps is not its cost
    try:
        for _ in range(repeats):
            for name, step in steps.items():
                c0, t0 = time.process_time(), time.perf_counter()
                step()
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    finally:
        gc.enable()
    return {name: {"cpu": statistics.median(cpu[name]) * 1e6, "wall": statistics.median(wall[name]) * 1e6,
                   "wall_min": min(wall[name]) * 1e6} for name in steps}


# =========================================================================== the step
def _config(ops: str):
    from alexnet.network.config import AlexNetConfig

    return AlexNetConfig(ops=ops, channels_last=True, dropout_seed=0)


def _fake_column_layout():
    """Rank 0 of a two-rank pair on torch's in-process 'fake' backend (collectives are no-ops)."""
    from datetime import timedelta

    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from alexnet.network.distributed import ParallelLayout

    if not dist.is_initialized():
        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    return ParallelLayout(0, 2, torch.device("meta"), "fake", timedelta(seconds=60), dist.group.WORLD, None)


def build_step(stack: str, dtype: torch.dtype, layout: str = "single", batch: int = BATCH):
    """A closure running one training step, as alexnet.training.loop does, on meta tensors.
    stack: "ours" (Triton ops, FlatPaperSGD) or "eager" (reference ops, PaperSGD)."""
    from alexnet.network.model import AlexNet
    from alexnet.training.step import build_optimizer, training_step

    install_stubs()
    config = _config("triton" if stack == "ours" else "reference")
    if layout == "single":
        with torch.device("meta"):
            model = AlexNet(config)
    else:
        from alexnet.network.parallel import ShardedAlexNet

        model = ShardedAlexNet(config, _fake_column_layout())
    model.train()
    optimizer = build_optimizer(model, config.ops, dtype, 0.01, 0.9, 5e-4)  # as alexnet.train builds it
    images = _model_input(config, batch, dtype)
    labels = torch.empty(batch, device="meta", dtype=torch.int64)
    finite = torch.ones((), dtype=torch.bool, device="meta")
    sync = getattr(model, "sync_gradients", None)

    def step():
        training_step(model, optimizer, images, labels, finite, sync)

    return step


def _model_input(config, batch: int, dtype: torch.dtype) -> torch.Tensor:
    """The batch as TrainLoader hands it to the model (channels_last): with the Triton ops the
    view of conv1's zero-padded input that the augmentation wrote (alexnet/data/augment.py
    padded_layout, kernels/conv/input_layout.py padded_view), which conv1 reads with no copy."""
    from alexnet.data.augment import padded_layout
    from alexnet.network.config import uses_kernels
    from kernels.conv.input_layout import padded_view

    size = config.image_size
    fmt = torch.channels_last
    layout = padded_layout(config.convs[0], batch, size, dtype) if uses_kernels(config.ops) else None
    if layout is None:
        return torch.empty(batch, 3, size, size, device="meta", dtype=dtype, memory_format=fmt)
    pad, padded_size, channels = layout
    buf = torch.empty(batch, channels, *padded_size, device="meta", dtype=dtype, memory_format=fmt)
    return padded_view(buf, 3, pad, (size, size))


def conv_side(dtype: torch.dtype, calls: int = 200) -> dict:
    """Host costs inside the convolution that the meta step cannot show (see Limits)."""
    from kernels.conv import configs as conv_configs
    from kernels.conv.common import ConvGeometry
    from kernels.runtime import device as device_specs

    device_specs.assume(0, device_specs.KNOWN[90])  # an H100; no CUDA call
    geoms = [ConvGeometry(BATCH, 3, 224, 224, 96, 11, 11, 4, 4, 2, 2, 1),
             ConvGeometry(BATCH, 96, 27, 27, 256, 5, 5, 1, 1, 2, 2, 2),
             ConvGeometry(BATCH, 256, 13, 13, 384, 3, 3, 1, 1, 1, 1, 1),
             ConvGeometry(BATCH, 384, 13, 13, 384, 3, 3, 1, 1, 1, 1, 2),
             ConvGeometry(BATCH, 384, 13, 13, 256, 3, 3, 1, 1, 1, 1, 2)]
    device = torch.device("cuda", 0)
    per_call = []
    for geom in geoms:
        flat = conv_configs.use_flat_reduction(geom.c_per_g)
        t0 = time.process_time()
        for _ in range(calls):
            conv_configs.wgrad_splits(geom, dtype, "tf32", flat, device)
        per_call.append((time.process_time() - t0) / calls * 1e6)
    return {"wgrad_splits_us_per_call": [round(t, 1) for t in per_call],
            "wgrad_splits_us_per_step": round(sum(per_call), 1)}


def conv_host_us(step, steps: int = 10) -> float | None:
    """Host (CPU) microseconds per step spent inside the convolution's autograd Functions
    (forward and backward, Triton launches included), or None if none is found."""
    functions = {cls for name, mod in list(sys.modules.items()) if name.startswith("kernels.conv") and mod
                 for cls in vars(mod).values()
                 if isinstance(cls, type) and issubclass(cls, torch.autograd.Function) and cls.__module__ == name}
    ops = sys.modules.get("kernels.ops")
    if ops is not None and "conv2d" in getattr(ops, "_EAGER", {}):  # the custom op's eager fast path
        functions.add(ops._EAGER["conv2d"])
    if not functions:
        return None
    spent = [0.0]

    def timed(fn):
        def wrapper(*args, **kwargs):
            t0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[0] += time.process_time() - t0

        return staticmethod(wrapper)

    saved = {cls: (cls.__dict__["forward"], cls.__dict__["backward"]) for cls in functions}
    try:
        for cls, (fwd, bwd) in saved.items():
            cls.forward, cls.backward = timed(fwd.__func__), timed(bwd.__func__)
        step()
        spent[0] = 0.0
        for _ in range(steps):
            step()
    finally:
        for cls, (fwd, bwd) in saved.items():
            cls.forward, cls.backward = fwd, bwd
    return spent[0] / steps * 1e6


def measure(precision: str = "bf16", steps: int = 20, layouts=("single", "column"), with_ops: bool = False) -> dict:
    dtype = PRECISIONS[precision]
    result = {"precision": precision, "batch": BATCH, "steps_timed": steps}
    for layout in layouts:
        row, built = {}, {}
        for stack in ("ours", "eager"):
            built[stack] = build_step(stack, dtype, layout)
            built[stack]()  # a warm step is counted: first-call work (autotuning, state on first use) is not per step
            row[stack] = count_step(built[stack])
            if not with_ops:
                row[stack].pop("ops")
            PYTHON_META_CALLS.clear()
            built[stack]()
            row[stack]["python_meta_calls"] = dict(PYTHON_META_CALLS)
        for stack, t in time_steps(built, steps).items():
            row[stack]["host_us_per_step"] = round(t["cpu"], 1)
            row[stack]["wall_us_per_step"] = round(t["wall"], 1)
            row[stack]["wall_us_per_step_min"] = round(t["wall_min"], 1)
        for key, field in (("host_ratio", "host_us_per_step"), ("wall_ratio", "wall_us_per_step"),
                           ("wall_ratio_min", "wall_us_per_step_min")):
            row[key] = round(row["ours"][field] / row["eager"][field], 2)
        result[layout] = row
    if "single" in result:  # the headline fields (issue 13): bf16 or fp32, batch 128, single device
        single = result["single"]
        result.update(launches_per_step=single["ours"]["launches_per_step"],
                      launches_by_kind=single["ours"]["launches_by_kind"],
                      host_us_per_step=single["ours"]["host_us_per_step"],
                      eager_launches_per_step=single["eager"]["launches_per_step"],
                      eager_host_us_per_step=single["eager"]["host_us_per_step"],
                      host_ratio=single["host_ratio"], wall_ratio=single["wall_ratio"])
    result["conv_side"] = conv_side(dtype)
    if "single" in result:
        step = build_step("ours", dtype, "single")
        origins = result["single"]["ours"]["launches_by_origin"]
        result["conv_side"].update(
            launches_per_step=sum(n for where, n in origins.items()
                                  if where.startswith(("kernels/conv", "kernels/_conv"))),
            host_us_per_step=round(conv_host_us(step, max(steps // 2, 1)) or 0.0, 1))
    return result


def format_table(result: dict) -> str:
    lines = [(f"host side of one training step, {result['precision']}, batch {result['batch']} "
              f"(launches stubbed; median of {result['steps_timed']} steps)"),
             f"{'layout':<8}{'stack':<7}{'launches':>9}  " + "".join(f"{k:>11}" for k in ALL_KINDS) + f"{'cpu us':>10}"]
    for layout in ("single", "column"):
        if layout not in result:
            continue
        for stack in ("ours", "eager"):
            r = result[layout][stack]
            lines.append(f"{layout:<8}{stack:<7}{r['launches_per_step']:>9}  "
                         + "".join(f"{r['launches_by_kind'][k]:>11}" for k in ALL_KINDS)
                         + f"{r['host_us_per_step']:>10.0f}")
        r = result[layout]
        lines.append(f"{layout:<8}ours / eager host time: {r['host_ratio']:.2f}x (CPU time), wall time "
                     f"{r['wall_ratio']:.2f}x (medians), {r['wall_ratio_min']:.2f}x (fastest steps)")
    cs = result["conv_side"]
    if "launches_per_step" in cs:
        lines.append(f"conv side (kernels/conv*): {cs['launches_per_step']} of ours' single-device launches, "
                     f"{cs['host_us_per_step']:.0f} us of host time per step (timed separately)")
    if "wgrad_splits_us_per_call" in cs:
        lines.append(f"conv side, not in the figures above: wgrad_splits {cs['wgrad_splits_us_per_call']} us per "
                     f"call (conv1..5), {cs['wgrad_splits_us_per_step']} us per step")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--precision", choices=tuple(PRECISIONS), default="bf16")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per stack (median)")
    ap.add_argument("--layout", choices=("single", "column", "both"), default="both")
    ap.add_argument("--ops", action="store_true", help="include the per-op histogram")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    layouts = ("single", "column") if args.layout == "both" else (args.layout,)
    result = measure(args.precision, args.steps, layouts, args.ops)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(format_table(result))
        if args.ops:
            for layout in layouts:
                for stack in ("ours", "eager"):
                    print(f"\n{layout} {stack}:")
                    for op, n in result[layout][stack]["ops"].items():
                        print(f"  {n:4d}  {op}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

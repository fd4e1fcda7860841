"""kernels/runtime/fastlaunch.py: after a specialisation's first launch, the kernel's launcher gets
exactly the arguments Triton's own JITFunction.run would give it, without going through
JITFunction.run. Checked with Triton's launcher stubbed (bench/launch_stubs.py records every
argument) on 'meta' tensors, in a subprocess: the compiled-launch path needs Triton without
the interpreter."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import json, sys
import torch
from bench.launch_stubs import _StubKernel, install_stubs

install_stubs()
import triton.runtime.jit as jit

import kernels.runtime.fastlaunch as fl
from kernels.runtime import state
from kernels.conv.common import ConvGeometry
from kernels.conv.fwd import conv2d_forward
from kernels.cross_entropy import launch_softmax_cross_entropy
from kernels.dropout import launch_column_dropout
from kernels.lrn import relu_lrn_forward
from kernels.maxpool import max_pool2d_backward, max_pool2d_forward
from kernels.sgd import launch_sgd_step

meta = dict(device="meta", dtype=torch.bfloat16)
x = torch.empty(128, 96, 55, 55, memory_format=torch.channels_last, **meta)
buffer = torch.empty(x.numel() + 1, **meta)
x_off = buffer[1:].view(128, 55, 55, 96).permute(0, 3, 1, 2)  # the same layout, 2 bytes past 16-byte alignment
pooled, idx = max_pool2d_forward(x)
fc = torch.empty(128, 4096, **meta)
seeds, call = torch.empty(2, device="meta", dtype=torch.int64), torch.empty(1, device="meta", dtype=torch.int64)
flat = [torch.empty(8192, device="meta", dtype=torch.float32) for _ in range(3)]
lr = torch.empty(1, device="meta", dtype=torch.float32)
logits, labels = torch.empty(128, 1000, **meta), torch.empty(128, device="meta", dtype=torch.int64)
finite = torch.empty((), device="meta", dtype=torch.bool)
geom = ConvGeometry(128, 256, 13, 13, 384, 3, 3, 1, 1, 1, 1, 1)
xc = torch.empty(128, 256, 13, 13, memory_format=torch.channels_last, **meta)
wc = torch.empty(384, 256, 3, 3, memory_format=torch.channels_last, **meta)
bc = torch.empty(384, **meta)
CASES = {
    "lrn": lambda: relu_lrn_forward(x, groups=2),
    "lrn_misaligned": lambda: relu_lrn_forward(x_off, groups=2),
    "max_pool": lambda: max_pool2d_forward(x),
    "max_pool_backward": lambda: max_pool2d_backward(pooled, idx, x.shape, torch.channels_last, relu_out=pooled),
    "column_dropout": lambda: launch_column_dropout(fc, seeds, call, 0.5, relu=True),
    "column_dropout_backward": lambda: launch_column_dropout(fc, seeds, call, 0.5, backward=True, relu_input=fc),
    "sgd": lambda: launch_sgd_step(flat[0], flat[1], flat[2], lr, 0.9, 5e-4, 4096, None),
    "cross_entropy": lambda: launch_softmax_cross_entropy(logits, labels, finite),
    "conv_forward": lambda: conv2d_forward(xc, wc, bc, geom, relu=True),
}

recorded, jit_runs = [], [0]
stub_run, jit_run = _StubKernel.run, jit.JITFunction.run


def record(self, *args):
    recorded.append(args)
    return stub_run(self, *args)


def counting(self, *args, **kwargs):
    jit_runs[0] += 1
    return jit_run(self, *args, **kwargs)


_StubKernel.run, jit.JITFunction.run = record, counting


def described(args):
    return [("tensor", str(a.dtype), a.data_ptr(), tuple(a.shape), a.stride()) if isinstance(a, torch.Tensor)
            else repr(a) for a in args]


out = {}
for name, case in CASES.items():
    state.SWITCHES.fast_launch = False
    for _ in range(3):  # the conv's first call tunes; the next ones launch its plan
        recorded.clear()
        case()
    triton_path = [described(a) for a in recorded]
    state.SWITCHES.fast_launch = True
    entries = len(fl._COMPILED)
    for _ in range(3):
        recorded.clear()
        jit_runs[0] = 0
        case()
    out[name] = dict(same=[described(a) for a in recorded] == triton_path, launches=len(recorded),
                     jit_runs_last_call=jit_runs[0], new_entries=len(fl._COMPILED) - entries,
                     args=len(triton_path[0]) if triton_path else 0)
print(json.dumps(out))
"""


def test_fast_path_passes_the_launcher_what_triton_passes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(ROOT), TRITON_CACHE_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600,
                          cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, row in result.items():
        assert row["launches"] >= 1 and row["args"] > 0, (name, row)
        assert row["same"], (name, row)  # every argument, constexprs in signature order included
        assert row["jit_runs_last_call"] == 0, (name, row)  # ... and Triton's JITFunction.run not called
    # a tensor 2 bytes off 16-byte alignment is another specialisation: its own entry, its own kernel
    assert result["lrn_misaligned"]["new_entries"] == 1


# The same cases with the fast paths made to step aside: a Triton newer than the tested range
# ("newer"), or a launch protocol that refuses the fast path's call ("broken": the stubbed
# launcher raises TypeError unless Triton's own JITFunction.run calls it).
FALLBACK_SCRIPT = r"""
import sys, warnings
import triton

MODE = sys.argv[1]
if MODE == "newer":
    triton.__version__ = "3.10.0"  # what kernels/runtime/versions.py reads on first use
caught = []
warnings.simplefilter("always")
warnings.showwarning = lambda message, category, *a, **k: caught.append(f"{category.__name__}: {message}")
""" + SCRIPT[:SCRIPT.index("out = {}")] + r"""
inside_jit = [False]


def counting(self, *args, **kwargs):
    jit_runs[0] += 1
    inside_jit[0] = True
    try:
        return jit_run(self, *args, **kwargs)
    finally:
        inside_jit[0] = False


def record(self, *args):
    if MODE == "broken" and not inside_jit[0]:
        raise TypeError("run() takes 15 positional arguments but 20 were given")
    recorded.append(args)
    return stub_run(self, *args)


_StubKernel.run, jit.JITFunction.run = record, counting
out = {}
for name in ("lrn", "max_pool", "conv_forward"):
    state.SWITCHES.fast_launch = False
    for _ in range(3):
        recorded.clear()
        CASES[name]()
    triton_path = [described(a) for a in recorded]
    state.SWITCHES.fast_launch = True
    for _ in range(3):
        recorded.clear()
        jit_runs[0] = 0
        CASES[name]()
    out[name] = dict(same=[described(a) for a in recorded] == triton_path, launches=len(recorded),
                     jit_runs_last_call=jit_runs[0], entries=len(fl._COMPILED))
out["warnings"] = caught
print(json.dumps(out))
"""


@pytest.mark.parametrize("mode", ["newer", "broken"])
def test_fast_paths_step_aside_outside_the_tested_versions(tmp_path, mode):
    """Under a faked Triton 3.10 (outside kernels/runtime/versions.py's tested range) the launch
    and conv-plan fast paths are never taken; with a launch protocol that refuses the fast
    path's call, the first refusal turns it off. Either way: one warning per path, every launch
    goes through Triton's own JITFunction.run with the same arguments, and the run goes on."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(ROOT), TRITON_CACHE_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT, mode], env=env, capture_output=True, text=True,
                          timeout=600, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    caught = result.pop("warnings")
    for name, row in result.items():
        assert row["launches"] >= 1 and row["same"], (name, row)
        assert row["jit_runs_last_call"] == row["launches"], (name, row)  # every launch through Triton
        assert row["entries"] == 0, (name, row)  # nothing recorded for the fast path
    launch_warnings = [w for w in caught if "kernel-launch fast path is off" in w]
    plan_warnings = [w for w in caught if "conv launch-plan fast path is off" in w]
    assert len(launch_warnings) == 1 and launch_warnings[0].startswith("RuntimeWarning"), caught
    if mode == "newer":
        assert "triton 3.10.0 is outside the tested 3.6-3.9" in launch_warnings[0]
        assert len(plan_warnings) == 1, caught
    else:
        assert "TypeError: run() takes 15" in launch_warnings[0] and not plan_warnings, caught

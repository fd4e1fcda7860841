"""Read the compiler's output for the convolution kernels, no GPU needed:

    python bench/conv_inspect.py [--layers conv3] [--dtype bf16|tf32] [--shapes single] [--passes fwd]
                                 [--dump DIR]

Compiles each candidate config of kernels/conv/configs.py for every chosen AlexNet layer and
pass for sm_90 (H100) and prints what decides speed before any timing: whether tl.dot became
Hopper wgmma (ttng.warp_group_dot, async), whether the loads feeding the reduction loop were
software-pipelined (asynchronous copies into shared memory, not plain loads into registers:
"async loads 2/2"), shared memory, registers per thread and
the stack frame that register spills go to (from the cubin, via the cuobjdump bundled
with Triton). Without a CUDA device it
stands in a driver that reports an sm_90 target, so it runs on a laptop. --dump DIR writes
each kernel's TTGIR and PTX for reading.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `python bench/<script>.py`
from bench import conv_layers  # noqa: E402
from bench.conv_layers import DTYPES, LAYERS, passes_for  # noqa: E402
from bench.conv_sweep import candidates, label  # noqa: E402
from kernels.conv import dgrad as conv_dgrad  # noqa: E402
from kernels.conv import fwd as conv_fwd
from kernels.conv import wgrad as conv_wgrad


class _Sm90Driver:
    """Just enough of Triton's CUDA driver to compile (never launch) for an H100."""
    backend = "cuda"

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")


COMPILED = []


def _compile_only(kernel, tuned, tuning, grid, args, meta, *, flops, config=None, check=None):
    """Stands in for kernels.conv.plans.launch: compile `kernel` with `config`, do not run it."""
    meta = {**meta, **config.kwargs}
    COMPILED.append(kernel.warmup(*args, grid=grid(meta), **meta, num_warps=config.num_warps,
                                  num_stages=config.num_stages))


def resources(cubin: bytes) -> str:
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", out)
    return f"regs {m[1]:>3}  stack (spills) {m[2]:>4} B" if m else "regs ?"


def describe(kernel) -> str:
    """MMA kind, how many of the loads feeding the main loop are asynchronous copies (what the
    software pipeliner needs: 2/2 for the two GEMM operands), shared memory, registers, spills."""
    ttgir = kernel.asm["ttgir"]
    wgmma = "wgmma" if "warp_group_dot" in ttgir else "mma.sync" if "ttg.nvidia_mma" in ttgir else "NO-MMA"
    # the loop with the dot, up to its yield: async copies in flight vs plain (register) loads
    loops = [body.split("scf.yield")[0] for body in ttgir.split("scf.for")[1:]]
    main = next((body for body in loops if "_dot" in body), "")
    n_async = main.count("async_copy_global_to_local") + main.count("async_tma_copy")
    n_sync = len(re.findall(r"= tt\.load ", main))
    return (f"{wgmma:8} async loads {n_async}/{n_async + n_sync}  smem {kernel.metadata.shared / 1024:5.0f}K  "
            f"{resources(kernel.asm['cubin'])}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default="conv1,conv2,conv3,conv4,conv5")
    ap.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    ap.add_argument("--shapes", default="single")
    ap.add_argument("--passes", default="fwd,dgrad,wgrad")
    ap.add_argument("--flat", choices=["auto", "both"], default="auto")
    ap.add_argument("--dump", help="directory for the TTGIR and PTX of each kernel")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        triton.runtime.driver.set_active(_Sm90Driver())
    for mod in (conv_fwd, conv_dgrad, conv_wgrad):
        mod.launch = _compile_only
    torch.backends.cudnn.allow_tf32 = True
    for shapes in args.shapes.split(","):
        for name in args.layers.split(","):
            # batch 2: sizes are not specialised, so the code is that of batch 128
            p = conv_layers.ConvProblem(LAYERS[shapes][name], DTYPES[args.dtype], batch=2, device=device)
            for pass_ in [q for q in passes_for(name) if q in args.passes.split(",")]:
                print(f"{shapes} {name} {pass_} {args.dtype}")
                for cfg in candidates(p, pass_, args.flat):
                    try:
                        p.ours(pass_, cfg, splits=1)()
                        kernel = COMPILED.pop()
                        print(f"    {label(cfg):26} {describe(kernel)}")
                        if args.dump:
                            stem = os.path.join(args.dump, f"{shapes}_{name}_{pass_}_{label(cfg).replace(' ', '_')}")
                            os.makedirs(args.dump, exist_ok=True)
                            Path(stem + ".ttgir").write_text(kernel.asm["ttgir"])
                            Path(stem + ".ptx").write_text(kernel.asm["ptx"])
                    except Exception as e:  # report, keep going
                        print(f"    {label(cfg):26} FAILED {type(e).__name__}: {str(e).splitlines()[0][:90]}")


if __name__ == "__main__":
    main()

"""Read the compiler's output for the memory-bound kernels, no GPU needed:

    python bench/inspect_memory.py [--dump DIR]

Compiles the ReLU+LRN, max-pool, dropout and SGD kernels for sm_90 (H100) at the AlexNet
shapes (batch 128, channels_last, bf16 and fp32) with the tiles their launchers pick, and
prints per kernel: registers per thread, spill bytes, and the global loads/stores per
thread with how many are 16-byte (v4) or 8-byte (v2) vectors - for a memory-bound kernel,
scalar loads mean more instructions than bytes - and the shared memory a layout change costs.
Uses bench/conv_inspect.py's stand-in sm_90 driver on a machine without CUDA. --dump DIR writes each kernel's PTX.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `python bench/<script>.py`
from bench.conv_inspect import _Sm90Driver, resources  # noqa: E402

SHAPES = {"layer1": (128, 96, 55, 55), "layer2": (128, 256, 27, 27)}


def memory_ops(ptx: str) -> str:
    loads = re.findall(r"ld\.global\S*", ptx)
    stores = re.findall(r"st\.global\S*", ptx)
    def widths(ops):
        return f"v4 {sum('.v4' in i for i in ops):2}, v2 {sum('.v2' in i for i in ops):2}"
    return f"loads {len(loads):3} ({widths(loads)})  stores {len(stores):2} ({widths(stores)})"


class _Capture:
    """Stands in for `kernel[grid]`: compiles with the launch's arguments, never runs."""

    def __init__(self, kernel, out: list):
        self.kernel, self.out = kernel, out

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.out.append(self.kernel.warmup(*args, grid=grid, **kwargs))
        return launch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dump", help="directory for each kernel's PTX")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        triton.runtime.driver.set_active(_Sm90Driver())
    import importlib

    lrn, maxpool, dropout, sgd = (importlib.import_module(f"kernels.{m}") for m in ("lrn", "maxpool", "dropout", "sgd"))

    compiled: list = []
    for module, names in [(lrn, ["_relu_lrn_fwd_kernel", "_relu_lrn_bwd_kernel"]),
                          (maxpool, ["_max_pool_fwd_kernel", "_max_pool_bwd_kernel"]),
                          (dropout, ["_dropout_kernel"]), (sgd, ["_sgd_step_kernel"])]:
        for name in names:
            setattr(module, name, _Capture(getattr(module, name), compiled))
        for name in ("check_tensor", "check_same_device"):  # CPU tensors stand in for CUDA ones
            if hasattr(module, name):
                setattr(module, name, lambda *a, **k: None)

    def report(label, fn):
        try:
            fn()
            for i, kernel in enumerate(compiled):  # one per launch (the SGD step has two)
                name = label if len(compiled) == 1 else f"{label} [launch {i}]"
                print(f"{name:44} {resources(kernel.asm['cubin'])}  smem {kernel.metadata.shared:5} B  "
                      f"{memory_ops(kernel.asm['ptx'])}")
                if args.dump:
                    Path(args.dump).mkdir(parents=True, exist_ok=True)
                    Path(args.dump, name.replace(" ", "_") + ".ptx").write_text(kernel.asm["ptx"])
            compiled.clear()
        except Exception as e:  # report, keep going
            print(f"{label:44} FAILED {type(e).__name__}: {str(e).splitlines()[0][:90]}")

    for dtype in (torch.bfloat16, torch.float32):
        dt = str(dtype).replace("torch.", "")
        for layer, shape in SHAPES.items():
            x = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)
            report(f"relu_lrn fwd {layer} {dt} groups=2", lambda: lrn.relu_lrn_forward(x, groups=2, save_u=True))
            report(f"relu_lrn bwd {layer} {dt} groups=2", lambda: lrn.relu_lrn_backward(x, x, x, groups=2))
            report(f"max_pool fwd {layer} {dt}", lambda: maxpool.max_pool2d_forward(x))
            out_hw = (shape[2] - 3) // 2 + 1
            idx = torch.zeros(shape[0], shape[1], out_hw, out_hw, dtype=torch.int8).contiguous(
                memory_format=torch.channels_last)
            dy = torch.zeros(idx.shape, dtype=dtype).contiguous(memory_format=torch.channels_last)
            report(f"max_pool bwd {layer} {dt}",
                   lambda: maxpool.max_pool2d_backward(dy, idx, shape, torch.channels_last))
        fc = torch.randn(128, 4096).to(dtype)
        report(f"dropout fc {dt}", lambda: dropout.apply_dropout_mask(fc, torch.zeros(1, dtype=torch.int64), 0.5))
    n = 60_965_224
    w = torch.zeros(n)
    report("sgd step fp32 + bf16 copy", lambda: sgd.sgd_step_(w, w, w, torch.zeros(1), low_precision_out=torch.zeros(
        n, dtype=torch.bfloat16)))


if __name__ == "__main__":
    main()

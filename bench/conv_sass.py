"""The convolutions' steady-state loops read from the compiler's machine code (SASS), no GPU needed:

    python bench/conv_sass.py [--layers conv3] [--passes wgrad] [--dtypes bf16,tf32] [--all] [--json]
                              [--arch 90|80|86|89|100|120|75] [--shapes single]
    python bench/conv_sass.py --matrix run90.jsonl run89.jsonl ...   # the compile matrix table

For every AlexNet layer x pass x dtype x config, in the variant the model runs (batch 128,
channels_last, image-major tiles wherever the block divides the 128 images (variant "image-major"),
conv1's image zero-padded to 228x228x4 (wgrad: as 228x57x16), bias fused in the forward and ReLU fused
for conv3-5, the ReLU mask in their backward, wgrad at the split count its model picks for the
target device), it compiles the kernel for the target (`--arch`, default sm_90) and disassembles
the cubin with the cuobjdump bundled with Triton; bench/sass.py finds the steady-state loop and reads it
(instructions per BLOCK_K step, the issue ratio against the tensor cores' time, copies,
spills, registers, shared memory: its docstring says how). The matmul tutorial's kernel,
compiled at the same tiles in the same run, is the calibration row. These are compiler
readings, predictions of speed, not timings. Deterministic for a given Triton version.
Without a CUDA device it stands in bench/conv_inspect.py's driver for that target.

`--arch` also picks the device the tuning models (kernels/runtime/device.py `KNOWN[arch]`: its
per-block shared memory, SM count and the rest): the kept configs are those that device keeps,
and the wgrad split counts those its model picks. The issue ratio needs the tensor cores' rate
(bench/sass.py FMA_PER_CYCLE: sm_75, sm_80, sm_90); elsewhere (sm_86/89/120: HMMA at a rate that
differs between a part's GeForce and data-centre versions; sm_100: tcgen05, which the loop
reader does not know) a row is the plain reading: compiled, shared memory against the limit,
spills, registers. `--matrix` summarises `--json` runs of several targets into one table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton import Config
from triton.backends.compiler import GPUTarget

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `python bench/<script>.py`
from bench.conv_inspect import _Sm90Driver
from bench.conv_layers import LAYERS, passes_for
from bench.sass import FMA_PER_CYCLE, HEADER, Reading, matrix, read_kernel, summary, table_row
from kernels.conv import configs as conv_configs
from kernels.conv import dgrad as conv_dgrad
from kernels.conv import fwd as conv_fwd
from kernels.conv import wgrad as conv_wgrad
from kernels.conv.common import ConvGeometry, dot_precision, pix_multiple
from kernels.conv.input_layout import pad_input, wgrad_view
from kernels.runtime import device as device_specs

BATCH = 128
DTYPES = {"bf16": (torch.bfloat16, True), "tf32": (torch.float32, True), "fp16": (torch.float16, True),
          "fp32": (torch.float32, False)}  # name -> (dtype, cudnn.allow_tf32)
RELU_LAYERS = ("conv3", "conv4", "conv5")  # the model fuses ReLU into these (conv1-2: ReLU + LRN after)
# ... and their ReLU's gradient mask is applied by the consumer (alexnet/network/model.py relu_mask_moves):
# conv4's and conv5's dgrad epilogues write dx * (x > 0) for conv3 and conv4, pool5's backward for conv5
INPUT_RELU_LAYERS = ("conv4", "conv5")


class _Driver(_Sm90Driver):
    def __init__(self, arch: int):
        self.arch = arch

    def get_current_target(self):
        return GPUTarget("cuda", self.arch, 32)


ARCHS = sorted(device_specs.KNOWN)  # the targets --arch takes (75 fp16/fp32 only: no bf16, no tf32 there)


# ----------------------------------------------------------------- compiling the kernels
COMPILED = []


def _compile_only(kernel, tuned, tuning, grid, args, meta, *, flops, config=None, check=None):
    """Stands in for kernels.conv.plans.launch: compile `kernel` with `config`, never run it."""
    meta = {**meta, **config.kwargs}
    COMPILED.append(kernel.warmup(*args, grid=grid(meta), **meta, num_warps=config.num_warps,
                                  num_stages=config.num_stages))


class ModelPass:
    """One layer's pass with the model's inputs (random CPU tensors, never read)."""

    def __init__(self, layer, name: str, dtype: torch.dtype):
        L, cl = layer, torch.channels_last
        self.name, self.relu, self.input_relu = name, name in RELU_LAYERS, name in INPUT_RELU_LAYERS
        self.geom = ConvGeometry(BATCH, L.in_chan, L.size, L.size, L.out_chan, L.kernel, L.kernel, L.stride,
                                 L.stride, L.pad, L.pad, L.groups)
        self.x = torch.empty(self.geom.input_shape, dtype=dtype).contiguous(memory_format=cl)
        self.w = torch.empty(self.geom.weight_shape, dtype=dtype).contiguous(memory_format=cl)
        self.b = torch.empty(L.out_chan, dtype=dtype)
        self.dy = torch.empty(self.geom.output_shape, dtype=dtype).contiguous(memory_format=cl)
        self.x_k, self.w_k, self.geom_k = pad_input(self.x, self.w, self.geom)
        view = wgrad_view(self.x_k, self.geom_k)
        self.wgrad_geom = view[1] if view is not None else self.geom_k

    def variant(self, pass_: str, cfg: Config | None = None) -> str:
        parts = ["NHWC"]
        if cfg is not None and conv_configs.image_major(pass_, cfg, pix_multiple(BATCH)):
            parts.append("image-major")
        g = self.wgrad_geom if pass_ == "wgrad" else self.geom_k
        if g != self.geom and pass_ != "dgrad":
            parts.append(f"{g.height}x{g.width}x{g.in_chan} unpadded {g.kernel_h}x{g.kernel_w}")
        if pass_ == "fwd":
            parts.append("bias+relu" if self.relu else "bias")
        else:
            if self.relu:
                parts.append("dy pre-masked")
            if pass_ == "dgrad" and self.input_relu:
                parts.append("dx*(x>0) epilogue")
        return " ".join(parts)

    def tuning_and_meta(self, pass_: str):
        """(ConvTuning, the meta its `fits` sees) for this pass in the model's variant."""
        tuning = {"fwd": conv_configs.FWD, "dgrad": conv_configs.DGRAD, "wgrad": conv_configs.WGRAD}[pass_]
        geom = self.geom if pass_ == "dgrad" else self.geom_k
        red_chan = geom.k_per_g if pass_ == "dgrad" else geom.c_per_g
        if pass_ == "wgrad":  # conv1: the padded image as column blocks (wgrad_view)
            geom = self.wgrad_geom
            red_chan = geom.c_per_g
        meta = dict(geom.constexprs(), FLAT=conv_configs.use_flat_reduction(red_chan, pass_),
                    HAS_BIAS=pass_ == "fwd", IMG_MULT=pix_multiple(BATCH), PRECISION=dot_precision(self.x.dtype))
        if pass_ == "dgrad":  # how it reads the weight: in place (16-bit channels_last) or a copy
            meta.update(zip(("WT_SG", "WT_SK", "WT_SC", "WT_SH", "WT_SW"), conv_dgrad._weight_operand(self.w, geom)[1]))
        return tuning, meta

    def splits(self, cfg: Config) -> int:
        """wgrad's split count as its model picks it on the target (`device.offline()`, set by `readings`)."""
        return conv_configs.wgrad_splits(self.wgrad_geom, self.x.dtype, dot_precision(self.x.dtype),
                                         cfg.kwargs["FLAT"], self.x.device, cfg, spec=device_specs.offline())

    def compile(self, pass_: str, cfg: Config):
        """The GEMM kernel of the pass; after a fused ReLU the backward GEMMs read dy already
        masked (by the consumer: the next conv's dgrad epilogue or pool5's backward); conv4's
        and conv5's dgrad epilogues apply the mask of the ReLU before them (dx * (x > 0))."""
        if pass_ == "fwd":
            conv_fwd.conv2d_forward(self.x_k, self.w_k, self.b, self.geom_k, relu=self.relu,
                                    out_format=torch.channels_last, config=cfg)
        elif pass_ == "dgrad":
            conv_dgrad.conv2d_input_grad(self.dy, self.w, self.geom, config=cfg,
                                         relu_input=self.x if self.input_relu else None)
        else:
            conv_wgrad.conv2d_weight_grad(self.dy, self.x_k, self.geom_k, weight_format=torch.channels_last,
                                          config=cfg, splits=self.splits(cfg))
        return COMPILED.pop()


@triton.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                  BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
                  GROUP_SIZE_M: tl.constexpr):
    """Triton's matmul tutorial (03-matrix-multiplication.py) kernel, verbatim but for comments."""
    pid = tl.program_id(axis=0)
    num_pid_m = tl.cdiv(M, BLOCK_SIZE_M)
    num_pid_n = tl.cdiv(N, BLOCK_SIZE_N)
    num_pid_in_group = GROUP_SIZE_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_SIZE_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_SIZE_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    offs_am = (pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)) % M
    offs_bn = (pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)) % N
    offs_k = tl.arange(0, BLOCK_SIZE_K)
    a_ptrs = a_ptr + (offs_am[:, None] * stride_am + offs_k[None, :] * stride_ak)
    b_ptrs = b_ptr + (offs_k[:, None] * stride_bk + offs_bn[None, :] * stride_bn)
    accumulator = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_SIZE_K)):
        a = tl.load(a_ptrs, mask=offs_k[None, :] < K - k * BLOCK_SIZE_K, other=0.0)
        b = tl.load(b_ptrs, mask=offs_k[:, None] < K - k * BLOCK_SIZE_K, other=0.0)
        accumulator = tl.dot(a, b, accumulator)
        a_ptrs += BLOCK_SIZE_K * stride_ak
        b_ptrs += BLOCK_SIZE_K * stride_bk
    c = accumulator.to(c_ptr.dtype.element_ty)
    offs_cm = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
    offs_cn = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    c_ptrs = c_ptr + stride_cm * offs_cm[:, None] + stride_cn * offs_cn[None, :]
    tl.store(c_ptrs, c, mask=(offs_cm[:, None] < M) & (offs_cn[None, :] < N))


def calibration(dtype_name: str, cfg: Config, arch: int) -> Reading:
    """The tutorial's GEMM (4096^3, row-major A and B) at `cfg`'s tiles."""
    dtype = DTYPES[dtype_name][0]
    a, b, c = (torch.empty(64, 64, dtype=dtype) for _ in range(3))
    k = cfg.kwargs
    r = Reading("calibration", "gemm", dtype_name, label(cfg), True, variant="matmul tutorial, 4096^3")
    try:
        kernel = matmul_kernel.warmup(a, b, c, 4096, 4096, 4096, 4096, 1, 4096, 1, 4096, 1, grid=(1,),
                                      BLOCK_SIZE_M=k["BLOCK_M"], BLOCK_SIZE_N=k["BLOCK_N"],
                                      BLOCK_SIZE_K=k["BLOCK_K"], GROUP_SIZE_M=8, num_warps=cfg.num_warps,
                                      num_stages=cfg.num_stages)
        return read_kernel(kernel, r, (k["BLOCK_M"], k["BLOCK_N"], k["BLOCK_K"]), cfg.num_warps,
                           _rate(dtype_name, arch), arch)
    except Exception as e:  # reported, not fatal
        r.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:100] if str(e).strip() else ''}"
        return r


def label(cfg: Config) -> str:
    k = cfg.kwargs
    flat = {True: " flat", False: ""}.get(k.get("FLAT"), "")
    regs = " regs" if k.get("STAGE_REGS") else ""  # tf32 wgrad: operands staged through registers
    return f"{k['BLOCK_M']}x{k['BLOCK_N']}x{k['BLOCK_K']} w{cfg.num_warps} s{cfg.num_stages}{flat}{regs}"


def _rate(dtype_name: str, arch: int) -> int | None:
    kind = "16bit" if dtype_name in ("bf16", "fp16") else "tf32" if dtype_name == "tf32" else "ieee"
    return FMA_PER_CYCLE.get(arch, {}).get(kind)


def read_pass(mp: ModelPass, pass_: str, dtype_name: str, cfg: Config, kept: bool, arch: int) -> Reading:
    k = cfg.kwargs
    r = Reading(mp.name, pass_, dtype_name, label(cfg), kept, variant=mp.variant(pass_, cfg))
    try:
        if pass_ == "wgrad":
            r.splits = mp.splits(cfg)
        kernel = mp.compile(pass_, cfg)
        return read_kernel(kernel, r, (k["BLOCK_M"], k["BLOCK_N"], k["BLOCK_K"]), cfg.num_warps,
                           _rate(dtype_name, arch), arch)
    except Exception as e:  # reported, not fatal
        r.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:100] if str(e).strip() else ''}"
        return r


def readings(layers, passes, dtypes, shapes="single", every=False, arch=90, max_configs=None):
    """Yield a Reading per compiled kernel, the calibration row of each dtype first."""
    if not torch.cuda.is_available():
        triton.runtime.driver.set_active(_Driver(arch))
    spec = device_specs.KNOWN[arch]
    with device_specs.use_offline(spec):  # the target is the device the tuning models (wgrad's split model)
        yield from _readings(layers, passes, dtypes, shapes, every, arch, max_configs, spec)


def _readings(layers, passes, dtypes, shapes, every, arch, max_configs, spec):
    """`readings` with `spec` (the target) as the offline device."""
    for mod in (conv_fwd, conv_dgrad, conv_wgrad):
        mod.launch = _compile_only
    conv_wgrad._sum_splits = lambda part, out: None  # the second (reduction) launch of a split wgrad
    for dtype_name in dtypes:
        if not device_specs.supports(spec, dtype_name):  # sm_75: no bf16, no tf32
            print(f"conv_sass: sm_{arch} has no {dtype_name}: skipped", file=sys.stderr)
            continue
        dtype, tf32 = DTYPES[dtype_name]
        torch.backends.cudnn.allow_tf32 = tf32
        yield calibration(dtype_name, conv_configs.FWD.configs[0], arch)
        for name in layers:
            mp = ModelPass(LAYERS[shapes][name], name, dtype)
            for pass_ in [p for p in passes_for(name) if p in passes]:
                tuning, meta = mp.tuning_and_meta(pass_)
                listed = tuning.candidates(dot_precision(dtype), mp.x.element_size())[:max_configs]
                kept = tuning.kept(listed, meta, mp.x.element_size(), spec)  # as the device's tuner keeps them
                off = [c for c in listed if every and not any(c.kwargs == k.kwargs and c.num_warps == k.num_warps
                                                               for k in kept)]
                for cfg, is_kept in [(c, True) for c in kept] + [(c, False) for c in off]:
                    yield read_pass(mp, pass_, dtype_name, Config({**cfg.kwargs, "FLAT": meta["FLAT"]},
                                    num_warps=cfg.num_warps, num_stages=cfg.num_stages), is_kept, arch)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default="conv1,conv2,conv3,conv4,conv5")
    ap.add_argument("--passes", default="fwd,dgrad,wgrad")
    ap.add_argument("--dtypes", default="bf16,tf32", help=f"any of {','.join(DTYPES)} (fp32: IEEE, no tf32)")
    ap.add_argument("--shapes", default="single", help="single (the one-device model) or shard")
    ap.add_argument("--all", action="store_true", help="also the configs the tuner rules out for the shape")
    ap.add_argument("--arch", type=int, choices=ARCHS, default=90,
                    help="compile for sm_ARCH, keeping the configs that device keeps (kernels/runtime/device.py)")
    ap.add_argument("--max-configs", type=int, help="only the first N listed configs of each pass")
    ap.add_argument("--json", action="store_true", help="one JSON object per compiled kernel")
    ap.add_argument("--summarize", metavar="JSONL", help="print the markdown summary of a --json run's output")
    ap.add_argument("--matrix", metavar="JSONL", nargs="+", help="print the compile matrix of --json runs' outputs")
    args = ap.parse_args(argv)
    if args.matrix:
        print(matrix([json.loads(line) for f in args.matrix for line in Path(f).read_text().splitlines()
                      if line.strip()]))
        return
    if args.summarize:
        print(summary([json.loads(line) for line in Path(args.summarize).read_text().splitlines() if line.strip()]))
        return
    if not args.json:
        print(f"triton {triton.__version__}, sm_{args.arch}, batch {BATCH}: compiler readings, not timings")
        print(HEADER)
    for r in readings(args.layers.split(","), args.passes.split(","), args.dtypes.split(","), args.shapes,
                      args.all, args.arch, args.max_configs):
        print(json.dumps({**r.row(), "triton": triton.__version__, "arch": args.arch}) if args.json
              else table_row(r), flush=True)


if __name__ == "__main__":
    main()

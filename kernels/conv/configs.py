"""Tile configurations of the convolution kernels: the one place to edit when tuning.

Each kernel (forward, dgrad, wgrad) has a `ConvTuning`:
    configs      the autotuner's candidates on a GPU: a handful of wgmma-eligible tiles for
                 H100 (BLOCK_M a multiple of 64, 4 or 8 warps, BLOCK_K 32/64, 3-4 stages);
    small        used untuned for problems under `min_flops` (tests, tiny batches);
    interpreter  the single config on Triton's CPU interpreter (keeps the tests fast);
    fits         drops candidates a shape cannot use (tiles far wider than the problem,
                 shared memory over the budget of the device the tensors are on,
                 kernels/runtime/device.py); at least one config always survives.
`ConvTuning.kept` adapts the lists to that device (`for_device`): fewer pipeline stages where a
tile overflows its shared memory (99 KB per block on sm_86/89/120, 163 KB on sm_80), no tiles
that spill on mma.sync parts (`MMA_SYNC_REGS`). The lists themselves are tuned for H100.
The autotuner keys on `key` (pixel-count bucket, channels per group, kernel, stride, the
batch's power-of-two factor that decides which tiles run image-major, precision) plus the
dtypes, so each AlexNet layer is tuned once per process and batch size class.

8-warp configs (marked "8w"): some Triton versions miscompile a flattened (kh, kw, c) loop
at num_warps=8. The forward and dgrad loops are flattened that way;
tests/test_conv.py::test_every_gpu_config checks every config listed here on the GPU:
drop any that fails there. `bench/conv_sweep.py` times each config per layer, bypassing the
autotuner, to fit these lists.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import torch
import triton
from triton import Config

from ..runtime import device as device_specs
from ..runtime.device import DeviceSpec
from ..runtime.layout import cdiv
from ..runtime.state import memo


def _tiles(rows, group_m=None):
    """triton.Configs from (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) rows."""
    out = []
    for bm, bn, bk, warps, stages in rows:
        kwargs = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
        if group_m is not None:
            kwargs["GROUP_M"] = group_m
        out.append(Config(kwargs, num_warps=warps, num_stages=stages))
    return out


AUTOTUNE_MIN_FLOPS = 2e9  # below this a problem runs `small` untuned (AlexNet layers at batch 128: 27-150 GFLOP)

# Forward: GEMM M = N*OH*OW pixels, N = K/g output channels, reduction (kh, kw, c).
FWD_TILES = [
    # BLOCK_M, BLOCK_N, BLOCK_K, warps, stages
    (128, 128, 64, 4, 3),
    (128, 128, 32, 4, 4),
    (128, 64, 64, 4, 4),    # K/g = 192 (conv4 per group) = 3 x 64
    (64, 128, 64, 4, 4),
    (128, 128, 16, 4, 5),   # C/g = 48 (conv2): exact 16-channel chunks instead of 64 with 25% masked
    (128, 256, 64, 8, 3),   # 8w; K/g = 256
    (256, 128, 64, 8, 3),   # 8w
]
# True fp32 (IEEE, cudnn.allow_tf32 off) runs on the FMA pipes with operands in registers:
# small tiles, few stages, so nothing spills (bench/conv_sass.py --dtypes fp32).
IEEE_TILES = [
    (64, 64, 32, 4, 2),
    (64, 128, 32, 4, 2),    # (128, 64, 32) spills in conv3's forward
]
# Input gradient: GEMM M = N*H*W input pixels, N = C/g, reduction (kh, kw, k).
DGRAD_TILES = [
    (128, 128, 64, 4, 3),
    (128, 128, 32, 4, 4),
    (128, 64, 64, 4, 4),    # C/g = 48 (conv2), 192 (conv4/5)
    (128, 64, 128, 4, 3),   # C/g = 48 (conv2): 128-deep steps where K/g is whole 128-chunks
    (64, 128, 64, 4, 4),
    (128, 128, 32, 8, 4),   # 8w
    (128, 256, 64, 8, 3),   # 8w; C/g = 256 (conv3)
    (256, 128, 64, 8, 3),   # 8w
]
# Weight gradient: GEMM M = K/g, N = KH*KW*C/g, reduction over N*OH*OW pixels (split).
# The index work of a step scales with the B (x) tile, BLOCK_K x BLOCK_N, the MMA work with
# BLOCK_M too: tiles with BLOCK_M < 128, or 8 warps on a 32-deep step, issue more instructions
# than the tensor cores need (bench/conv_sass.py: ratio 0.8-1.1) and are not listed.
WGRAD_TILES = [
    (128, 128, 64, 4, 3),
    (128, 128, 32, 4, 4),
    (128, 64, 64, 4, 4),    # C/g = 64 in tap blocks (wider runs: pruned, `_wgrad_fits`)
    (128, 256, 64, 8, 3),   # 8w
    (256, 128, 64, 8, 3),   # 8w; K/g = 384 (conv3) in 1.5 blocks: M = 256 + 128
]
# tf32 (4-byte operands) has its own wgrad list, staged through registers (STAGE_REGS, see
# wgrad.py): both operands are channel-contiguous in channels_last, i.e. M/N-major for
# wgrad's reduction over pixels, and Hopper's tf32 wgmma reads only K-major shared memory.
# Streamed straight into it they go 4 bytes per copy, each element with its own address and
# mask (bench/conv_sass.py: 64 4-byte copies per thread and step at 128x128x32/4w, issue ratio
# 0.71-0.86). Staged, they come in 16-byte copies and reach the MMA K-major by way of
# registers (wgmma RS): 0.41-0.79 with these tiles, no 4-byte copies. 8 warps halve the
# index work per thread; 256 rows only where K/g >= 256 (conv3, conv4); 128x64x64 holds
# conv4/5's 192 channels per group in whole blocks. Not listed: 64-deep 128x128 (spills
# inside the loop) and 256x128x64/2 stages (spills).
WGRAD_TF32_TILES = [
    (128, 128, 32, 4, 4),
    (128, 256, 32, 8, 4),   # 8w
    (256, 128, 32, 8, 4),   # 8w; K/g >= 256 (conv3, conv4)
    (128, 128, 32, 8, 4),   # 8w
    (128, 64, 64, 4, 4),    # C/g = 192 (conv4/5) in whole blocks
]


def _np2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def smem_bytes(cfg: Config, elem: int, spec: DeviceSpec | None = None) -> int:
    """Shared memory a config's main loop holds on `spec`'s device (default: the current one):
    every operand tile the loop streams (A, B) in each of its pipeline buffers (num_stages, or
    one fewer on mma.sync parts: `DeviceSpec.pipeline_buffers`). The loops stream exactly these
    two operands (the ReLU mask is applied outside them, `common.relu_grad`); a third stream
    would have to be added here."""
    k = cfg.kwargs
    operand_tiles = [k["BLOCK_M"] * k["BLOCK_K"], k["BLOCK_K"] * k["BLOCK_N"]]
    return (spec or device_specs.current()).pipeline_buffers(cfg.num_stages) * sum(operand_tiles) * elem


def _smem_ok(cfg: Config, elem: int, spec: DeviceSpec | None) -> bool:
    """Whether the config's pipeline buffers fit the device's per-block budget (`DeviceSpec.smem_budget`;
    spec None: the current device's, `device.current()`)."""
    spec = spec or device_specs.current()
    return smem_bytes(cfg, elem, spec) <= spec.smem_budget


# On mma.sync parts (sm_80/86/89/120: `DeviceSpec.mma` "mma") each thread holds its slice of
# both operand tiles in registers beside its accumulators; wgmma (sm_90) and tcgen05 (sm_100)
# read them from shared memory. Triton 3.6 compiles 4-warp 128x128x64 16-bit tiles (128
# accumulators + 64 operand registers per thread) to 255 registers and spills 8-152 B there
# (conv1 fwd, conv2-4 wgrad on sm_89/120; bench/RESULTS.md "Compile matrix"); tiles at up to
# 176 (128x128x32, 128x64x128, the 8-warp 128x256x64) do not.
MMA_SYNC_REGS = 176


def _thread_registers(cfg: Config, elem: int) -> int:
    """32-bit registers per thread for the accumulator and one step's operand tiles."""
    k = cfg.kwargs
    threads = cfg.num_warps * 32
    acc = k["BLOCK_M"] * k["BLOCK_N"] // threads
    operands = (k["BLOCK_M"] + k["BLOCK_N"]) * k["BLOCK_K"] * elem // 4 // threads
    return acc + operands


_RESTAGED = memo("conv.restaged", "(id of a listed config, stages) -> that config with fewer stages (the same object)")


def for_device(cfg: Config, elem: int, spec: DeviceSpec) -> Config | None:
    """`cfg` as `spec`'s device runs it: itself where its pipeline buffers fit the device's
    shared memory, else, if it fits the H100 the lists are tuned on, the same tile with as few
    fewer stages as fit (down to 2: an sm_86/89/120 part's 99 KB per block holds 128x256x32 tf32
    in 2 stages, not 4); None where no stage count fits, or where the tile would spill on an
    mma.sync part (`MMA_SYNC_REGS`)."""
    if spec.mma == "mma" and _thread_registers(cfg, elem) > MMA_SYNC_REGS:
        return None
    reference = device_specs.KNOWN[90]
    if smem_bytes(cfg, elem, reference) > reference.smem_budget:  # not a tile the lists keep anywhere
        return cfg if _smem_ok(cfg, elem, spec) else None
    for stages in range(cfg.num_stages, 1, -1):
        out = cfg if stages == cfg.num_stages else _RESTAGED.setdefault(
            (id(cfg), stages), Config(dict(cfg.kwargs), num_warps=cfg.num_warps, num_stages=stages))
        if _smem_ok(out, elem, spec):
            return out
    return None


def _fwd_fits(cfg: Config, meta: dict, elem: int, spec: DeviceSpec | None = None) -> bool:
    k = cfg.kwargs
    red = meta["KH"] * meta["KW"] * meta["C_PER_G"] if meta["FLAT"] else meta["C_PER_G"]
    useful_k16 = k["BLOCK_K"] >= 32 or meta["FLAT"] or meta["C_PER_G"] % 32 != 0
    # FLAT (few channels) decodes every A element: only 128x128 tiles amortise that
    # (bench/conv_sass.py: BLOCK_M or BLOCK_N 64, or BLOCK_K 16, issue > 0.85 of the MMA time;
    # BLOCK_M 256 spills in bf16, and BLOCK_K 64 too unless the conv is unpadded, as conv1
    # is on its padded image: 0.35 there)
    unpadded = meta["PH"] == 0 and meta["PW"] == 0
    wide = not meta["FLAT"] or meta.get("PRECISION") == "ieee" or (
        k["BLOCK_M"] == 128 and k["BLOCK_N"] >= 128 and (k["BLOCK_K"] == 32 or unpadded and k["BLOCK_K"] == 64))
    # 64-wide channel blocks where 128-wide ones divide K/g (conv2's 128 per group): 0.70 of the
    # MMA time for 128x64x64 (bench/conv_sass.py, bf16); kept for K/g = 192 (conv4), 3 x 64
    narrow_ok = k["BLOCK_N"] >= 128 or meta["K_PER_G"] % 128 != 0 or meta.get("PRECISION") == "ieee"
    return (_smem_ok(cfg, elem, spec) and k["BLOCK_N"] <= _np2(meta["K_PER_G"]) and k["BLOCK_K"] <= _np2(red)
            and useful_k16 and wide and narrow_ok)


def _dgrad_fits(cfg: Config, meta: dict, elem: int, spec: DeviceSpec | None = None) -> bool:
    k = cfg.kwargs
    red = meta["KH"] * meta["KW"] * meta["K_PER_G"] if meta["FLAT"] else meta["K_PER_G"]
    # a 16-bit weight read in place (dgrad.py `_weight_operand`, k not contiguous): 8 warps on a
    # 32-deep step read 0.73-0.76 of the MMA time in bench/conv_sass.py (conv3-5, bf16)
    in_place_ok = meta.get("WT_SK", 1) == 1 or not (cfg.num_warps == 8 and k["BLOCK_K"] == 32)
    # 128-deep steps only where they divide the reduction's channels (conv2's and conv5's 128 and
    # conv3's 384 per group, not conv4's 192: a half-masked chunk per tap)
    deep_ok = k["BLOCK_K"] <= 64 or red % k["BLOCK_K"] == 0
    return (_smem_ok(cfg, elem, spec) and k["BLOCK_N"] <= _np2(meta["C_PER_G"]) and k["BLOCK_K"] <= _np2(red)
            and in_place_ok and deep_ok)


def image_major(pass_: str, cfg: Config, img_mult: int) -> bool:
    """Whether the kernel of `pass_` ("fwd", "dgrad", "wgrad") runs image-major tiles with `cfg`
    (common.image_block; the rule each kernel states as its IMAGE_MAJOR constexpr): its block of
    pixels (a tile's rows; for wgrad a step's pixels) divides the batch's power-of-two factor
    `img_mult` (IMG_MULT), and the forward/dgrad loop is the tap loop, not FLAT."""
    k = cfg.kwargs
    if pass_ == "wgrad":
        return img_mult % k["BLOCK_K"] == 0
    return img_mult % k["BLOCK_M"] == 0 and not k.get("FLAT")


def _wgrad_fits(cfg: Config, meta: dict, elem: int, spec: DeviceSpec | None = None) -> bool:
    k = cfg.kwargs
    cols = meta["KH"] * meta["KW"] * meta["C_PER_G"] if meta["FLAT"] else meta["C_PER_G"]
    # 64-wide column blocks read 0.71-0.73 of the MMA time in bench/conv_sass.py (conv2, conv5,
    # bf16): only for column runs too narrow for 128 (64 channels per group in tap blocks) and
    # for 16-bit flat columns that 128-wide blocks would pad 10% more (conv1's 528: 576 vs 640;
    # 0.67 in bf16, 0.90 in tf32)
    flat_fit = elem == 2 and meta["FLAT"] and 11 * cdiv(cols, 64) * 64 <= 10 * cdiv(cols, 128) * 128
    narrow_ok = k["BLOCK_N"] >= 128 or _np2(cols) <= 64 or flat_fit
    # conv1's FLAT columns in tf32 (4 padded channels per tap, or 16 in its column-block view,
    # input_layout.wgrad_view): with 128 accumulators per thread the register-staged loop spills
    # 16-176 B (bench/conv_sass.py; conv2's 48-channel FLAT columns do not)
    roomy = not (elem == 4 and meta["FLAT"] and meta["C_PER_G"] < 32
                 and k["BLOCK_M"] * k["BLOCK_N"] > 64 * 32 * cfg.num_warps)
    # image-major (the step's BLOCK_K pixels divide the batch, IMG_MULT): the loop keeps both
    # operands' offset tiles live; in tf32, 128x128 in 4 warps (128 accumulators and both staged
    # operand tiles per thread) then needs 255 registers and spills 16 B (conv3, conv4)
    roomy = roomy and not (elem == 4 and image_major("wgrad", cfg, meta.get("IMG_MULT", 1)) and cfg.num_warps == 4
                           and k["BLOCK_M"] * k["BLOCK_N"] >= 128 * 128)
    # mma.sync parts: 8-warp 64-deep tiles in 3 stages spill 24-48 B on sm_80 (conv3/conv4 wgrad,
    # 16-bit; Triton 3.6, bench/RESULTS.md "Compile matrix"); in 2 stages (sm_86/89/120) they do not
    roomy = roomy and not ((spec or device_specs.current()).mma == "mma" and cfg.num_warps == 8
                           and k["BLOCK_K"] == 64 and cfg.num_stages >= 3)
    return (_smem_ok(cfg, elem, spec) and k["BLOCK_M"] <= _np2(meta["K_PER_G"]) and k["BLOCK_N"] <= _np2(cols)
            and narrow_ok and roomy)


@dataclass
class ConvTuning:
    configs: list  # tensor-core candidates (16-bit; tf32 too unless `tf32` is given)
    small: Config
    interpreter: Config
    fits: object  # (config, meta, element_size, DeviceSpec or None: the current device's) -> bool
    ieee: list = field(default_factory=list)  # candidates for true fp32 (FMA)
    tf32: list = field(default_factory=list)  # candidates for tf32 (4-byte elements), if not `configs`
    key: list = field(default_factory=lambda: ["pix_bucket", "C_PER_G", "K_PER_G", "KH", "KW", "SH", "SW",
                                               "H", "W", "IMG_MULT", "PRECISION"])
    min_flops: float = AUTOTUNE_MIN_FLOPS
    # candidates a verified plan tries on the interpreter (kernels/runtime/verify.py; tests set it,
    # empty: `interpreter` runs untuned and unchecked there)
    interpreter_candidates: list = field(default_factory=list)

    def candidates(self, precision: str, elem: int | None = None) -> list:
        """The configs the tuner may try for a precision ("ieee": the FMA list) and element size
        in bytes (4 with precision "tf32": the tf32 list where there is one; 16-bit inputs also
        carry precision "tf32", which they ignore)."""
        if precision == "ieee":
            return self.ieee
        return self.tf32 if elem == 4 and self.tf32 else self.configs

    def prune(self, configs, named_args, **meta):
        """early_config_prune for triton.autotune: the configs of this precision that fit this shape
        on the device the tensors are on (`device.spec_for`)."""
        tensor = next(a for a in named_args.values() if isinstance(a, torch.Tensor))
        return self.kept(configs, meta, tensor.element_size(), device_specs.spec_for(tensor.device))

    def kept(self, configs, meta: dict, elem: int, spec: DeviceSpec) -> list:
        """Of `configs`, those of meta's precision that fit the shape on `spec`'s device, each as the
        device runs it (`for_device`: fewer stages where the listed ones overflow its shared
        memory; none that would spill there). At least one: where none is left, the first listed
        that the device can run (`for_device`), else the one that needs the least shared memory."""
        mine = [c for c in configs if any(c is d for d in self.candidates(meta["PRECISION"], elem))]
        out = []
        for c in mine:
            d = for_device(c, elem, spec)
            if d is not None and d not in out and self.fits(d, meta, elem, spec):
                out.append(d)
        return out or [next((d for d in map(lambda c: for_device(c, elem, spec), mine) if d is not None), None)
                       or min(mine, key=lambda c: smem_bytes(c, elem, spec))]

    def autotune(self, kernel):
        # cache_results: the choice per key is stored in Triton's cache dir and read back by later
        # processes (no re-tuning, the same tiles run after run; README "Autotuning")
        return triton.autotune(configs=self.configs + self.tf32 + self.ieee, key=self.key, cache_results=True,
                               prune_configs_by={"early_config_prune": self.prune})(kernel)


FWD = ConvTuning(
    configs=_tiles(FWD_TILES, group_m=8), fits=_fwd_fits, ieee=_tiles(IEEE_TILES, group_m=8),
    small=Config(dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8), num_warps=4, num_stages=3),
    interpreter=Config(dict(BLOCK_M=64, BLOCK_N=32, BLOCK_K=32, GROUP_M=2), num_warps=4, num_stages=1),
)
DGRAD = ConvTuning(
    configs=_tiles(DGRAD_TILES, group_m=8), fits=_dgrad_fits, ieee=_tiles(IEEE_TILES, group_m=8),
    small=Config(dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8), num_warps=4, num_stages=3),
    interpreter=Config(dict(BLOCK_M=64, BLOCK_N=32, BLOCK_K=32, GROUP_M=2), num_warps=4, num_stages=1),
)
WGRAD = ConvTuning(
    configs=_tiles(WGRAD_TILES), fits=_wgrad_fits, ieee=_tiles(IEEE_TILES),
    tf32=[Config({**c.kwargs, "STAGE_REGS": True}, num_warps=c.num_warps, num_stages=c.num_stages)
          for c in _tiles(WGRAD_TF32_TILES)],
    small=Config(dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32), num_warps=4, num_stages=3),
    interpreter=Config(dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=64), num_warps=4, num_stages=1),
)


WGRAD_FLAT_BELOW = 64  # wgrad's narrowest listed column block


def use_flat_reduction(chan: int, pass_: str = "fwd") -> bool:
    """Whether a kernel flattens (kh, kw, c) into one index instead of looping over taps and
    BLOCK-wide channel chunks: for few channels (conv1's 3), where whole chunks would be mostly
    masked. wgrad's columns also go flat below one 64-wide block of channels per group (conv2's
    48: tap blocks waste a quarter of each tile and read 0.77 in bench/conv_sass.py, flat
    128x128 tiles 0.55). Forced configs may override it with FLAT in their kwargs."""
    return chan < (WGRAD_FLAT_BELOW if pass_ == "wgrad" else 16)


# ------------------------------------------------------------- split of the wgrad reduction
# The weight gradient reduces over N*OH*OW pixels (387k for conv1) into a small output
# (K x KH*KW*C/g), so it splits the pixels into `splits` ranges, each program writing an fp32
# partial that a second kernel sums in a fixed order (deterministic, no atomics). The split
# count minimises a simple model of the chosen tile on the device (`DeviceSpec`): waves of
# programs over the CTA slots (its SMs x the programs one SM holds, by shared memory and
# registers), each program's work at the device's sustained per-SM rate shared by the slots,
# plus writing and reading the partials at its memory bandwidth. Among the counts within 5% of
# the model's best it takes the smallest that fills at least two full waves (the model's rates
# are rough; a partial last wave then idles a smaller share of the machine). Computed once per
# shape, tile and device (cached).
SPLIT_PIX_QUANTUM = 128  # pixels per split (when split) are a multiple of this, and of every BLOCK_K
MIN_PIX_PER_SPLIT = 1024
MAX_SPLITS = 128
MIN_WAVES = 2
SPLIT_OVERHEAD_S = 3e-6  # the extra reduction launch


def cta_slots(cfg: Config, elem: int, spec: DeviceSpec | None = None) -> int:
    """Programs of `cfg` one SM of `spec`'s device (default: the current one) holds at once: by
    shared memory, and by registers assuming the compiler's usual ~232 per thread for a 128x128
    accumulator in 4 warps (2 programs on a 64K-register SM), half the tile per thread in 8 warps (1-2)."""
    spec = spec or device_specs.current()
    by_smem = spec.smem_per_sm // max(1, smem_bytes(cfg, elem, spec) + 1024)
    k = cfg.kwargs
    acc_regs = k["BLOCK_M"] * k["BLOCK_N"] // (cfg.num_warps * 32)  # fp32 accumulator per thread
    regs = min(255, acc_regs + 104)
    by_regs = spec.regs_per_sm // (regs * cfg.num_warps * 32)
    return max(1, min(by_smem, by_regs))


def wgrad_splits(geom, dtype: torch.dtype, precision: str, flat: bool, device: torch.device,
                 config: Config | None = None, spec: DeviceSpec | None = None) -> int:
    """Number of pixel ranges the weight-gradient reduction is split into (1 on the interpreter
    and off CUDA). `config`: the tile that will run (default: the autotuner's first candidate, as
    the split must be fixed before the tuner picks); `spec`: the device to model (default: the
    one `device` is, `device.spec_for`; given, it is modelled even without a GPU)."""
    from .._common import interpreting

    if spec is None:
        if interpreting() or device.type != "cuda":
            return 1
        spec = device_specs.spec_for(device)
    elem = torch.tensor([], dtype=dtype).element_size()
    cfg = config or WGRAD.candidates(precision, elem)[0]
    k = cfg.kwargs
    rate = "16bit" if dtype != torch.float32 else precision
    return _split_model(geom, rate, flat, spec, k["BLOCK_M"], k["BLOCK_N"], cta_slots(cfg, elem, spec))


@lru_cache(maxsize=1024)
def _split_model(geom, rate: str, flat: bool, spec: DeviceSpec, bm: int, bn: int, slots: int) -> int:
    from .._common import cdiv

    cols = cdiv(geom.kernel_h * geom.kernel_w * geom.c_per_g, bn) if flat else \
        geom.kernel_h * geom.kernel_w * cdiv(geom.c_per_g, bn)
    tiles = geom.groups * cdiv(geom.k_per_g, bm) * cols
    slots_total = spec.sm_count * slots
    tile_work_s = 2 * bm * bn * geom.n_out_pix / (spec.rate(rate) / slots)  # one tile, all pixels, one slot
    partial_bytes = 2 * 4 * (geom.out_chan * geom.c_per_g * geom.kernel_h * geom.kernel_w + geom.out_chan)
    max_splits = max(1, min(MAX_SPLITS, geom.n_out_pix // MIN_PIX_PER_SPLIT))

    def model(s):
        waves = cdiv(tiles * s, slots_total)
        return waves * tile_work_s / s + (s > 1) * (s * partial_bytes / spec.hbm_bytes_per_s + SPLIT_OVERHEAD_S)

    best = min(range(1, max_splits + 1), key=model)
    near = [s for s in range(1, max_splits + 1) if model(s) <= 1.05 * model(best)]
    full = [s for s in near if tiles * s >= MIN_WAVES * slots_total]
    return min(full) if full else best

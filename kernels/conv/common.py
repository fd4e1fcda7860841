"""What the three convolution kernels share (fwd.py, dgrad.py, wgrad.py): the problem
geometry and its input checks, the index math inside the kernels, the ReLU-gradient mask and
the launch helper that picks a tile config.

Index conventions used by every kernel (names as in the kernels):
    x   (n_img, C, height, width)        C = groups * C_PER_G, read through strides sx_*
    w   (K, C_PER_G, KH, KW)             K = groups * K_PER_G, read in OHWI order (c fastest)
    y   (n_img, K, out_h, out_w)         out_h = (height + 2*PH - KH) // SH + 1
    output pixel (n, oh, ow) reads input rows ih = oh*SH - PH + kh, cols iw = ow*SW - PW + kw.
A "pixel" index flattens (n, h, w) row-major; a "tap" index flattens (kh, kw).
The spatial sizes (H, W, OH, OW) are compile-time constants like the kernel and stride: they
never change between the steps of a training run and do not depend on the batch, and as
constants the pixel decode (n, h, w) = divmod(pix, ...) becomes a multiply-shift, not a
~20-instruction integer division per element. Pixel indices are int32 (`check_pixel_count`).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .._common import MAX_PIXELS, as_format, cdiv, check_same_device, check_tensor, interpreting
from ..runtime.state import memo

# MAX_PIXELS (kernels/runtime/checks.py): pixel indices (N*H*W, N*OH*OW) are int32 in the kernels
# (cheap in the loops); a tile may run up to BLOCK_M / BLOCK_K past the last pixel before its mask.


# ------------------------------------------------------------------------------ geometry
@dataclass(frozen=True)
class ConvGeometry:
    """Sizes of one convolution; `constexprs()` are the kernels' compile-time constants."""
    n_img: int
    in_chan: int
    height: int
    width: int
    out_chan: int
    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    groups: int

    @property
    def out_h(self) -> int:
        return (self.height + 2 * self.pad_h - self.kernel_h) // self.stride_h + 1

    @property
    def out_w(self) -> int:
        return (self.width + 2 * self.pad_w - self.kernel_w) // self.stride_w + 1

    @property
    def c_per_g(self) -> int:
        return self.in_chan // self.groups

    @property
    def k_per_g(self) -> int:
        return self.out_chan // self.groups

    @property
    def n_out_pix(self) -> int:
        return self.n_img * self.out_h * self.out_w

    @property
    def n_in_pix(self) -> int:
        return self.n_img * self.height * self.width

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return self.n_img, self.in_chan, self.height, self.width

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return self.n_img, self.out_chan, self.out_h, self.out_w

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return self.out_chan, self.c_per_g, self.kernel_h, self.kernel_w

    @property
    def flops(self) -> int:
        """2 * N*OH*OW * K * (C/g)*KH*KW: the same for the forward, dgrad and wgrad."""
        return 2 * self.n_out_pix * self.out_chan * self.c_per_g * self.kernel_h * self.kernel_w

    def constexprs(self) -> dict:
        return dict(C_PER_G=self.c_per_g, K_PER_G=self.k_per_g, KH=self.kernel_h, KW=self.kernel_w,
                    SH=self.stride_h, SW=self.stride_w, PH=self.pad_h, PW=self.pad_w,
                    H=self.height, W=self.width, OH=self.out_h, OW=self.out_w)


def _int_pair(v, name: str, least: int) -> tuple[int, int]:
    """An integer or a pair of them (any numbers.Integral, e.g. int or np.int64) as a pair of
    Python ints >= `least`; non-integers such as 1.0 are refused with a TypeError."""
    items = (v, v) if not isinstance(v, (tuple, list)) else tuple(v)
    if len(items) != 2:
        raise ValueError(f"{name} must be an integer or a pair of them, got {v!r}")
    for i in items:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise TypeError(f"{name} must be an integer or a pair of integers, got {v!r} "
                            f"({type(i).__name__})")
    if not all(int(i) >= least for i in items):
        sign = "positive" if least > 0 else "non-negative"
        raise ValueError(f"{name} must be a {sign} integer or a pair of them, got {v!r}")
    return int(items[0]), int(items[1])


def check_pixel_count(geom: ConvGeometry) -> None:
    """Refuse problems whose pixel count N*H*W (or N*OH*OW) would wrap the kernels' int32
    pixel indices: a clear error instead of addressing memory before the tensor."""
    n_pix = max(geom.n_in_pix, geom.n_out_pix)
    if n_pix > MAX_PIXELS:
        raise ValueError(f"the convolution has {n_pix} pixels per channel (N*H*W = {geom.n_img}*{geom.height}*"
                         f"{geom.width}); the kernels index pixels with 32-bit integers, up to {MAX_PIXELS}: "
                         "split the batch")


def conv_arguments(stride=1, padding=0, groups=1, dilation=1) -> tuple[tuple[int, int], tuple[int, int], int]:
    """(stride pair, padding pair, groups) as Python ints from any integers (int, np.int64, ...),
    with clear errors: TypeError for non-integers such as 1.0, ValueError for out-of-range
    values and for dilation other than 1."""
    if _int_pair(dilation, "dilation", 1) != (1, 1):
        raise ValueError(f"dilation {dilation!r} is not supported: the Triton convolution has dilation 1 only")
    stride, padding = _int_pair(stride, "stride", 1), _int_pair(padding, "padding", 0)
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral):
        raise TypeError(f"groups must be an integer, got {groups!r} ({type(groups).__name__})")
    if groups < 1:
        raise ValueError(f"groups must be a positive integer, got {groups!r}")
    return stride, padding, int(groups)


def conv_geometry(x, weight, bias=None, stride=1, padding=0, groups=1, dilation=1) -> ConvGeometry:
    """Check the arguments of a convolution and return its geometry (clear errors otherwise).
    Part of the launch plan: a call that passed the checks is remembered by everything they
    read (shapes, dtypes, devices, the interpreter switch, the arguments), so a repeated
    shape skips them (~15 us per call, three calls per conv layer and step)."""
    key = None
    if isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor) and \
            (bias is None or isinstance(bias, torch.Tensor)):
        key = (x.shape, x.dtype, x.device, weight.shape, weight.dtype, weight.device,
               None if bias is None else (bias.shape, bias.dtype, bias.device),
               _typed(stride), _typed(padding), _typed(groups), _typed(dilation), interpreting(), check_tensor)
        try:
            geom = _CHECKED.get(key)
        except TypeError:  # an unhashable argument: no plan, the checks will say what is wrong
            geom = key = None
        if geom is not None:
            return geom
    geom = _check_geometry(x, weight, bias, stride, padding, groups, dilation)
    if key is not None and len(_CHECKED) < 4096:
        _CHECKED[key] = geom
    return geom


_CHECKED = memo("conv.checked", "conv_geometry's passed checks -> geometry")


def _typed(v):
    """v with the type of each item, so that True or 1.0 (refused) never hit 1's entry."""
    if isinstance(v, (tuple, list)):
        return type(v), tuple((type(i), i) for i in v)
    return type(v), v


def _check_geometry(x, weight, bias, stride, padding, groups, dilation) -> ConvGeometry:
    check_tensor(x, "x", ndim=4)
    check_tensor(weight, "weight", ndim=4)
    if weight.dtype != x.dtype:
        raise TypeError(f"weight has dtype {weight.dtype} but x has {x.dtype}; they must match")
    check_same_device(("x", x), ("weight", weight))
    (sh, sw), (ph, pw), groups = conv_arguments(stride, padding, groups, dilation)
    n_img, in_chan, height, width = x.shape
    out_chan, c_per_g, kh, kw = weight.shape
    if in_chan % groups or out_chan % groups:
        raise ValueError(f"input channels ({in_chan}) and output channels ({out_chan}) must both be "
                         f"divisible by groups ({groups})")
    if in_chan == 0 or out_chan == 0 or kh == 0 or kw == 0:
        raise ValueError(f"empty channel or kernel dims: x {tuple(x.shape)}, weight {tuple(weight.shape)}")
    if c_per_g != in_chan // groups:
        raise ValueError(f"weight {tuple(weight.shape)} expects {c_per_g} input channels per group, but x has "
                         f"{in_chan} channels in {groups} group(s) = {in_chan // groups} per group")
    if height + 2 * ph < kh or width + 2 * pw < kw:
        raise ValueError(f"the {kh}x{kw} kernel is larger than the padded input "
                         f"({height}+2*{ph}) x ({width}+2*{pw})")
    if bias is not None:
        check_tensor(bias, "bias", ndim=1)
        if bias.dtype != x.dtype:
            raise TypeError(f"bias has dtype {bias.dtype} but x has {x.dtype}; they must match")
        check_same_device(("x", x), ("bias", bias))
        if bias.shape[0] != out_chan:
            raise ValueError(f"bias has {bias.shape[0]} elements but the weight has {out_chan} output channels")
    geom = ConvGeometry(n_img, in_chan, height, width, out_chan, kh, kw, sh, sw, ph, pw, groups)
    check_pixel_count(geom)
    return geom


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input_precision: fp32 uses tf32 tensor cores when cuDNN may
    (torch.backends.cudnn.allow_tf32, True by default) and true fp32 otherwise; 16-bit
    inputs ignore it (always fp32 accumulation)."""
    if dtype == torch.float32 and not torch.backends.cudnn.allow_tf32:
        return "ieee"
    return "tf32"


# ----------------------------------------------------------------------- in-kernel helpers
@triton.jit
def split_pixels(pix, HEIGHT: tl.constexpr, WIDTH: tl.constexpr):
    """(n, h, w) of flattened pixel indices pix = (n * HEIGHT + h) * WIDTH + w (constant sizes:
    the divisions compile to multiply-shifts)."""
    n = pix // (HEIGHT * WIDTH)
    rem = pix - n * (HEIGHT * WIDTH)
    h = rem // WIDTH
    return n, h, rem - h * WIDTH


@triton.jit
def image_block(tile, HEIGHT: tl.constexpr, WIDTH: tl.constexpr, BLOCK: tl.constexpr):
    """(n0, h, w), scalars, of pixel block `tile` in image-major order: BLOCK images
    n0 .. n0 + BLOCK - 1 at one position (h, w); tile = image block * HEIGHT*WIDTH + position,
    so neighbouring tiles are neighbouring positions, whose windows overlap in L2.
    For launches where BLOCK divides the batch (IMAGE_MAJOR, from IMG_MULT). A tap's bounds
    test is then one scalar for the whole block, and a step's offsets one scalar added to the
    images' loop-invariant offsets: the loops do a GEMM's index work (bench/conv_sass.py)."""
    block = tile // (HEIGHT * WIDTH)
    pos = tile - block * (HEIGHT * WIDTH)
    h = pos // WIDTH
    return block * BLOCK, h, pos - h * WIDTH


@triton.jit
def tile_pixels(pid_m, n_pix, HEIGHT: tl.constexpr, WIDTH: tl.constexpr, PIX_MULT: tl.constexpr,
                IMAGE_MAJOR: tl.constexpr, BLOCK_M: tl.constexpr, ROW0: tl.constexpr, ROWS: tl.constexpr):
    """(n, h, w, ok) of rows ROW0 .. ROW0 + ROWS of pixel tile `pid_m`
    (of n_pix, maps HEIGHT x WIDTH): IMAGE_MAJOR, images at one position (`image_block`: n a
    vector, h and w scalars, every row valid as BLOCK_M divides the batch); else consecutive
    pixels, decoded, the last tile's rows past n_pix masked (no mask when BLOCK_M divides
    PIX_MULT)."""
    if IMAGE_MAJOR:
        n0, h, w = image_block(pid_m, HEIGHT, WIDTH, BLOCK_M)
        n = n0 + ROW0 + tl.arange(0, ROWS)
        ok = tl.full((ROWS,), 1, tl.int1)
    else:
        pix = pid_m * BLOCK_M + ROW0 + tl.arange(0, ROWS)
        ok = in_range(pix, n_pix, PIX_MULT % BLOCK_M == 0)
        n, h, w = split_pixels(pix, HEIGHT, WIDTH)
    return n, h, w, ok


def needs_int64(*tensors) -> bool:
    """Whether element offsets into any of `tensors` can reach 2**31 (with a tile's margin):
    then the kernels compute offsets in int64 (OFF64), else in int32, which halves the
    address arithmetic in the loops."""
    span = max((1 + sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride())) for t in tensors
                if t is not None and t.numel()), default=0)
    return span >= 2**31 - 2**24


@triton.jit
def wide(v, OFF64: tl.constexpr):
    """v as an offset: int64 when the tensors need it (OFF64), else as is (int32)."""
    if OFF64:
        return v.to(tl.int64)
    else:
        return v


@triton.jit
def x_pixel_offsets(n_img, ih, iw, chan0, height: tl.constexpr, width: tl.constexpr, sx_n, sx_c, sx_h, sx_w,
                    NHWC_C: tl.constexpr, OFF64: tl.constexpr):
    """Offsets (int64 if OFF64, see `wide`) in x of pixels (n_img, ih, iw) at channel chan0: through the strides, or,
    when x is dense channels_last with NHWC_C channels (NHWC_C > 0), as pixel index * NHWC_C,
    which shows the compiler that every pixel's channel run is aligned (so the FLAT gathers of
    conv1's 4 padded bf16 channels become 8-byte vector, asynchronous copies)."""
    if NHWC_C > 0:
        return ((wide(n_img, OFF64) * height + ih) * width + iw) * NHWC_C + chan0
    else:
        return wide(n_img, OFF64) * sx_n + wide(ih, OFF64) * sx_h + wide(iw, OFF64) * sx_w + chan0 * sx_c


@triton.jit
def x_tap_offsets(kh, kw, c, width: tl.constexpr, sx_c, sx_h, sx_w, NHWC_C: tl.constexpr):
    """Offsets in x of reduction elements (kh, kw, c) from their window's corner (see
    `x_pixel_offsets`)."""
    if NHWC_C > 0:
        return (kh * width + kw) * NHWC_C + c
    else:
        return kh * sx_h + kw * sx_w + c * sx_c


def nhwc_channels(x: torch.Tensor) -> int:
    """NHWC_C for the kernels: x's channel count if x is dense channels_last, else 0."""
    return x.shape[1] if x.is_contiguous(memory_format=torch.channels_last) else 0


@triton.jit
def in_range(idx, limit, EVEN: tl.constexpr):
    """idx < limit; a constant all-true mask when the launch guarantees it (EVEN: the block
    divides `limit`), so the compiler drops the mask from loads."""
    if EVEN:
        return tl.full(idx.shape, 1, tl.int1)
    else:
        return idx < limit


@triton.jit
def in_image(i, LIMIT: tl.constexpr, LOW: tl.constexpr, HIGH: tl.constexpr):
    """0 <= i < LIMIT, testing only the sides a tap can cross (LOW, HIGH: compile-time facts
    of the geometry; an interior tap of an unpadded conv needs no mask at all)."""
    if LOW and HIGH:  # one unsigned compare: a negative i wraps above LIMIT
        return i.to(tl.uint32, bitcast=True) < LIMIT
    ok = tl.full(i.shape, 1, tl.int1)
    if LOW:
        ok = ok & (i >= 0)
    if HIGH:
        ok = ok & (i < LIMIT)
    return ok


@triton.jit
def both(ok, test):
    """ok & test, where `test` may be a scalar (an image-major tile's one bounds test) and ok a
    vector. Written as a select, which compiles to the same predicate: Triton's interpreter
    types a scalar comparison broadcast by `&` as int32, which tl.load then refuses as a mask."""
    return tl.where(test, ok, False)


@triton.jit
def relu(acc):
    """max(acc, 0) keeping NaN, as torch.relu (tl.maximum(acc, 0) would turn NaN into 0)."""
    return tl.where(acc < 0, 0.0, acc)


# ------------------------------------------------------------------- the ReLU's gradient mask
# A conv with fused ReLU gets dy for its output y = relu(z); its GEMMs need dz = dy * (y > 0).
# Masking inside the dgrad/wgrad loops costs a third load stream, forces wgmma's A operand
# through registers and spills (bench/conv_sass.py), so the mask is applied once per backward,
# here, and both GEMMs read the masked dz (one elementwise pass over dy and y). In the model
# even that pass is gone where the ReLU output feeds one consumer (conv3 -> conv4 -> conv5 ->
# pool5): the consumer applies the mask (dgrad.py's `relu_input` epilogue, the pool's backward)
# and the producer's op is told so (kernels/conv/op.py `dy_masked`).
@triton.jit
def _relu_grad_kernel(dy_ptr, y_ptr, dz_ptr, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    dy = tl.load(dy_ptr + offs, mask=ok)
    y = tl.load(y_ptr + offs, mask=ok)
    tl.store(dz_ptr + offs, tl.where(y <= 0, 0.0, dy), mask=ok)  # as torch's threshold_backward (NaN y passes)


def relu_grad(dy: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """dy where y > 0, else 0 (y: the output of the fused ReLU), in channels_last."""
    dy, y = as_format(dy, torch.channels_last), as_format(y, torch.channels_last)
    dz = torch.empty_like(dy)
    if dz.numel():
        block = 1024
        _relu_grad_kernel[(cdiv(dz.numel(), block),)](dy, y, dz, dz.numel(), BLOCK=block)
    return dz


@triton.jit
def grouped_tile(pid, n_rows, N_COLS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 GROUP_M: tl.constexpr):
    """(row block, col block) of program `pid`, walking GROUP_M row blocks across all
    column blocks before moving on, so a row block's A tile is reused from L2."""
    n_row_blocks = tl.cdiv(n_rows, BLOCK_M)
    n_col_blocks: tl.constexpr = (N_COLS + BLOCK_N - 1) // BLOCK_N
    per_group = GROUP_M * n_col_blocks
    first_row = (pid // per_group) * GROUP_M
    rows_here = tl.minimum(n_row_blocks - first_row, GROUP_M)
    return first_row + (pid % per_group) % rows_here, (pid % per_group) // rows_here


# --------------------------------------------------------------- pixel constants of a launch
def pix_multiple(n_pix: int) -> int:
    """PIX_MULT for the kernels: the largest power of two (up to 1024) dividing a pixel count, so
    a kernel drops its pixel mask when its block divides it (any batch that is a multiple of 64
    or 128 does); a constant of the batch, not of its every size, so few compiles. Of the batch
    itself it is IMG_MULT: a block that divides it runs image-major (`image_block`)."""
    return min(n_pix & -n_pix, 1024) if n_pix else 1024


def pix_bucket(n_pix: int) -> int:
    """Autotuning key for a pixel count: its power-of-two bucket."""
    return triton.next_power_of_2(max(n_pix, 1))

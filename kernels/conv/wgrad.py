"""Convolution weight and bias gradients (wgrad) as an implicit GEMM with a deterministic split.

    dw[g*K_PER_G + k, c, kh, kw] = sum_{n, oh, ow} dy'[n, oh, ow, g*K_PER_G + k]
                                                   * x[n, oh*SH-PH+kh, ow*SW-PW+kw, g*C_PER_G + c]
    db[k] = sum_{n, oh, ow} dy'[n, oh, ow, k]          dy' = dy * (y > 0) after a fused ReLU

GEMM per group g: M = K_PER_G output channels, N = KH*KW*C_PER_G (the (kh, kw, c) columns,
OHWI order), reduction over the N*OH*OW output pixels: long (387k for conv1 at batch 128)
while M x N is small, so the pixels are split into `splits` ranges of whole BLOCK_K chunks.
Each (tile, split) program writes an fp32 partial to a (splits, ...) buffer and
`_sum_splits_kernel` adds the partials in split order: deterministic, no atomics. With one
split the programs write dw / db directly in the output dtype.

The pixel order of the reduction: where BLOCK_K divides the batch (the model's 128) a step
reduces over BLOCK_K images at one output position (`_reduce_pixels`, image-major as
`common.image_block`): the step's position is three scalars, both operand tiles are a
loop-invariant offset tile plus one scalar, and x's bounds test one scalar per tap (conv2's
wgrad: 261 -> 115 SASS instructions per step, bench/RESULTS.md). Otherwise a step is
BLOCK_K consecutive pixels (n, oh, ow), decoded per step. The splits, the bias column and
the GEMM programs all take the same order.

Columns, like the forward's reduction: tap blocks (one tap, BLOCK_N channels: contiguous
loads of x) for C_PER_G >= 16, or FLAT blocks of BLOCK_N consecutive (kh, kw, c) indices for
few channels, decoded once per program. conv1 (its image zero-padded to 228x228x4 by
`pad_input`) is read as 57 column blocks of 4 pixels x 4 channels (`input_layout.wgrad_view`):
11 x 3 x 16 = 528 columns whose x runs are 48 contiguous elements (16-byte copies, no image
mask), folded back to the 11x11 weight.

The bias gradient rides along: with BIAS_GRAD the grid holds one extra column of programs
that only sum dy' over their pixel range (reading the same dy tiles as the GEMM programs of
that split, from L2), so the GEMM programs do no extra work.

Layouts: dy' (masked once per backward by `common.relu_grad` after a fused ReLU, never inside
the loop) and x through their strides; channels_last is the fast layout for both (dense
channels_last dy' is addressed by pixel index, without decoding (n, oh, ow)).
dw through its strides (any dense layout).

tf32 (STAGE_REGS, set by the tf32 configs in configs.py): channels_last makes both operands
contiguous along M or N, not along the pixels they are reduced over, and Hopper's tf32 wgmma
reads only K-major shared memory; streamed straight from global into it they would go 4 bytes
per copy, each with its own address and mask. The operands instead pass through an opaque
register move (`_through_registers`), so the compiler copies them into shared memory in 16-byte
pieces along the channels, reads them into registers and feeds A from registers and B from a
K-major buffer it writes (wgmma RS): fewer instructions per step and no 4-byte copies
(bench/conv_sass.py; bench/RESULTS.md weighs the extra shared-memory traffic). A pixel-major copy
of dy and x per call would do the same with 2 x (|dy| + |x|) more memory traffic, and x's tap
shifts would still leave its rows unaligned.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import cdiv
from .common import (
    ConvGeometry,
    both,
    dot_precision,
    image_block,
    in_image,
    in_range,
    needs_int64,
    nhwc_channels,
    pix_bucket,
    pix_multiple,
    relu_grad,
    split_pixels,
    wide,
    x_pixel_offsets,
    x_tap_offsets,
)
from .configs import SPLIT_PIX_QUANTUM, WGRAD, use_flat_reduction, wgrad_splits
from .input_layout import folded_wgrad_buffer, wgrad_view
from .plans import launch
from .verified import wgrad_check

__all__ = ["conv2d_weight_grad"]


@triton.jit
def _dy_tile_t(dy_ptr, dy_chan, k_ok, p, p_ok, sdy_n, sdy_h, sdy_w, OH: tl.constexpr, OW: tl.constexpr,
               DY_DENSE: tl.constexpr, OFF64: tl.constexpr):
    """dy' tile transposed: [BLOCK_M channels, BLOCK_K pixels] (channels are contiguous). Dense
    channels_last dy (DY_DENSE) is addressed by pixel index * sdy_w, no (n, oh, ow) decode."""
    if DY_DENSE:
        pix_off = wide(p, OFF64) * sdy_w
    else:
        n_img, oh, ow = split_pixels(p, OH, OW)
        pix_off = wide(n_img, OFF64) * sdy_n + wide(oh, OFF64) * sdy_h + wide(ow, OFF64) * sdy_w
    return tl.load(dy_ptr + dy_chan[:, None] + pix_off[None, :], mask=k_ok[:, None] & p_ok[None, :], other=0.0)


@triton.jit
def _reduce_pixels(acc, dy_ptr, x_ptr, dy_chan, k_ok, x_col, kh, kw, col_ok, pix_lo, pix_hi, x_chan0,
                   sdy_n, sdy_h, sdy_w, sx_n, sx_c, sx_h, sx_w,
                   SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                   H: tl.constexpr, W: tl.constexpr, OH: tl.constexpr, OW: tl.constexpr,
                   LOW_H: tl.constexpr, HIGH_H: tl.constexpr, LOW_W: tl.constexpr, HIGH_W: tl.constexpr,
                   IMAGE_MAJOR: tl.constexpr, EVEN_PIX: tl.constexpr, WEIGHT_GRAD: tl.constexpr, FLAT: tl.constexpr,
                   LINEAR_X: tl.constexpr, DY_DENSE: tl.constexpr, NHWC_C: tl.constexpr, OFF64: tl.constexpr,
                   PRECISION: tl.constexpr, BLOCK_K: tl.constexpr, STAGE_REGS: tl.constexpr):
    """The reduction over pixels [pix_lo, pix_hi), BLOCK_K per step. WEIGHT_GRAD: acc
    (BLOCK_M, BLOCK_N) += dy'^T x over this program's columns (x_col, their taps kh, kw: vectors
    for FLAT blocks, scalars for a tap block); else the bias column: acc (BLOCK_M,) += row sums
    of dy'.
    IMAGE_MAJOR: step s is BLOCK_K images at one output position (`common.image_block`), so a
    step's (n0, oh, ow) are three scalars, its dy and x tiles a loop-invariant offset tile plus
    one scalar each, and x's bounds test one scalar per tap (a vector over the columns for FLAT
    blocks). Otherwise a step is BLOCK_K consecutive pixels (n, oh, ow), decoded per step and
    tested per pixel (LINEAR_X: x's pixel is the output pixel shifted by the padding)."""
    offs_p = tl.arange(0, BLOCK_K)
    if IMAGE_MAJOR:
        dy_tile = dy_chan[:, None] + (wide(offs_p, OFF64) * sdy_n)[None, :]
        if WEIGHT_GRAD:
            x_img = wide(offs_p, OFF64) * (H * W * NHWC_C) if NHWC_C > 0 else wide(offs_p, OFF64) * sx_n
            x_tile = x_img[:, None] + x_col[None, :]
        lo, hi, STEP = pix_lo // BLOCK_K, pix_hi // BLOCK_K, 1  # image-major steps (BLOCK_K divides both)
    else:
        lo, hi, STEP = pix_lo, pix_hi, BLOCK_K
    x_shift = x_chan0 - (PH * W + PW) * NHWC_C  # LINEAR_X
    for i in tl.range(lo, hi, STEP):
        if IMAGE_MAJOR:
            n0, oh, ow = image_block(i, OH, OW, BLOCK_K)
            dy_step = wide(n0, OFF64) * sdy_n + wide(oh, OFF64) * sdy_h + wide(ow, OFF64) * sdy_w
            a = tl.load(dy_ptr + dy_step + dy_tile, mask=k_ok[:, None], other=0.0)
        else:
            p = i + offs_p
            p_ok = in_range(p, pix_hi, EVEN_PIX)
            a = _dy_tile_t(dy_ptr, dy_chan, k_ok, p, p_ok, sdy_n, sdy_h, sdy_w, OH, OW, DY_DENSE, OFF64)
        if WEIGHT_GRAD:
            if IMAGE_MAJOR:
                ih0 = oh * SH - PH
                iw0 = ow * SW - PW
                b_ok = both(col_ok, in_image(ih0 + kh, H, LOW_H, HIGH_H) & in_image(iw0 + kw, W, LOW_W, HIGH_W))
                x_step = x_pixel_offsets(n0, ih0, iw0, x_chan0, H, W, sx_n, sx_c, sx_h, sx_w, NHWC_C, OFF64)
                b = tl.load(x_ptr + x_step + x_tile, mask=b_ok[None, :], other=0.0)
            else:
                if LINEAR_X:  # x pixel = output pixel shifted by the padding: no image index needed
                    q = p % (OH * OW)
                    oh = q // OW
                    ih0 = oh - PH
                    iw0 = q - oh * OW - PW
                    x_pix = wide(p, OFF64) * NHWC_C + x_shift
                else:
                    n_img, oh, ow = split_pixels(p, OH, OW)
                    ih0 = oh * SH - PH
                    iw0 = ow * SW - PW
                    x_pix = x_pixel_offsets(n_img, ih0, iw0, x_chan0, H, W, sx_n, sx_c, sx_h, sx_w, NHWC_C, OFF64)
                if FLAT:
                    b_mask = (p_ok[:, None] & col_ok[None, :] & in_image(ih0[:, None] + kh[None, :], H, LOW_H, HIGH_H)
                              & in_image(iw0[:, None] + kw[None, :], W, LOW_W, HIGH_W))
                else:
                    row_ok = p_ok & in_image(ih0 + kh, H, LOW_H, HIGH_H) & in_image(iw0 + kw, W, LOW_W, HIGH_W)
                    b_mask = row_ok[:, None] & col_ok[None, :]
                b = tl.load(x_ptr + x_pix[:, None] + x_col[None, :], mask=b_mask, other=0.0)
            if STAGE_REGS:  # tf32 configs: K-major operands by way of registers (see the module docstring)
                a = _through_registers(a)
                b = _through_registers(b)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
        else:
            acc += tl.sum(a.to(tl.float32), axis=1)
    return acc


@triton.jit
def _through_registers(t):
    """t unchanged, through an opaque register move, so the compiler cannot stream this operand
    from global into the MMA's shared memory directly (tf32 only: a 32-bit move). See STAGE_REGS."""
    tl.static_assert(t.dtype.primitive_bitwidth == 32, "register staging is for tf32 (32-bit) operands")
    return tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [t], dtype=t.dtype, is_pure=True, pack=1)


@triton.jit(do_not_specialize=["n_out_pix", "pix_bucket"])
def _conv_wgrad_kernel(
    dy_ptr, x_ptr, dw_ptr, db_ptr,
    n_out_pix,
    sdy_n, sdy_c, sdy_h, sdy_w,
    sx_n, sx_c, sx_h, sx_w,
    sdw_split, sdw_k, sdw_c, sdw_h, sdw_w, sdb_split,
    pix_bucket,  # autotuning key only
    C_PER_G: tl.constexpr, K_PER_G: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    H: tl.constexpr, W: tl.constexpr, OH: tl.constexpr, OW: tl.constexpr, PIX_PER_SPLIT: tl.constexpr,
    PIX_MULT: tl.constexpr, IMG_MULT: tl.constexpr,
    WEIGHT_GRAD: tl.constexpr, BIAS_GRAD: tl.constexpr, FLAT: tl.constexpr, DY_DENSE: tl.constexpr,
    NHWC_C: tl.constexpr, OFF64: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGE_REGS: tl.constexpr = False,
):
    """dy (N, K, OH, OW) via sdy_*; x (N, C, H, W) via sx_* (or NHWC_C, see `x_pixel_offsets`);
    dw (splits, K, C_PER_G, KH, KW) via sdw_* (sdw_split 0 without a split); db (splits, K) via
    sdb_split. Grid: (M blocks x (column blocks + 1 bias column if BIAS_GRAD), splits, groups)."""
    # ---- map programs to tiles: (output-channel block, column block or bias column), split, group
    M_BLOCKS: tl.constexpr = (K_PER_G + BLOCK_M - 1) // BLOCK_M
    if not WEIGHT_GRAD:
        N_BLOCKS: tl.constexpr = 0
    elif FLAT:
        N_BLOCKS: tl.constexpr = (KH * KW * C_PER_G + BLOCK_N - 1) // BLOCK_N
    else:
        N_BLOCKS: tl.constexpr = KH * KW * ((C_PER_G + BLOCK_N - 1) // BLOCK_N)
    LOW_H: tl.constexpr = PH > 0  # the image sides a tap can cross (see fwd.py)
    LOW_W: tl.constexpr = PW > 0
    HIGH_H: tl.constexpr = (OH - 1) * SH - PH + KH > H
    HIGH_W: tl.constexpr = (OW - 1) * SW - PW + KW > W
    pid_m = tl.program_id(0) % M_BLOCKS
    pid_n = tl.program_id(0) // M_BLOCKS
    split = tl.program_id(1)
    group = tl.program_id(2)
    # ---- build offsets: this tile's output channels and this split's pixel range
    k = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # output channel within the group
    k_ok = in_range(k, K_PER_G, K_PER_G % BLOCK_M == 0)
    dy_chan = wide((group * K_PER_G + k), OFF64) * sdy_c
    pix_lo = split * PIX_PER_SPLIT  # this split's pixels: [pix_lo, pix_hi)
    pix_hi = tl.minimum(pix_lo + PIX_PER_SPLIT, n_out_pix)
    # Splits hold whole BLOCK_K chunks; when BLOCK_K also divides the pixel count (PIX_MULT:
    # its largest power-of-two divisor, e.g. any batch of 64) no pixel needs a mask.
    EVEN_PIX: tl.constexpr = PIX_MULT % BLOCK_K == 0 and PIX_PER_SPLIT % BLOCK_K == 0
    # IMAGE_MAJOR (BLOCK_K divides the batch): the pixels are reduced in image-major order,
    # BLOCK_K images at one position per step (`_reduce_pixels`); the splits and the bias
    # column take the same order, so each split still sums the same pixels in both
    IMAGE_MAJOR: tl.constexpr = IMG_MULT % BLOCK_K == 0 and PIX_PER_SPLIT % BLOCK_K == 0

    # ---- reduce over the split's pixels: the bias column, or one (kh, kw, c) column block
    if pid_n == N_BLOCKS:  # a bias-gradient program (launched only with BIAS_GRAD)
        if BIAS_GRAD:
            db = _reduce_pixels(tl.zeros((BLOCK_M,), dtype=tl.float32), dy_ptr, x_ptr, dy_chan, k_ok,
                                # no x column: the bias column sums dy alone
                                x_col=0, kh=0, kw=0, col_ok=True, pix_lo=pix_lo, pix_hi=pix_hi, x_chan0=0,
                                sdy_n=sdy_n, sdy_h=sdy_h, sdy_w=sdy_w, sx_n=sx_n, sx_c=sx_c, sx_h=sx_h, sx_w=sx_w,
                                SH=SH, SW=SW, PH=PH, PW=PW, H=H, W=W, OH=OH, OW=OW,
                                LOW_H=LOW_H, HIGH_H=HIGH_H, LOW_W=LOW_W, HIGH_W=HIGH_W,
                                IMAGE_MAJOR=IMAGE_MAJOR, EVEN_PIX=EVEN_PIX, WEIGHT_GRAD=False, FLAT=FLAT,
                                LINEAR_X=False, DY_DENSE=DY_DENSE, NHWC_C=NHWC_C, OFF64=OFF64,
                                PRECISION=PRECISION, BLOCK_K=BLOCK_K, STAGE_REGS=False)
            tl.store(db_ptr + split * sdb_split + group * K_PER_G + k, db.to(db_ptr.dtype.element_ty), mask=k_ok)
    elif WEIGHT_GRAD:
        # This program's columns: (kh, kw, c) as vectors (FLAT) or one tap's channel block.
        if FLAT:
            col = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
            col_ok = in_range(col, KH * KW * C_PER_G, (KH * KW * C_PER_G) % BLOCK_N == 0)
            kh = col // (KW * C_PER_G)
            kw = (col // C_PER_G) % KW
            c = col % C_PER_G
        else:
            C_BLOCKS: tl.constexpr = (C_PER_G + BLOCK_N - 1) // BLOCK_N
            tap = pid_n // C_BLOCKS
            c = (pid_n - tap * C_BLOCKS) * BLOCK_N + tl.arange(0, BLOCK_N)
            col_ok = in_range(c, C_PER_G, C_PER_G % BLOCK_N == 0)
            kh = tap // KW
            kw = tap - kh * KW
        x_col = x_tap_offsets(kh, kw, c, W, sx_c, sx_h, sx_w, NHWC_C)
        # Pixel order only: dense channels_last x, stride 1 and an output the size of the input
        # ("same" padding: conv2-5): x's pixel for output pixel p is p itself, shifted by the
        # padding, so no image index is decoded. (Read with bench/conv_sass.py: 272 -> 256
        # instructions per step for conv3; with one partial channel block, conv2's 48 of 64, the
        # compiler's schedule got worse, 198 -> 224, so only where a group has at least a block
        # of channels.)
        LINEAR_X: tl.constexpr = (NHWC_C > 0 and SH == 1 and SW == 1 and OH == H and OW == W and not FLAT
                                  and C_PER_G >= BLOCK_N)
        acc = _reduce_pixels(tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), dy_ptr, x_ptr, dy_chan, k_ok,
                             x_col=x_col, kh=kh, kw=kw, col_ok=col_ok, pix_lo=pix_lo, pix_hi=pix_hi,
                             x_chan0=group * C_PER_G,
                             sdy_n=sdy_n, sdy_h=sdy_h, sdy_w=sdy_w, sx_n=sx_n, sx_c=sx_c, sx_h=sx_h, sx_w=sx_w,
                             SH=SH, SW=SW, PH=PH, PW=PW, H=H, W=W, OH=OH, OW=OW,
                             LOW_H=LOW_H, HIGH_H=HIGH_H, LOW_W=LOW_W, HIGH_W=HIGH_W,
                             IMAGE_MAJOR=IMAGE_MAJOR, EVEN_PIX=EVEN_PIX, WEIGHT_GRAD=True, FLAT=FLAT,
                             LINEAR_X=LINEAR_X, DY_DENSE=DY_DENSE, NHWC_C=NHWC_C, OFF64=OFF64,
                             PRECISION=PRECISION, BLOCK_K=BLOCK_K, STAGE_REGS=STAGE_REGS)

        # ---- write back: the partial (or, with one split, dw itself)
        dw_row = wide(split, OFF64) * sdw_split + wide((group * K_PER_G + k), OFF64) * sdw_k
        dw_col = kh * sdw_h + kw * sdw_w + c * sdw_c
        tl.store(dw_ptr + dw_row[:, None] + dw_col[None, :], acc.to(dw_ptr.dtype.element_ty),
                 mask=k_ok[:, None] & col_ok[None, :])


@triton.jit
def _sum_splits_kernel(part_ptr, out_ptr, numel, N_SPLITS: tl.constexpr, BLOCK: tl.constexpr):
    """out[i] = sum_{s = 0, 1, ...} part[s, i] in that order (deterministic)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    part = part_ptr + offs  # pointer arithmetic is 64-bit
    for _ in tl.range(0, N_SPLITS):
        acc += tl.load(part, mask=mask, other=0.0)
        part += numel
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _sum_splits(part: torch.Tensor, out: torch.Tensor) -> None:
    block = 1024
    _sum_splits_kernel[(cdiv(out.numel(), block),)](part, out, out.numel(), N_SPLITS=part.shape[0], BLOCK=block)


_conv_wgrad_tuned = WGRAD.autotune(_conv_wgrad_kernel)


def _dense_nhwc(t: torch.Tensor) -> bool:
    """Whether pixel p = (n*H + h)*W + w of t sits at offset p * t.stride(3): the (n, h, w)
    strides nest as in dense channels_last."""
    n, _, h, w = t.shape
    sn, _, sh, sw = t.stride()
    return (h == 1 or sh == w * sw) and (n == 1 or sn == h * w * sw)


def conv2d_weight_grad(dy: torch.Tensor, x: torch.Tensor, geom: ConvGeometry, *, y=None, weight_grad=True,
                       bias_grad=True, weight_format=torch.contiguous_format, config=None, splits=None, out=None,
                       dense=True):
    """(dw, db): dw (geom.weight_shape, `weight_format`) if `weight_grad`, db (K,) if `bias_grad`,
    else None (x may be None without `weight_grad`). With `y` (forward output of a fused-ReLU
    conv) dy is masked by y > 0. dy and x may have any strides (channels_last is fast).
    `config` forces a tile config and `splits` the number of pixel ranges (default:
    `configs.wgrad_splits`, for the forced config's tile). `out` = (dw, db): tensors to write
    the gradients into (either may be None: a new one), e.g. views of an optimizer's buffer.
    `dense=False`: conv1's folded gradient may come back as a strided view (the caller copies it)."""
    dev, dtype, kout = dy.device, dy.dtype, geom.out_chan
    dw, db = out or (None, None)
    view = wgrad_view(x, geom) if weight_grad else None
    if dw is None and weight_grad and (dense or view is None):
        dw = torch.empty(geom.weight_shape, device=dev, dtype=dtype, memory_format=weight_format)
    if db is None and bias_grad:
        db = torch.empty(kout, device=dev, dtype=dtype)
    if not (weight_grad or bias_grad):
        return dw, db
    if geom.n_out_pix == 0:  # a sum over no pixels
        if weight_grad and dw is None:
            dw = torch.empty(geom.weight_shape, device=dev, dtype=dtype, memory_format=weight_format)
        return (dw.zero_() if weight_grad else None), (db.zero_() if bias_grad else None)
    if y is not None:
        dy = relu_grad(dy, y)
    if view is not None:  # conv1's padded image as SW-pixel column blocks (input_layout.py)
        folded, dw_view = folded_wgrad_buffer(geom, view[1], dy)
        conv2d_weight_grad(dy, *view, weight_grad=True, bias_grad=bias_grad, config=config, splits=splits,
                           out=(dw_view, db))
        dw_folded = folded[..., :geom.kernel_w]
        return (dw.copy_(dw_folded) if dw is not None else dw_folded), db
    flat = use_flat_reduction(geom.c_per_g, "wgrad")
    if config is not None:
        flat = config.kwargs.get("FLAT", flat)
    precision = dot_precision(dtype)
    n_pix = geom.n_out_pix
    n_splits = splits or wgrad_splits(geom, dtype, precision, flat, dev, config)
    pix_per_split = n_pix
    if n_splits > 1:  # whole quanta per split, so only the last chunk of the last split is masked
        pix_per_split = cdiv(cdiv(n_pix, n_splits), SPLIT_PIX_QUANTUM) * SPLIT_PIX_QUANTUM
        n_splits = cdiv(n_pix, pix_per_split)

    if n_splits == 1:  # write the outputs directly
        dw_out, db_out, split_strides = dw, db, (0, 0)
    else:
        numel_w = kout * geom.c_per_g * geom.kernel_h * geom.kernel_w
        dw_out = torch.empty((n_splits, numel_w), device=dev, dtype=torch.float32) if weight_grad else None
        db_out = torch.empty((n_splits, kout), device=dev, dtype=torch.float32) if bias_grad else None
        split_strides = (numel_w, kout)
    dw_strides = dw.stride() if weight_grad else (0, 0, 0, 0)
    meta = dict(geom.constexprs(), WEIGHT_GRAD=weight_grad, BIAS_GRAD=bias_grad, DY_DENSE=_dense_nhwc(dy),
                FLAT=flat, NHWC_C=nhwc_channels(x) if x is not None else 0, PRECISION=precision,
                PIX_PER_SPLIT=pix_per_split, PIX_MULT=pix_multiple(n_pix), IMG_MULT=pix_multiple(geom.n_img),
                OFF64=needs_int64(dy, x, dw_out, dw))
    cg, taps = geom.c_per_g, geom.kernel_h * geom.kernel_w

    def grid(m):
        n_blocks = 0
        if weight_grad:
            n_blocks = cdiv(taps * cg, m["BLOCK_N"]) if m["FLAT"] else taps * cdiv(cg, m["BLOCK_N"])
        return cdiv(geom.k_per_g, m["BLOCK_M"]) * (n_blocks + bias_grad), n_splits, geom.groups

    some = dw_out if weight_grad else db_out  # stands in for the absent output pointer
    if x is None:  # only the bias gradient: x is never read
        x = dy
    args = (dy, x, some, db_out if bias_grad else some, n_pix, *dy.stride(), *x.stride(), split_strides[0],
            *dw_strides, split_strides[1], pix_bucket(n_pix))
    def finish():
        if n_splits > 1:
            if weight_grad:
                _sum_splits(dw_out, dw)
            if bias_grad:
                _sum_splits(db_out, db)

    ran = launch(_conv_wgrad_kernel, _conv_wgrad_tuned, WGRAD, grid, args, meta, flops=geom.flops, config=config,
                 check=lambda: wgrad_check(dy, x if weight_grad else None, geom, dw if weight_grad else None,
                                           db if bias_grad else None,
                                           (dw_out if weight_grad else None, db_out if bias_grad else None), finish))
    if ran:  # (else the reference wrote dw and db)
        finish()
    return dw, db

"""Convolution input gradient (dgrad) as an implicit GEMM.

    dx[n, ih, iw, g*C_PER_G + c] = sum_{kh, kw, k} dy'[n, oh, ow, g*K_PER_G + k] * w[g*K_PER_G + k, c, kh, kw]
    where oh*SH = ih + PH - kh, ow*SW = iw + PW - kw;     dy' = dy * (y > 0) after a fused ReLU
    with `relu_input` (x, the conv's input, is a ReLU's output): dx' = dx * (x > 0), written instead

GEMM per group g: M = N*H*W input pixels, N = C_PER_G input channels, reduction over
(kh, kw, k). For stride 1 it is the convolution of dy (padded by K-1-P) with the flipped,
transposed weight; taps whose (ih + PH - kh) is not a multiple of the stride are masked
(correct for any stride; AlexNet needs dgrad only for the stride-1 layers conv2-5, conv1's
input being the image). As in the forward, where BLOCK_M divides the batch a tile is
BLOCK_M images at one input position (`common.image_block`: a tap's source pixel and its
bounds test are scalars), else BLOCK_M consecutive pixels.

Layouts: dy' (masked once per backward by `common.relu_grad` when the forward fused a ReLU,
never inside the loop) through its strides, fast as channels_last (k contiguous);
dx through its strides.
The epilogue mask (`relu_input`) is the gradient of the ReLU that produced x: the producing
conv (conv3, conv4 in AlexNet) then reads its dy already masked and skips its own
elementwise mask pass (kernels/conv/op.py, `dy_masked`). It costs one read of x in the epilogue,
outside the loop. The weight is re-laid out once per call as wt (groups, KH, KW,
C_PER_G, K_PER_G), k contiguous, so both GEMM operands are contiguous along the reduction
(what tf32 wgmma needs), except in 16 bits, where a channels_last weight is read in place
(`_weight_operand`). The reduction loop, one pipelined `for`, runs over (tap, k chunk)
steps, or for few output channels (FLAT, K_PER_G < 16) over BLOCK_K-wide chunks of the
flattened (kh, kw, k) index, as in the forward.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import cdiv, empty_4d
from .common import (
    ConvGeometry,
    both,
    dot_precision,
    grouped_tile,
    in_image,
    in_range,
    needs_int64,
    pix_bucket,
    pix_multiple,
    relu_grad,
    tile_pixels,
    wide,
)
from .configs import DGRAD, use_flat_reduction
from .plans import launch
from .verified import dgrad_check

__all__ = ["conv2d_input_grad"]


@triton.jit
def _source_row(i, tap, PAD: tl.constexpr, S: tl.constexpr, n_out: tl.constexpr):
    """(o, ok): the output row o with o*S = i + PAD - tap, and whether it exists."""
    t = i + PAD - tap
    if S == 1:
        return t, (t >= 0) & (t < n_out)
    else:
        o = t // S
        return o, (t >= 0) & (o * S == t) & (o < n_out)


@triton.jit
def _dgrad_tap_loop(acc, dy_ptr, wt_ptr, dy_img, wt_col, ih, iw, pix_ok, chan_ok,
                    sdy_c, sdy_h, sdy_w, WT_SK: tl.constexpr, WT_SH: tl.constexpr, WT_SW: tl.constexpr,
                    C_PER_G: tl.constexpr, K_PER_G: tl.constexpr, KH: tl.constexpr,
                    KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                    H: tl.constexpr, W: tl.constexpr, OH: tl.constexpr, OW: tl.constexpr,
                    OFF64: tl.constexpr, PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc += A @ B over steps (tap, chunk of BLOCK_K output channels); A rows are contiguous.
    Stride 1: the source pixel of tap (kh, kw) is (ih + PH - kh, iw + PW - kw), so its offset is
    the program's (ih + PH, iw + PW) offset, computed once, minus one scalar per step; the mask
    tests only the sides a tap can cross. Other strides: per-step source rows (`_source_row`)."""
    K_CHUNKS: tl.constexpr = (K_PER_G + BLOCK_K - 1) // BLOCK_K
    EVEN_K: tl.constexpr = K_PER_G % BLOCK_K == 0
    UNIT: tl.constexpr = SH == 1 and SW == 1
    offs_k = tl.arange(0, BLOCK_K)
    a_cols = offs_k * sdy_c
    if UNIT:
        dy_base = dy_img + wide((ih + PH), OFF64) * sdy_h + wide((iw + PW), OFF64) * sdy_w
    for step in tl.range(0, KH * KW * K_CHUNKS):
        tap = step // K_CHUNKS
        k0 = (step - tap * K_CHUNKS) * BLOCK_K
        kh = tap // KW
        kw = tap - kh * KW
        k_ok = in_range(k0 + offs_k, K_PER_G, EVEN_K)
        if UNIT:
            row_ok = both(pix_ok, in_image(ih + PH - kh, OH, KH - 1 > PH, H + PH > OH)
                          & in_image(iw + PW - kw, OW, KW - 1 > PW, W + PW > OW))
            dy_row = dy_base - (wide(kh, OFF64) * sdy_h + kw * sdy_w - k0 * sdy_c)
        else:
            oh, oh_ok = _source_row(ih, kh, PH, SH, OH)
            ow, ow_ok = _source_row(iw, kw, PW, SW, OW)
            row_ok = both(pix_ok, oh_ok & ow_ok)
            dy_row = dy_img + wide(oh, OFF64) * sdy_h + wide(ow, OFF64) * sdy_w + k0 * sdy_c
        a = tl.load(dy_ptr + dy_row[:, None] + a_cols[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(wt_ptr + wt_col[None, :] + (kh * WT_SH + kw * WT_SW + (k0 + offs_k) * WT_SK)[:, None],
                    mask=k_ok[:, None] & chan_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _dgrad_flat_loop(acc, dy_ptr, wt_ptr, dy_img, wt_col, ih, iw, pix_ok, chan_ok,
                     sdy_c, sdy_h, sdy_w, WT_SK: tl.constexpr, WT_SH: tl.constexpr, WT_SW: tl.constexpr,
                    C_PER_G: tl.constexpr, K_PER_G: tl.constexpr, KH: tl.constexpr,
                     KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                     OH: tl.constexpr, OW: tl.constexpr, OFF64: tl.constexpr, PRECISION: tl.constexpr,
                     BLOCK_K: tl.constexpr):
    """acc += A @ B over BLOCK_K-wide chunks of the flattened (kh, kw, k) reduction index
    (few output channels; decoded once per chunk, the source rows per element)."""
    RED: tl.constexpr = KH * KW * K_PER_G
    for r0 in tl.range(0, RED, BLOCK_K):
        r = r0 + tl.arange(0, BLOCK_K)
        kh = r // (KW * K_PER_G)
        kw = (r // K_PER_G) % KW
        k = r % K_PER_G
        r_ok = in_range(r, RED, RED % BLOCK_K == 0)
        oh, oh_ok = _source_row(ih[:, None], kh[None, :], PH, SH, OH)
        ow, ow_ok = _source_row(iw[:, None], kw[None, :], PW, SW, OW)
        a_mask = pix_ok[:, None] & r_ok[None, :] & oh_ok & ow_ok
        dy_off = dy_img[:, None] + wide(oh, OFF64) * sdy_h + wide(ow, OFF64) * sdy_w + (k * sdy_c)[None, :]
        a = tl.load(dy_ptr + dy_off, mask=a_mask, other=0.0)
        b = tl.load(wt_ptr + wt_col[None, :] + (kh * WT_SH + kw * WT_SW + k * WT_SK)[:, None],
                    mask=r_ok[:, None] & chan_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _relu_input_mask(dx_ptr, x_ptr, pid_m, chan, chan_ok, n_in_pix, sdx_n, sdx_c, sdx_h, sdx_w, sx_n, sx_c, sx_h, sx_w,
                     H: tl.constexpr, W: tl.constexpr, PIX_MULT: tl.constexpr, IMAGE_MAJOR: tl.constexpr,
                     OFF64: tl.constexpr, BLOCK_M: tl.constexpr):
    """dx[tile pid_m's rows, chan] = 0 where x <= 0, after dx is stored (and a barrier): x is
    loaded only then (it may alias dx, so no load moves above the store) and in 32-row slices, so x's tile
    never lives beside the accumulator (tl.where on the accumulator spilled the tf32 128x128
    tiles and grew the bf16 loops, bench/conv_sass.py). Costs a second, predicated store."""
    SUB: tl.constexpr = 32 if BLOCK_M > 32 else BLOCK_M
    for r in tl.static_range(0, BLOCK_M, SUB):
        n_img, ih, iw, rows_ok = tile_pixels(pid_m, n_in_pix, H, W, PIX_MULT, IMAGE_MAJOR, BLOCK_M, r, SUB)
        ok = rows_ok[:, None] & chan_ok[None, :]
        x_off = wide(n_img, OFF64) * sx_n + wide(ih, OFF64) * sx_h + wide(iw, OFF64) * sx_w
        xv = tl.load(x_ptr + x_off[:, None] + (wide(chan, OFF64) * sx_c)[None, :], mask=ok, other=1.0)
        dx_off = wide(n_img, OFF64) * sdx_n + wide(ih, OFF64) * sdx_h + wide(iw, OFF64) * sdx_w
        tl.store(dx_ptr + dx_off[:, None] + (wide(chan, OFF64) * sdx_c)[None, :],
                 tl.zeros_like(xv).to(dx_ptr.dtype.element_ty), mask=ok & (xv <= 0))


@triton.jit(do_not_specialize=["n_in_pix", "pix_bucket"])
def _conv_dgrad_kernel(
    dy_ptr, wt_ptr, dx_ptr, x_ptr,
    n_in_pix,
    sdy_n, sdy_c, sdy_h, sdy_w,
    sdx_n, sdx_c, sdx_h, sdx_w,
    sx_n, sx_c, sx_h, sx_w,
    pix_bucket,  # autotuning key only
    C_PER_G: tl.constexpr, K_PER_G: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    H: tl.constexpr, W: tl.constexpr, OH: tl.constexpr, OW: tl.constexpr, PIX_MULT: tl.constexpr,
    IMG_MULT: tl.constexpr,
    WT_SG: tl.constexpr, WT_SK: tl.constexpr, WT_SC: tl.constexpr, WT_SH: tl.constexpr, WT_SW: tl.constexpr,
    FLAT: tl.constexpr, RELU_INPUT: tl.constexpr, OFF64: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """dy (N, K, OH, OW) via sdy_*; the weight, element (group, k, c, kh, kw) via WT_S* (the
    layer's (K, C_PER_G, KH, KW) weight, or its k-contiguous copy: strides fixed by the layer's
    shape, compile-time constants as its sizes are);
    dx (N, C, H, W) via sdx_*; with RELU_INPUT x (N, C, H, W) via sx_*, dx zeroed where x <= 0.
    Grid: (tiles of (N*H*W) x C_PER_G, groups)."""
    # ---- map programs to tiles: (input-pixel block, input-channel block) of one group
    group = tl.program_id(1)
    pid_m, pid_n = grouped_tile(tl.program_id(0), n_in_pix, C_PER_G, BLOCK_M, BLOCK_N, GROUP_M)
    # ---- build offsets: the tile's pixels and channels, dy's image and wt's columns
    # IMAGE_MAJOR (BLOCK_M divides the batch; see common.image_block): the tile is BLOCK_M images at
    # one position, so (ih, iw) are scalars and a tap's bounds test is one scalar per step
    IMAGE_MAJOR: tl.constexpr = IMG_MULT % BLOCK_M == 0 and not FLAT
    chan = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # input channel within the group
    chan_ok = in_range(chan, C_PER_G, C_PER_G % BLOCK_N == 0)
    n_img, ih, iw, pix_ok = tile_pixels(pid_m, n_in_pix, H, W, PIX_MULT, IMAGE_MAJOR, BLOCK_M, 0, BLOCK_M)
    dy_img = wide(n_img, OFF64) * sdy_n + wide((group * K_PER_G), OFF64) * sdy_c
    wt_col = wide(group, OFF64) * WT_SG + wide(chan, OFF64) * WT_SC  # the weight's [group, 0, chan, 0, 0]

    # ---- reduce over (kh, kw, k)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if FLAT:
        acc = _dgrad_flat_loop(acc, dy_ptr, wt_ptr, dy_img, wt_col, ih, iw, pix_ok, chan_ok,
                               sdy_c, sdy_h, sdy_w, WT_SK, WT_SH, WT_SW, C_PER_G, K_PER_G, KH, KW, SH, SW, PH, PW,
                               OH, OW, OFF64, PRECISION, BLOCK_K)
    else:
        acc = _dgrad_tap_loop(acc, dy_ptr, wt_ptr, dy_img, wt_col, ih, iw, pix_ok, chan_ok,
                              sdy_c, sdy_h, sdy_w, WT_SK, WT_SH, WT_SW, C_PER_G, K_PER_G, KH, KW, SH, SW, PH, PW,
                              H, W, OH, OW, OFF64, PRECISION, BLOCK_K)

    # ---- write back: one store of the tile
    dx_off = wide(n_img, OFF64) * sdx_n + wide(ih, OFF64) * sdx_h + wide(iw, OFF64) * sdx_w
    dx_chan = wide((group * C_PER_G + chan), OFF64) * sdx_c
    out_ok = pix_ok[:, None] & chan_ok[None, :]
    tl.store(dx_ptr + dx_off[:, None] + dx_chan[None, :], acc.to(dx_ptr.dtype.element_ty), mask=out_ok)
    if RELU_INPUT:  # the gradient of the ReLU that produced x, as torch's threshold_backward (NaN x passes)
        # The zeros are stored in another layout than dx was, so an element may be written by
        # two threads: the barrier orders the second store after every thread's first.
        tl.debug_barrier()
        _relu_input_mask(dx_ptr, x_ptr, pid_m, group * C_PER_G + chan, chan_ok, n_in_pix, sdx_n, sdx_c, sdx_h,
                         sdx_w, sx_n, sx_c, sx_h, sx_w, H, W, PIX_MULT, IMAGE_MAJOR, OFF64, BLOCK_M)


_conv_dgrad_tuned = DGRAD.autotune(_conv_dgrad_kernel)


def _weight_operand(weight: torch.Tensor, geom: ConvGeometry):
    """(tensor, strides (group, k, c, kh, kw)) the kernel reads the weight through. 16-bit
    weights stored channels_last (the model's: (K, KH, KW, C/g) in memory, c contiguous) are
    read in place: for one tap a [k, c] tile is contiguous along c, a B operand that 16-bit
    wgmma takes from shared memory in either major order. Other weights (tf32 wgmma needs
    the B operand k-contiguous in shared memory; fp32; an OIHW weight) are copied once per
    call to (groups, KH, KW, C/g, K/g), k contiguous."""
    g, kg, cg, kh, kw = geom.groups, geom.k_per_g, geom.c_per_g, geom.kernel_h, geom.kernel_w
    if weight.dtype in (torch.bfloat16, torch.float16) and weight.stride(1) == 1 and weight.dim() == 4:
        s_k, s_c, s_h, s_w = weight.stride()
        return weight, (kg * s_k, s_k, s_c, s_h, s_w)
    wt = weight.reshape(g, kg, cg, kh, kw).permute(0, 3, 4, 2, 1).contiguous()  # (g, KH, KW, C/g, K/g)
    return wt, (kh * kw * cg * kg, 1, kg, kw * cg * kg, cg * kg)


def conv2d_input_grad(dy: torch.Tensor, weight: torch.Tensor, geom: ConvGeometry, *, y=None, relu_input=None,
                      out_format=torch.channels_last, config=None) -> torch.Tensor:
    """dx (geom.input_shape, `out_format`) from dy; with `y` (the forward output of a conv with
    fused ReLU) dy is first masked by y > 0 (`relu_grad`; the autograd Function masks once for
    both GEMMs). With `relu_input` (the conv's input x, when x is a ReLU's output) the epilogue
    writes dx * (x > 0) (NaN x passes, as torch's ReLU gradient), the gradient with respect
    to that ReLU's input. dy and relu_input may have any strides (channels_last is the fast
    layout); `config` forces a tile config (see configs.py)."""
    dx = empty_4d(geom.input_shape, dy, out_format)
    if dx.numel() == 0:
        return dx
    if y is not None:
        dy = relu_grad(dy, y)
    if relu_input is not None and tuple(relu_input.shape) != tuple(geom.input_shape):
        raise ValueError(f"relu_input has shape {tuple(relu_input.shape)}, expected the conv's input shape "
                         f"{tuple(geom.input_shape)}")
    g, kg, cg = geom.groups, geom.k_per_g, geom.c_per_g
    wt, w_strides = _weight_operand(weight, geom)
    meta = dict(geom.constexprs(), **dict(zip(("WT_SG", "WT_SK", "WT_SC", "WT_SH", "WT_SW"), w_strides)),
                PIX_MULT=pix_multiple(geom.n_in_pix), IMG_MULT=pix_multiple(geom.n_img), FLAT=use_flat_reduction(kg),
                RELU_INPUT=relu_input is not None, OFF64=needs_int64(dy, wt, dx, relu_input),
                PRECISION=dot_precision(dy.dtype))
    n_in_pix = geom.n_in_pix

    def grid(m):
        return cdiv(n_in_pix, m["BLOCK_M"]) * cdiv(cg, m["BLOCK_N"]), g

    mask_src = relu_input if relu_input is not None else dx  # dx stands in for the absent pointer (never read)
    args = (dy, wt, dx, mask_src, n_in_pix, *dy.stride(), *dx.stride(), *mask_src.stride(), pix_bucket(n_in_pix))
    launch(_conv_dgrad_kernel, _conv_dgrad_tuned, DGRAD, grid, args, meta, flops=geom.flops, config=config,
           check=lambda: dgrad_check(dy, weight, geom, relu_input, dx))
    return dx

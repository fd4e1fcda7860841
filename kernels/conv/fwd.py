"""Convolution forward as an implicit GEMM, with fused bias and ReLU.

    y[n, oh, ow, g*K_PER_G + k] = act(bias[g*K_PER_G + k]
                                      + sum_{kh, kw, c} x[n, oh*SH-PH+kh, ow*SW-PW+kw, g*C_PER_G + c]
                                                        * w[g*K_PER_G + k, c, kh, kw])

GEMM per group g: M = N*OH*OW output pixels, N = K_PER_G output channels, reduction over
(kh, kw, c). Nothing is materialised: each program owns a BLOCK_M x BLOCK_N tile of y and
gathers its A tile (BLOCK_M pixels x BLOCK_K reduction elements) straight from x, zero
outside the image (the padding). Program order is grouped (GROUP_M pixel blocks walk every
channel block) so an A tile is reused from L2.

The M order: where BLOCK_M divides the batch (the model's 128) the tap loop's tiles are
image-major (`common.image_block`): BLOCK_M images at one output position, so the window's
corner is two scalars, a tap's bounds test is one scalar for the whole tile and a step adds
one scalar to the images' offsets. Otherwise (small batches, the FLAT loop) a tile is
BLOCK_M consecutive pixels (n, oh, ow), decoded once per program and tested per row.

Layouts: x and y through their strides; x is fast as channels_last (c contiguous, so an A
tile row is one contiguous run of BLOCK_K channels). The weight is read in OHWI order,
(K, KH, KW, C_PER_G) contiguous, so its (kh, kw, c) reduction index is contiguous too.

Two reduction loops, both one flat `for` that Triton software-pipelines (num_stages):
- taps (C_PER_G >= 16): step = (tap, channel chunk), kh/kw/chunk from scalar div/mod once
  per step; the windows' corner offsets are computed once per program, a step adds one
  scalar, and the row mask tests only the image sides a tap can cross (`in_image`; none for
  an unpadded conv whose windows stay inside); no mask on c when BLOCK_K divides C_PER_G.
- FLAT (few channels, C_PER_G < 16: conv1): the reduction index r runs over all
  KH*KW*C_PER_G (kh, kw, c) with the tail of the last BLOCK_K chunk masked; r -> (kh, kw, c)
  is decoded once per step for the BLOCK_K vector, never per element (per element: two adds
  and the bounds mask). In channels_last with groups=1 each kh row (kw, c) is one contiguous
  span of KW*C elements of x, so a chunk is a few contiguous runs; `pad_input` pads conv1's 3
  channels to 4 so the runs are aligned 8-byte vectors (asynchronous, pipelined copies):
  11*11*4 = 484 -> 512 at BLOCK_K=64, and writes its spatial padding into the buffer
  (`input_layout.py`), so conv1 runs unpadded and its loop tests no image side.
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
    nhwc_channels,
    pix_bucket,
    pix_multiple,
    relu,
    tile_pixels,
    wide,
    x_pixel_offsets,
    x_tap_offsets,
)
from .configs import FWD, use_flat_reduction
from .plans import launch
from .verified import fwd_check

__all__ = ["conv2d_forward"]


@triton.jit
def _fwd_tap_loop(acc, x_ptr, w_ptr, x_base, w_col, ih0, iw0, pix_ok, k_ok, sx_c, sx_h, sx_w,
                  C_PER_G: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
                  LOW_H: tl.constexpr, HIGH_H: tl.constexpr, LOW_W: tl.constexpr, HIGH_W: tl.constexpr,
                  OFF64: tl.constexpr, PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc += A @ B over steps (tap, channel chunk); A rows are BLOCK_K contiguous channels.
    x_base: offsets of the windows' top-left corners, computed once per program; a step adds
    one scalar (the tap's and chunk's offset) and tests only the image sides the tap can cross."""
    C_CHUNKS: tl.constexpr = (C_PER_G + BLOCK_K - 1) // BLOCK_K
    EVEN_C: tl.constexpr = C_PER_G % BLOCK_K == 0
    offs_k = tl.arange(0, BLOCK_K)
    a_cols = offs_k * sx_c
    for step in tl.range(0, KH * KW * C_CHUNKS):
        tap = step // C_CHUNKS
        c0 = (step - tap * C_CHUNKS) * BLOCK_K
        kh = tap // KW
        kw = tap - kh * KW
        row_ok = both(pix_ok, in_image(ih0 + kh, H, LOW_H, HIGH_H) & in_image(iw0 + kw, W, LOW_W, HIGH_W))
        chan_ok = in_range(c0 + offs_k, C_PER_G, EVEN_C)
        tap_off = wide(kh, OFF64) * sx_h + kw * sx_w + c0 * sx_c
        a = tl.load(x_ptr + (x_base + tap_off)[:, None] + a_cols[None, :], mask=row_ok[:, None] & chan_ok[None, :],
                    other=0.0)
        b = tl.load(w_ptr + w_col[None, :] + (tap * C_PER_G + c0 + offs_k)[:, None],
                    mask=chan_ok[:, None] & k_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _fwd_flat_loop(acc, x_ptr, w_ptr, x_pix, w_col, ih0, iw0, pix_ok, k_ok, sx_c, sx_h, sx_w,
                   C_PER_G: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
                   LOW_H: tl.constexpr, HIGH_H: tl.constexpr, LOW_W: tl.constexpr, HIGH_W: tl.constexpr,
                   NHWC_C: tl.constexpr, W_PAD: tl.constexpr, PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc += A @ B over BLOCK_K-wide chunks of the flattened (kh, kw, c) reduction index;
    x_pix: offsets of the windows' top-left corners (`x_pixel_offsets`). The A tail past the
    reduction stays masked even with a zero-padded weight (W_PAD): 0 * inf would be NaN."""
    RED: tl.constexpr = KH * KW * C_PER_G
    EVEN_R: tl.constexpr = RED % BLOCK_K == 0
    for r0 in tl.range(0, RED, BLOCK_K):
        r = r0 + tl.arange(0, BLOCK_K)
        kh = r // (KW * C_PER_G)
        kw = (r // C_PER_G) % KW
        c = r % C_PER_G
        r_ok = in_range(r, RED, EVEN_R)
        a_mask = (pix_ok[:, None] & r_ok[None, :] & in_image(ih0[:, None] + kh[None, :], H, LOW_H, HIGH_H)
                  & in_image(iw0[:, None] + kw[None, :], W, LOW_W, HIGH_W))
        x_off = x_pix[:, None] + x_tap_offsets(kh, kw, c, W, sx_c, sx_h, sx_w, NHWC_C)[None, :]
        a = tl.load(x_ptr + x_off, mask=a_mask, other=0.0)
        if W_PAD:  # zero rows and columns past the weight: no mask, 16-byte rows
            b = tl.load(w_ptr + w_col[None, :] + r[:, None])
        else:
            b = tl.load(w_ptr + w_col[None, :] + r[:, None], mask=r_ok[:, None] & k_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc


@triton.jit(do_not_specialize=["n_out_pix", "pix_bucket"])
def _conv_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    n_out_pix,
    sx_n, sx_c, sx_h, sx_w,
    sy_n, sy_c, sy_h, sy_w,
    pix_bucket,  # autotuning key only
    C_PER_G: tl.constexpr, K_PER_G: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    H: tl.constexpr, W: tl.constexpr, OH: tl.constexpr, OW: tl.constexpr, PIX_MULT: tl.constexpr,
    IMG_MULT: tl.constexpr,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, FLAT: tl.constexpr, NHWC_C: tl.constexpr, OFF64: tl.constexpr,
    W_ROW: tl.constexpr, W_PAD: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """x (N, C, H, W) via sx_* (or NHWC_C, see `x_pixel_offsets`); w OHWI (K, KH, KW, C_PER_G),
    rows W_ROW elements apart (W_PAD: zero-padded, see `_flat_weight`); b (K,); y (N, K, OH, OW)
    via sy_*. Grid: (tiles of (N*OH*OW) x K_PER_G, groups)."""
    # ---- map programs to tiles: (pixel block, output-channel block) of one group
    group = tl.program_id(1)
    pid_m, pid_n = grouped_tile(tl.program_id(0), n_out_pix, K_PER_G, BLOCK_M, BLOCK_N, GROUP_M)
    EVEN_N: tl.constexpr = K_PER_G % BLOCK_N == 0
    # which image sides a tap can cross: top/left only with padding, bottom/right when the
    # last window reaches past the image
    LOW_H: tl.constexpr = PH > 0
    LOW_W: tl.constexpr = PW > 0
    HIGH_H: tl.constexpr = (OH - 1) * SH - PH + KH > H
    HIGH_W: tl.constexpr = (OW - 1) * SW - PW + KW > W
    # ---- build offsets: the tile's pixels, their windows' corners, the weight's rows
    # IMAGE_MAJOR (BLOCK_M divides the batch; see common.image_block): the tile is BLOCK_M images
    # at one output position, so (oh, ow) are scalars and a tap's bounds test is one scalar per step
    IMAGE_MAJOR: tl.constexpr = IMG_MULT % BLOCK_M == 0 and not FLAT
    k_out = group * K_PER_G + pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # global output channel
    k_ok = in_range(pid_n * BLOCK_N + tl.arange(0, BLOCK_N), K_PER_G, EVEN_N)
    n_img, oh, ow, pix_ok = tile_pixels(pid_m, n_out_pix, OH, OW, PIX_MULT, IMAGE_MAJOR, BLOCK_M, 0, BLOCK_M)
    ih0 = oh * SH - PH
    iw0 = ow * SW - PW
    w_col = wide(k_out, OFF64) * W_ROW
    x_pix = x_pixel_offsets(n_img, ih0, iw0, group * C_PER_G, H, W, sx_n, sx_c, sx_h, sx_w,
                            NHWC_C if FLAT else 0, OFF64)

    # ---- reduce over (kh, kw, c)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if FLAT:
        acc = _fwd_flat_loop(acc, x_ptr, w_ptr, x_pix, w_col, ih0, iw0, pix_ok, k_ok, sx_c, sx_h, sx_w,
                             C_PER_G, KH, KW, H, W, LOW_H, HIGH_H, LOW_W, HIGH_W, NHWC_C, W_PAD, PRECISION, BLOCK_K)
    else:
        acc = _fwd_tap_loop(acc, x_ptr, w_ptr, x_pix, w_col, ih0, iw0, pix_ok, k_ok, sx_c, sx_h, sx_w,
                            C_PER_G, KH, KW, H, W, LOW_H, HIGH_H, LOW_W, HIGH_W, OFF64, PRECISION, BLOCK_K)

    # ---- write back: bias, ReLU, one store of the tile
    if HAS_BIAS:
        acc += tl.load(b_ptr + k_out, mask=k_ok, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = relu(acc)
    y_off = wide(n_img, OFF64) * sy_n + wide(oh, OFF64) * sy_h + wide(ow, OFF64) * sy_w
    tl.store(y_ptr + y_off[:, None] + wide(k_out, OFF64)[None, :] * sy_c, acc.to(y_ptr.dtype.element_ty),
             mask=pix_ok[:, None] & k_ok[None, :])


_conv_fwd_tuned = FWD.autotune(_conv_fwd_kernel)


def _flat_weight(weight: torch.Tensor, chan: int | None = None):
    """(w, True): the weight as a (K + 256, R) matrix of OHWI rows, R = KH*KW*chan rounded up to
    64, zero past the real (K, KH*KW*chan): the FLAT loop then reads whole, 16-byte aligned rows
    without masks for any tile (BLOCK_N <= 256, BLOCK_K <= 64). Tiny: conv1's is 352 x 512.
    `chan` (default C/g): the channels per pixel the kernel reads, more than the weight's for a
    padded image (conv1: 4 of 3), the extra ones zero: the channel padding is written here, in the
    same copy (one zeroing, one copy per forward instead of a padded weight and then its matrix)."""
    k, c, kh, kw = weight.shape
    chan = chan or c
    red = kh * kw * chan
    w = weight.new_zeros(k + 256, cdiv(red, 64) * 64)
    w[:k, :red].view(k, kh, kw, chan)[..., :c] = weight.permute(0, 2, 3, 1)
    return w, True


def conv2d_forward(x: torch.Tensor, weight: torch.Tensor, bias, geom: ConvGeometry, *, relu: bool = False,
                   out_format=torch.channels_last, config=None) -> torch.Tensor:
    """y = conv2d(x, weight) + bias, ReLU'd if `relu`, in `out_format`; inputs already checked
    (`conv_geometry`). x may have any strides (channels_last is the fast layout); `config`
    forces a tile config (a triton.Config, see configs.py) instead of the autotuner."""
    y = empty_4d(geom.output_shape, x, out_format)
    if y.numel() == 0:
        return y
    if bias is not None:
        bias = bias.contiguous()  # the kernel reads bias[k] at k: a strided or expanded (stride 0) bias is copied
    flat = use_flat_reduction(geom.c_per_g) if config is None else config.kwargs.get(
        "FLAT", use_flat_reduction(geom.c_per_g))
    w_ohwi, w_pad = _flat_weight(weight, geom.c_per_g) if flat else (weight.permute(0, 2, 3, 1).contiguous(), False)
    meta = dict(geom.constexprs(), PIX_MULT=pix_multiple(geom.n_out_pix),
                IMG_MULT=pix_multiple(geom.n_img), HAS_BIAS=bias is not None, RELU=relu,
                FLAT=flat, W_ROW=w_ohwi.stride(0), W_PAD=w_pad,
                NHWC_C=nhwc_channels(x), OFF64=needs_int64(x, w_ohwi, y), PRECISION=dot_precision(x.dtype))
    n_out_pix, k_per_g = geom.n_out_pix, geom.k_per_g

    def grid(m):
        return cdiv(n_out_pix, m["BLOCK_M"]) * cdiv(k_per_g, m["BLOCK_N"]), geom.groups

    args = (x, w_ohwi, bias if bias is not None else w_ohwi, y, n_out_pix, *x.stride(), *y.stride(),
            pix_bucket(n_out_pix))
    launch(_conv_fwd_kernel, _conv_fwd_tuned, FWD, grid, args, meta, flops=geom.flops, config=config,
           check=lambda: fwd_check(x, weight, bias, geom, relu, y))
    return y

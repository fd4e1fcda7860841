"""Convolution input gradient (dgrad) as an implicit GEMM, with the ReLU mask fused.

    dx[n, ih, iw, g*C_PER_G + c] = sum_{kh, kw, k} dy'[n, oh, ow, g*K_PER_G + k] * w[g*K_PER_G + k, c, kh, kw]
    where oh*SH = ih + PH - kh, ow*SW = iw + PW - kw;     dy' = dy * (y > 0) if RELU_MASK else dy

GEMM per group g: M = N*H*W input pixels, N = C_PER_G input channels, reduction over
(kh, kw, k). For stride 1 it is the convolution of dy (padded by K-1-P) with the flipped,
transposed weight; taps whose (ih + PH - kh) is not a multiple of the stride are masked
(correct for any stride; AlexNet needs dgrad only for the stride-1 layers conv2-5, conv1's
input being the image).

Layouts: dy (and y, read only with RELU_MASK: the forward output, to mask dy where the
fused ReLU was inactive) through one set of strides, fast as channels_last (k contiguous);
dx through its strides. The weight is re-laid out once per call as wt (groups, KH, KW,
C_PER_G, K_PER_G), k contiguous, so both GEMM operands are contiguous along the reduction
(what tf32 wgmma needs). The reduction loop, one pipelined `for`, runs over (tap, k chunk)
steps, or for few output channels (FLAT, K_PER_G < 16) over BLOCK_K-wide chunks of the
flattened (kh, kw, k) index, as in the forward.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import cdiv, empty_4d
from ._conv_common import (ConvGeometry, dot_precision, grouped_tile, in_range, launch, load_dy, pix_bucket,
                           split_pixels)
from .conv_configs import DGRAD, use_flat_reduction

__all__ = ["conv2d_input_grad"]


@triton.jit
def _source_row(i, tap, PAD: tl.constexpr, S: tl.constexpr, n_out):
    """(o, ok): the output row o with o*S = i + PAD - tap, and whether it exists."""
    t = i + PAD - tap
    if S == 1:
        return t, (t >= 0) & (t < n_out)
    else:
        o = t // S
        return o, (t >= 0) & (o * S == t) & (o < n_out)


@triton.jit
def _dgrad_tap_loop(acc, dy_ptr, wt_ptr, y_ptr, dy_img, wt_col, ih, iw, pix_ok, chan_ok, out_h, out_w,
                    sdy_c, sdy_h, sdy_w, C_PER_G: tl.constexpr, K_PER_G: tl.constexpr, KH: tl.constexpr,
                    KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                    RELU_MASK: tl.constexpr, PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc += A @ B over steps (tap, chunk of BLOCK_K output channels); A rows are contiguous."""
    K_CHUNKS: tl.constexpr = (K_PER_G + BLOCK_K - 1) // BLOCK_K
    EVEN_K: tl.constexpr = K_PER_G % BLOCK_K == 0
    offs_k = tl.arange(0, BLOCK_K)
    for step in tl.range(0, KH * KW * K_CHUNKS):
        tap = step // K_CHUNKS
        k = (step - tap * K_CHUNKS) * BLOCK_K + offs_k
        kh = tap // KW
        kw = tap - kh * KW
        oh, oh_ok = _source_row(ih, kh, PH, SH, out_h)
        ow, ow_ok = _source_row(iw, kw, PW, SW, out_w)
        k_ok = in_range(k, K_PER_G, EVEN_K)
        a_mask = (pix_ok & oh_ok & ow_ok)[:, None] & k_ok[None, :]
        dy_off = (dy_img + oh.to(tl.int64) * sdy_h + ow.to(tl.int64) * sdy_w)[:, None] + (k * sdy_c)[None, :]
        a = load_dy(dy_ptr, y_ptr, dy_off, a_mask, RELU_MASK)
        b = tl.load(wt_ptr + wt_col[None, :] + (tap * C_PER_G * K_PER_G + k)[:, None],
                    mask=k_ok[:, None] & chan_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _dgrad_flat_loop(acc, dy_ptr, wt_ptr, y_ptr, dy_img, wt_col, ih, iw, pix_ok, chan_ok, out_h, out_w,
                     sdy_c, sdy_h, sdy_w, C_PER_G: tl.constexpr, K_PER_G: tl.constexpr, KH: tl.constexpr,
                     KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                     RELU_MASK: tl.constexpr, PRECISION: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc += A @ B over BLOCK_K-wide chunks of the flattened (kh, kw, k) reduction index
    (few output channels; decoded once per chunk, the source rows per element)."""
    RED: tl.constexpr = KH * KW * K_PER_G
    for r0 in tl.range(0, RED, BLOCK_K):
        r = r0 + tl.arange(0, BLOCK_K)
        kh = r // (KW * K_PER_G)
        kw = (r // K_PER_G) % KW
        k = r % K_PER_G
        r_ok = in_range(r, RED, RED % BLOCK_K == 0)
        oh, oh_ok = _source_row(ih[:, None], kh[None, :], PH, SH, out_h)
        ow, ow_ok = _source_row(iw[:, None], kw[None, :], PW, SW, out_w)
        a_mask = pix_ok[:, None] & r_ok[None, :] & oh_ok & ow_ok
        dy_off = dy_img[:, None] + oh.to(tl.int64) * sdy_h + ow.to(tl.int64) * sdy_w + (k * sdy_c)[None, :]
        a = load_dy(dy_ptr, y_ptr, dy_off, a_mask, RELU_MASK)
        b = tl.load(wt_ptr + wt_col[None, :] + ((r - k) * C_PER_G + k)[:, None],
                    mask=r_ok[:, None] & chan_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc


@triton.jit(do_not_specialize=["n_in_pix", "height", "width", "out_h", "out_w", "pix_bucket"])
def _conv_dgrad_kernel(
    dy_ptr, wt_ptr, y_ptr, dx_ptr,
    n_in_pix, height, width, out_h, out_w,
    sdy_n, sdy_c, sdy_h, sdy_w,
    sdx_n, sdx_c, sdx_h, sdx_w,
    pix_bucket,  # autotuning key only
    C_PER_G: tl.constexpr, K_PER_G: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    RELU_MASK: tl.constexpr, FLAT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """dy, y (N, K, OH, OW) via sdy_*; wt (groups, KH, KW, C_PER_G, K_PER_G) contiguous;
    dx (N, C, H, W) via sdx_*. Grid: (tiles of (N*H*W) x C_PER_G, groups)."""
    group = tl.program_id(1)
    pid_m, pid_n = grouped_tile(tl.program_id(0), n_in_pix, C_PER_G, BLOCK_M, BLOCK_N, GROUP_M)
    pix = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    chan = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # input channel within the group
    pix_ok = pix < n_in_pix
    chan_ok = in_range(chan, C_PER_G, C_PER_G % BLOCK_N == 0)
    n_img, ih, iw = split_pixels(pix, height, width)
    dy_img = n_img.to(tl.int64) * sdy_n + (group * K_PER_G).to(tl.int64) * sdy_c
    wt_col = (group * KH * KW * C_PER_G + chan).to(tl.int64) * K_PER_G  # wt[group, 0, 0, chan, 0]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if FLAT:
        acc = _dgrad_flat_loop(acc, dy_ptr, wt_ptr, y_ptr, dy_img, wt_col, ih, iw, pix_ok, chan_ok, out_h, out_w,
                               sdy_c, sdy_h, sdy_w, C_PER_G, K_PER_G, KH, KW, SH, SW, PH, PW,
                               RELU_MASK, PRECISION, BLOCK_K)
    else:
        acc = _dgrad_tap_loop(acc, dy_ptr, wt_ptr, y_ptr, dy_img, wt_col, ih, iw, pix_ok, chan_ok, out_h, out_w,
                              sdy_c, sdy_h, sdy_w, C_PER_G, K_PER_G, KH, KW, SH, SW, PH, PW,
                              RELU_MASK, PRECISION, BLOCK_K)

    dx_off = n_img.to(tl.int64) * sdx_n + ih.to(tl.int64) * sdx_h + iw.to(tl.int64) * sdx_w
    dx_chan = (group * C_PER_G + chan).to(tl.int64) * sdx_c
    tl.store(dx_ptr + dx_off[:, None] + dx_chan[None, :], acc.to(dx_ptr.dtype.element_ty),
             mask=pix_ok[:, None] & chan_ok[None, :])


_conv_dgrad_tuned = DGRAD.autotune(_conv_dgrad_kernel)


def conv2d_input_grad(dy: torch.Tensor, weight: torch.Tensor, geom: ConvGeometry, *, y=None,
                      out_format=torch.channels_last, config=None) -> torch.Tensor:
    """dx (geom.input_shape, `out_format`) from dy; with `y` (the forward output of a conv with
    fused ReLU, same strides as dy) dy is masked by y > 0. dy may have any strides
    (channels_last is the fast layout); `config` forces a tile config (see conv_configs.py)."""
    dx = empty_4d(geom.input_shape, dy, out_format)
    if dx.numel() == 0:
        return dx
    if y is not None and y.stride() != dy.stride():
        y = torch.empty_like(dy).copy_(y)  # the kernel reads y through dy's strides
    g, kg, cg, kh, kw = geom.groups, geom.k_per_g, geom.c_per_g, geom.kernel_h, geom.kernel_w
    wt = weight.reshape(g, kg, cg, kh, kw).permute(0, 3, 4, 2, 1).contiguous()  # (g, KH, KW, C/g, K/g)
    meta = dict(geom.constexprs(), RELU_MASK=y is not None, FLAT=use_flat_reduction(kg),
                PRECISION=dot_precision(dy.dtype))
    n_in_pix = geom.n_in_pix

    def grid(m):
        return cdiv(n_in_pix, m["BLOCK_M"]) * cdiv(cg, m["BLOCK_N"]), g

    args = (dy, wt, y if y is not None else dy, dx, n_in_pix, geom.height, geom.width, geom.out_h, geom.out_w,
            *dy.stride(), *dx.stride(), pix_bucket(n_in_pix))
    launch(_conv_dgrad_kernel, _conv_dgrad_tuned, DGRAD, grid, args, meta, flops=geom.flops, config=config)
    return dx

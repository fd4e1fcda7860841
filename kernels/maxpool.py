"""Max-pooling with (possibly overlapping) windows, no padding (paper section 3.4: 3x3, stride 2).

Forward: y[n, c, oh, ow] = max over the KH x KW window at (oh*SH, ow*SW) of x, and the
window-local position of that max, kh*KW + kw, saved as int8 (int16 past 128 positions,
int32 past 32768): one byte per output instead of an int64 index per output as PyTorch keeps. The window is
scanned row by row and a value wins if it is larger than the running max or NaN, exactly
as PyTorch's max_pool2d, so ties go to the first maximum and NaNs propagate.

Backward is a gather, deterministic and atomics-free: each input pixel sums the gradients
of the (at most ceil(KH/SH) x ceil(KW/SW)) windows that cover it and chose it.

Layout: (N, C, H, W), any strides; each program owns BLOCK_P pixels x BLOCK_C channels of
the output (forward) or input (backward); outputs come back in x's memory format. Pixel
indices are int32: inputs of 2**31 or more pixels (N*H*W) are refused. A double
backward raises (max_pool2d_backward has no autograd formula) instead of dropping
second-order terms.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    cdiv,
    check_pixel_count,
    check_tensor,
    empty_4d,
    is_dense,
    memory_format,
    pair,
    pixel_coords,
    pixel_offsets,
)
from .runtime.dispatch import call as _call
from .runtime.fastlaunch import launch as fast_launch
from .runtime.launch_params import maxpool_blocks

__all__ = ["max_pool2d"]


@triton.jit
def _max_pool_fwd_kernel(
    x_ptr, y_ptr, idx_ptr,
    n_out_pix, n_chan, height, width, out_h, out_w,
    sx_n, sx_c, sx_h, sx_w,
    sy_n, sy_c, sy_h, sy_w,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """x (N, C, H, W) through sx_*; y and idx (N, C, out_h, out_w) through sy_*."""
    # -- map programs: axis 0 a block of pixels, axis 1 a block of channels
    pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    chan = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (pix < n_out_pix)[:, None] & (chan < n_chan)[None, :]
    # -- build pointers: top-left input corner of each window, input pixel (n, oh*SH, ow*SW)
    n, oh, ow = pixel_coords(pix, out_h, out_w)
    corner = n.to(tl.int64) * sx_n + (oh * SH).to(tl.int64) * sx_h + (ow * SW).to(tl.int64) * sx_w
    base = x_ptr + corner[:, None] + chan.to(tl.int64)[None, :] * sx_c

    # -- reduce: the max over the KH x KW window and its window-local position
    best = tl.full((BLOCK_P, BLOCK_C), float("-inf"), tl.float32)
    best_idx = tl.zeros((BLOCK_P, BLOCK_C), tl.int32)
    for kh in tl.static_range(KH):
        for kw in tl.static_range(KW):
            v = tl.load(base + kh * sx_h + kw * sx_w, mask=mask, other=float("-inf")).to(tl.float32)
            take = (v > best) | (v != v)  # larger, or NaN: PyTorch's rule
            best = tl.where(take, v, best)
            best_idx = tl.where(take, kh * KW + kw, best_idx)

    # -- write back: the max and its argmax in the output's layout
    y_off = pixel_offsets(pix, out_h, out_w, sy_n, sy_h, sy_w)[:, None] + chan.to(tl.int64)[None, :] * sy_c
    tl.store(y_ptr + y_off, best.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(idx_ptr + y_off, best_idx.to(idx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _max_pool_bwd_kernel(
    dy_ptr, idx_ptr, dx_ptr, y_ptr,
    n_pix, n_chan, height, width, out_h, out_w,
    sy_n, sy_c, sy_h, sy_w,
    sd_n, sd_c, sd_h, sd_w,
    sx_n, sx_c, sx_h, sx_w,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, RELU_INPUT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dx (N, C, H, W) through sx_*; idx (N, C, out_h, out_w) through sy_*, dy through sd_*
    (its own strides: pool5's dy comes NCHW-ordered from the flatten, idx channels_last); with
    RELU_INPUT (x is a ReLU's output) also the pooled y through sy_*, and a window passes dy
    only where y > 0 (or NaN): the gradient of that ReLU at the chosen position, whose value y is.
    Input row ih lies in output rows oh with oh*SH <= ih < oh*SH + KH, i.e. the
    ceil(KH/SH) rows ih//SH - i (i = 0, 1, ...) that are >= 0 and < out_h, likewise for w."""
    # -- map programs: axis 0 a block of pixels, axis 1 a block of channels
    pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    chan = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    pix_ok = pix < n_pix
    chan_ok = chan < n_chan
    n, ih, iw = pixel_coords(pix, height, width)
    chan_off = chan.to(tl.int64)[None, :] * sy_c
    dy_chan_off = chan.to(tl.int64)[None, :] * sd_c

    # -- reduce: gather the gradients of every window that chose this input pixel
    dx = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
    for i in tl.static_range((KH + SH - 1) // SH):
        oh = ih // SH - i
        kh = ih - oh * SH
        row_ok = (oh >= 0) & (oh < out_h) & (kh < KH)
        for j in tl.static_range((KW + SW - 1) // SW):
            ow = iw // SW - j
            kw = iw - ow * SW
            ok = pix_ok & row_ok & (ow >= 0) & (ow < out_w) & (kw < KW)
            mask = ok[:, None] & chan_ok[None, :]
            off = (n.to(tl.int64) * sy_n + oh.to(tl.int64) * sy_h + ow.to(tl.int64) * sy_w)[:, None] + chan_off
            chosen = tl.load(idx_ptr + off, mask=mask, other=-1).to(tl.int32)
            dy_off = (n.to(tl.int64) * sd_n + oh.to(tl.int64) * sd_h + ow.to(tl.int64) * sd_w)[:, None] + dy_chan_off
            g = tl.load(dy_ptr + dy_off, mask=mask, other=0.0).to(tl.float32)
            if RELU_INPUT:
                g = tl.where(tl.load(y_ptr + off, mask=mask, other=0.0) <= 0, 0.0, g)
            dx += tl.where(chosen == (kh * KW + kw)[:, None], g, 0.0)

    # -- write back: dx in the input's layout
    x_off = pixel_offsets(pix, height, width, sx_n, sx_h, sx_w)[:, None] + chan.to(tl.int64)[None, :] * sx_c
    tl.store(dx_ptr + x_off, dx.to(dx_ptr.dtype.element_ty), mask=pix_ok[:, None] & chan_ok[None, :])


# ------------------------------------------------------------------------------ launchers
def argmax_dtype(positions: int) -> torch.dtype:
    """The narrowest integer type that holds window positions 0 .. positions - 1."""
    return torch.int8 if positions <= 128 else torch.int16 if positions <= 32768 else torch.int32


def max_pool2d_forward(x, kernel_size=3, stride=2, blocks=None, out_format=None):
    """Returns (y, idx): the pooled output and the int8/int16/int32 window-local argmax, in
    `out_format` (default: x's memory format).
    blocks = (BLOCK_P, BLOCK_C, num_warps) overrides the tile choice (bench/sweep_memory.py)."""
    check_tensor(x, "x", ndim=4)
    check_pixel_count(x, "x")
    (kh, kw), (sh, sw) = pair(kernel_size, "kernel_size"), pair(stride, "stride")
    n_img, n_chan, height, width = x.shape
    if height < kh or width < kw:
        raise ValueError(f"input of {height}x{width} pixels is smaller than the {kh}x{kw} pooling window")
    out_h, out_w = (height - kh) // sh + 1, (width - kw) // sw + 1
    fmt = memory_format(x)
    y = empty_4d((n_img, n_chan, out_h, out_w), x, out_format or fmt)
    idx = empty_4d(y.shape, x, out_format or fmt, dtype=argmax_dtype(kh * kw))
    if y.numel() == 0:
        return y, idx
    block_p, block_c, warps = blocks or maxpool_blocks(n_chan, fmt, backward=False)
    n_out_pix = n_img * out_h * out_w
    grid = (cdiv(n_out_pix, block_p), cdiv(n_chan, block_c))
    fast_launch(_max_pool_fwd_kernel, grid,
                (x, y, idx, n_out_pix, n_chan, height, width, out_h, out_w, *x.stride(), *y.stride()),
                dict(KH=kh, KW=kw, SH=sh, SW=sw, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=warps))
    return y, idx


def max_pool2d_backward(dy, idx, input_shape, input_format, kernel_size=3, stride=2, blocks=None, relu_out=None):
    """dx (input_shape, input_format) from the upstream gradient and the saved argmax. With
    `relu_out` (the pooled output y, when the pooled input was a ReLU's output) dy passes only
    where y > 0: the gradient through that ReLU too (max-pooling and ReLU commute)."""
    (kh, kw), (sh, sw) = pair(kernel_size, "kernel_size"), pair(stride, "stride")
    if not is_dense(idx):  # a strided or expanded view: y below is laid out as idx, which must be dense
        idx = idx.contiguous(memory_format=memory_format(idx))
    if relu_out is not None and relu_out.stride() != idx.stride():  # the kernel reads y through idx's strides
        relu_out = torch.empty_like(idx, dtype=relu_out.dtype).copy_(relu_out)
    dx = empty_4d(input_shape, dy, input_format)
    if dx.numel() == 0:
        return dx
    n_img, n_chan, height, width = input_shape
    out_h, out_w = idx.shape[2], idx.shape[3]
    block_p, block_c, warps = blocks or maxpool_blocks(n_chan, input_format, backward=True)
    n_pix = n_img * height * width
    grid = (cdiv(n_pix, block_p), cdiv(n_chan, block_c))
    fast_launch(_max_pool_bwd_kernel, grid,
                (dy, idx, dx, relu_out if relu_out is not None else dy, n_pix, n_chan, height, width, out_h, out_w,
                 *idx.stride(), *dy.stride(), *dx.stride()),
                dict(KH=kh, KW=kw, SH=sh, SW=sw, RELU_INPUT=relu_out is not None, BLOCK_P=block_p, BLOCK_C=block_c,
                     num_warps=warps))
    return dx


def max_pool2d(x: torch.Tensor, kernel_size=3, stride=2, *, input_relu: bool = False, contiguous_out: bool = False):
    """Max-pooling, no padding, floor output size; the paper's overlapping 3x3/2 by default.
    Op alexnet_triton::max_pool2d (kernels/ops.py: the device picks Triton or the reference).
    `input_relu`: x is a ReLU's output (the conv before it has relu and dy_masked): the
    x-gradient is taken through that ReLU (kernels/conv/op.py, the conv op's `dy_masked`).
    `contiguous_out`: the output in NCHW order whatever x's layout (flattening it is a view)."""
    check_tensor(x, "x", ndim=4, kernel_device=False)
    (kh, kw), stride = pair(kernel_size, "kernel_size"), pair(stride, "stride")
    if x.shape[2] < kh or x.shape[3] < kw:
        raise ValueError(f"input of {x.shape[2]}x{x.shape[3]} pixels is smaller than the {kh}x{kw} pooling window")
    return _call("max_pool2d", x, (kh, kw), stride, input_relu, contiguous_out)[0]

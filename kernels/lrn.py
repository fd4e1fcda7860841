"""Fused ReLU + local response normalisation across channels (paper section 3.3).

    a = max(x, 0)
    s[c] = k + alpha * sum_{j = c-LO}^{c+HI} a[j]^2        (j clipped to [0, C))
    b[c] = a[c] * s[c] ** -beta

with LO = size // 2, HI = (size - 1) // 2: for the paper's n = 5, channels c-2..c+2. alpha
multiplies the plain sum; PyTorch's F.local_response_norm divides it by `size` first.

Layout: x is (N, C, H, W) with any strides (channels_last is the fast one); outputs come
back in x's memory format. Each program owns a tile of BLOCK_P pixels x BLOCK_C channels
and loads it together with the tiles 8 channels before and after (aligned, vectorised
loads; the halos hit L1). Splitting each tile into 8 planes of channels 8g + j turns a
shift by d channels into picking plane j + d, so the window sums move no data between
threads, and windows reach at most 8 channels (size <= 17).

Backward. With u = a * s^-(beta+1) = b / s, the gradient through LRN and ReLU is

    dx[j] = [x[j] > 0] * (g[j] * s[j]^-beta - 2 alpha beta a[j] * sum_{i : j in window(i)} g[i] u[i])

The forward saves x and u (u only when a gradient is needed): with u stored, the backward
needs one power per element instead of one per element and window position, and every
neighbour term is a load and a multiply.

NaN and inf behave as in the plain composition LRN(torch.relu(x)): the ReLU keeps NaN
(torch.relu(nan) is nan), and b is a * s^-beta, not u * s, so an activation whose square
overflows fp32 (|a| > 1.8e19: s = inf) gives b = 0 as the reference does, where u * s would
be 0 * inf = NaN. Pixel indices are int32: inputs of 2**31 or more pixels (N*H*W) are
refused. A double backward raises (the backward op, alexnet_triton::lrn_backward, has no
autograd formula) instead of silently dropping the second-order terms.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    as_format,
    cdiv,
    check_pixel_count,
    check_tensor,
    empty_4d,
    is_dense,
    memory_format,
    pixel_offsets,
)
from .runtime.dispatch import call as _call
from .runtime.fastlaunch import launch as fast_launch
from .runtime.launch_params import lrn_blocks

__all__ = ["relu_lrn", "local_response_norm"]


@triton.jit
def _act(x, RELU: tl.constexpr):
    x = x.to(tl.float32)
    if RELU:
        x = tl.where(x < 0.0, 0.0, x)  # keeps NaN, as torch.relu does (tl.maximum(nan, 0) is 0 on GPUs)
    return x


@triton.jit
def _planes(t, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Split a (BLOCK_P, BLOCK_C) tile into 8 planes of shape (BLOCK_P, BLOCK_C // 8):
    plane j holds channels 8g + j. Each thread holds 8 consecutive channels of a row, so
    this is a renaming of registers, not a data movement."""
    t = tl.reshape(t, (BLOCK_P, BLOCK_C // 8, 2, 2, 2))  # c = 8g + 4*j2 + 2*j1 + j0
    even, odd = tl.split(t)                               # j0 = 0, 1
    e0, e1 = tl.split(even)                               # j1
    o0, o1 = tl.split(odd)
    p0, p4 = tl.split(e0)                                 # j2
    p2, p6 = tl.split(e1)
    p1, p5 = tl.split(o0)
    p3, p7 = tl.split(o1)
    return p0, p1, p2, p3, p4, p5, p6, p7


@triton.jit
def _unplanes(p0, p1, p2, p3, p4, p5, p6, p7, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Inverse of _planes."""
    even = tl.join(tl.join(p0, p4), tl.join(p2, p6))
    odd = tl.join(tl.join(p1, p5), tl.join(p3, p7))
    return tl.reshape(tl.join(even, odd), (BLOCK_P, BLOCK_C))


@triton.jit
def _plane_window(prev, cur, nxt, j: tl.constexpr, LO: tl.constexpr, HI: tl.constexpr):
    """sum over d = -LO..HI of the value at channel 8g + j + d, given the planes of the
    tile (cur) and of the tile shifted by -8 (prev) and +8 (nxt) channels."""
    acc = cur[j]
    for d in tl.static_range(1, LO + 1):
        if j - d >= 0:
            acc += cur[j - d]
        else:
            acc += prev[j - d + 8]
    for d in tl.static_range(1, HI + 1):
        if j + d < 8:
            acc += cur[j + d]
        else:
            acc += nxt[j + d - 8]
    return acc


@triton.jit
def _channel_window_sum(prev, cur, nxt, LO: tl.constexpr, HI: tl.constexpr,
                        BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """For tiles v(c - 8), v(c), v(c + 8) of shape (BLOCK_P, BLOCK_C): the tile of
    sum_{d=-LO..HI} v(c + d). Channels move only inside registers: no shifted loads."""
    pp = _planes(prev, BLOCK_P, BLOCK_C)
    cp = _planes(cur, BLOCK_P, BLOCK_C)
    npl = _planes(nxt, BLOCK_P, BLOCK_C)
    return _unplanes(
        _plane_window(pp, cp, npl, 0, LO, HI), _plane_window(pp, cp, npl, 1, LO, HI),
        _plane_window(pp, cp, npl, 2, LO, HI), _plane_window(pp, cp, npl, 3, LO, HI),
        _plane_window(pp, cp, npl, 4, LO, HI), _plane_window(pp, cp, npl, 5, LO, HI),
        _plane_window(pp, cp, npl, 6, LO, HI), _plane_window(pp, cp, npl, 7, LO, HI),
        BLOCK_P, BLOCK_C)


@triton.jit
def _load_3(ptrs, stride_c, chan, n_chan, pix_ok):
    """The tile at channels chan - 8, chan, chan + 8 of a group (chan counts within the
    group; zero outside [0, n_chan))."""
    rows = pix_ok[:, None]
    prev = tl.load(ptrs - 8 * stride_c, mask=rows & ((chan >= 8) & (chan < n_chan + 8))[None, :], other=0.0)
    cur = tl.load(ptrs, mask=rows & (chan < n_chan)[None, :], other=0.0)
    nxt = tl.load(ptrs + 8 * stride_c, mask=rows & (chan + 8 < n_chan)[None, :], other=0.0)
    return prev, cur, nxt


@triton.jit
def _tile(n_pix, n_chan, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's pixels, its channels within the group, and the group's first channel.
    Grid: (pixel blocks, groups * channel blocks per group); n_chan counts one group."""
    blocks_per_group = tl.cdiv(n_chan, BLOCK_C)
    group = tl.program_id(1) // blocks_per_group
    pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    chan = (tl.program_id(1) - group * blocks_per_group) * BLOCK_C + tl.arange(0, BLOCK_C)
    return pix, chan, group * n_chan


@triton.jit
def _relu_lrn_fwd_kernel(
    x_ptr, y_ptr, u_ptr,
    n_pix, n_chan, height, width,
    sx_n, sx_c, sx_h, sx_w,
    sy_n, sy_c, sy_h, sy_w,
    k, alpha, beta,
    LO: tl.constexpr, HI: tl.constexpr, RELU: tl.constexpr, SAVE_U: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """x: (N, C, H, W) read through strides sx_*; y = LRN(act(x)) and, if SAVE_U,
    u = y / s, both written through strides sy_*. n_chan is the channels of one group
    (windows stop at group boundaries); BLOCK_C is a multiple of 8."""
    # -- map programs: this program's tile of pixels x one group's channels
    pix, chan, first = _tile(n_pix, n_chan, BLOCK_P, BLOCK_C)
    pix_ok = pix < n_pix
    # -- build pointers: int64 offsets through the strides (any layout)
    chan64 = (first + chan).to(tl.int64)[None, :]
    x_ptrs = x_ptr + pixel_offsets(pix, height, width, sx_n, sx_h, sx_w)[:, None] + chan64 * sx_c

    # -- reduce: the tile and its +-8-channel halos, the window sum of squares across channels
    prev, cur, nxt = _load_3(x_ptrs, sx_c, chan, n_chan, pix_ok)
    a = _act(cur, RELU)
    a_prev, a_next = _act(prev, RELU), _act(nxt, RELU)
    s = k + alpha * _channel_window_sum(a_prev * a_prev, a * a, a_next * a_next, LO, HI, BLOCK_P, BLOCK_C)
    y = a * tl.exp2(-beta * tl.log2(s))  # a * s^-beta; not u * s, which is 0 * inf = NaN once s overflows

    # -- write back: y (and u for the backward) in the output's layout
    y_off = pixel_offsets(pix, height, width, sy_n, sy_h, sy_w)[:, None] + chan64 * sy_c
    mask = pix_ok[:, None] & (chan < n_chan)[None, :]
    tl.store(y_ptr + y_off, y.to(y_ptr.dtype.element_ty), mask=mask)
    if SAVE_U:
        tl.store(u_ptr + y_off, (y / s).to(u_ptr.dtype.element_ty), mask=mask)  # u = a * s^-(beta+1)


@triton.jit
def _relu_lrn_bwd_kernel(
    x_ptr, u_ptr, dy_ptr, dx_ptr,
    n_pix, n_chan, height, width,
    sx_n, sx_c, sx_h, sx_w,
    sy_n, sy_c, sy_h, sy_w,
    k, alpha, beta,
    LO: tl.constexpr, HI: tl.constexpr, RELU: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dx = d(LRN(act(x)))/dx^T dy. x through strides sx_*; u, dy and dx through sy_*.
    Channel i's window holds j iff i in j-HI .. j+LO: the cross term's window is mirrored.
    n_chan is the channels of one group."""
    # -- map programs: this program's tile of pixels x one group's channels
    pix, chan, first = _tile(n_pix, n_chan, BLOCK_P, BLOCK_C)
    pix_ok = pix < n_pix
    # -- build pointers: int64 offsets through the strides (any layout)
    chan64 = (first + chan).to(tl.int64)[None, :]
    x_ptrs = x_ptr + pixel_offsets(pix, height, width, sx_n, sx_h, sx_w)[:, None] + chan64 * sx_c
    y_off = pixel_offsets(pix, height, width, sy_n, sy_h, sy_w)[:, None] + chan64 * sy_c

    # -- reduce: the tile and its +-8-channel halos, the window sum of squares across channels
    prev, cur, nxt = _load_3(x_ptrs, sx_c, chan, n_chan, pix_ok)
    a = _act(cur, RELU)
    a_prev, a_next = _act(prev, RELU), _act(nxt, RELU)
    s = k + alpha * _channel_window_sum(a_prev * a_prev, a * a, a_next * a_next, LO, HI, BLOCK_P, BLOCK_C)

    # -- reduce: the mirrored window sum of dy * u (the cross term)
    dy_prev, dy, dy_next = _load_3(dy_ptr + y_off, sy_c, chan, n_chan, pix_ok)
    u_prev, u, u_next = _load_3(u_ptr + y_off, sy_c, chan, n_chan, pix_ok)
    cross = _channel_window_sum(dy_prev.to(tl.float32) * u_prev.to(tl.float32), dy.to(tl.float32) * u.to(tl.float32),
                                dy_next.to(tl.float32) * u_next.to(tl.float32), HI, LO, BLOCK_P, BLOCK_C)

    dx = dy.to(tl.float32) * tl.exp2(-beta * tl.log2(s)) - (2.0 * alpha * beta) * a * cross
    if RELU:  # torch.relu's gradient: zero where relu(x) <= 0; NaN inputs pass theirs through
        dx = tl.where(a <= 0.0, 0.0, dx)
    tl.store(dx_ptr + y_off, dx.to(dx_ptr.dtype.element_ty), mask=pix_ok[:, None] & (chan < n_chan)[None, :])


# ------------------------------------------------------------------------------ launchers
def _check_params(size, alpha, beta, k):
    if not isinstance(size, int) or not 1 <= size <= 17:
        raise ValueError(f"size must be an int in 1..17 (a window reaches at most 8 channels), got {size!r}")
    if not k > 0:
        raise ValueError(f"k must be > 0 so that the denominator never vanishes, got {k!r}")
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha!r}")


def _check_groups(n_chan: int, groups) -> int:
    if not isinstance(groups, int) or groups < 1 or n_chan % groups:
        raise ValueError(f"groups must be a positive int dividing the {n_chan} channels, got {groups!r}")
    return n_chan // groups


def _launch(kernel, first_args, x, out, n_chan_per_group, groups, size, alpha, beta, k, relu, blocks, **flags):
    n_img, _, height, width = x.shape
    n_pix = n_img * height * width
    block_p, block_c, warps = blocks or lrn_blocks(n_chan_per_group, memory_format(out))
    grid = (cdiv(n_pix, block_p), groups * cdiv(n_chan_per_group, block_c))
    fast_launch(kernel, grid, (*first_args, n_pix, n_chan_per_group, height, width, *x.stride(), *out.stride(),
                               float(k), float(alpha), float(beta)),
                dict(LO=size // 2, HI=(size - 1) // 2, RELU=relu, BLOCK_P=block_p, BLOCK_C=block_c, **flags,
                     num_warps=warps))


def relu_lrn_forward(x, size=5, alpha=1e-4, beta=0.75, k=2.0, relu=True, groups=1, save_u=False, blocks=None):
    """Launch the forward; returns (y, u) with u None unless save_u.
    blocks = (BLOCK_P, BLOCK_C, num_warps) overrides the tile choice (bench/sweep_memory.py)."""
    check_tensor(x, "x", ndim=4)
    check_pixel_count(x, "x")
    _check_params(size, alpha, beta, k)
    per_group = _check_groups(x.shape[1], groups)
    fmt = memory_format(x)
    y = empty_4d(x.shape, x, fmt)
    u = empty_4d(x.shape, x, fmt) if save_u else y  # y stands in for the unused pointer
    if y.numel() > 0:
        _launch(_relu_lrn_fwd_kernel, (x, y, u), x, y, per_group, groups, size, alpha, beta, k, relu, blocks,
                SAVE_U=save_u)
    return y, (u if save_u else None)


def relu_lrn_backward(dy, x, u, size=5, alpha=1e-4, beta=0.75, k=2.0, relu=True, groups=1, blocks=None):
    """dx from the upstream gradient dy and the saved x and u."""
    if not is_dense(u):  # dx is laid out as u (empty_like): a strided or expanded u is copied dense first
        u = u.contiguous(memory_format=memory_format(u))
    dy = as_format(dy, memory_format(u))
    if dy.stride() != u.stride():  # the kernel reads dy through u's strides
        dy = torch.empty_like(u).copy_(dy)
    dx = torch.empty_like(u)
    if dx.numel() > 0:
        _launch(_relu_lrn_bwd_kernel, (x, u, dy, dx), x, dx, x.shape[1] // groups, groups, size, alpha, beta, k,
                relu, blocks)
    return dx


def relu_lrn(x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0,
             groups: int = 1):
    """ReLU then local response normalisation across channels, fused (paper section 3.3;
    defaults k=2, n=5, alpha=1e-4, beta=0.75). Note alpha is not divided by size.
    groups > 1 normalises each of `groups` equal channel blocks on its own (a window stops at
    a block boundary), as each GPU column of the paper does with its own maps.
    Op alexnet_triton::relu_lrn (kernels/ops.py: the device picks Triton or the reference)."""
    check_tensor(x, "x", ndim=4, kernel_device=False)
    return _call("relu_lrn", x, size, alpha, beta, k, groups, _needs_grad(x))[0]


def local_response_norm(x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0,
                        groups: int = 1):
    """Local response normalisation without the ReLU (for the tanh ablation); alpha is
    not divided by size. Op alexnet_triton::local_response_norm."""
    check_tensor(x, "x", ndim=4, kernel_device=False)
    return _call("local_response_norm", x, size, alpha, beta, k, groups, _needs_grad(x))[0]


def _needs_grad(x: torch.Tensor) -> bool:
    """Whether the forward keeps u for the backward (not in inference)."""
    return torch.is_grad_enabled() and x.requires_grad

"""Fused ReLU + local response normalisation across channels (paper section 3.3).

    a = max(x, 0)
    s[c] = k + alpha * sum_{j = c-LO}^{c+HI} a[j]^2        (j clipped to [0, C))
    b[c] = a[c] * s[c] ** -beta

with LO = size // 2, HI = (size - 1) // 2: for the paper's n = 5, channels c-2..c+2. alpha
multiplies the plain sum; PyTorch's F.local_response_norm divides it by `size` first.

Layout: x is (N, C, H, W) with any strides (contiguous NCHW and channels_last are the fast
ones); outputs come back in x's memory format. Each program owns a tile of BLOCK_P pixels x
BLOCK_C channels; a channel window reads the same tile shifted by -LO..HI channels, which
hits the L1 cache, so each element travels from memory once.

Backward. With u = a * s^-(beta+1) = b / s, the gradient through LRN and ReLU is

    dx[j] = [x[j] > 0] * (g[j] * s[j]^-beta - 2 alpha beta a[j] * sum_{i : j in window(i)} g[i] u[i])

The forward saves x and u (u only when a gradient is needed): with u stored, the backward
needs one power per element instead of one per element and window position, and every
neighbour term is a load and a multiply.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import as_format, cdiv, check_tensor, empty_4d, interpreting, memory_format, pixel_offsets

__all__ = ["relu_lrn", "local_response_norm", "ReLULRNFunction"]


@triton.jit
def _load_act(ptr, pix_off, chan, stride_c, n_chan, pix_ok, RELU: tl.constexpr):
    """a = relu(x) (or x if not RELU) at (pixels, channels) as fp32; zero outside [0, n_chan)."""
    mask = pix_ok[:, None] & ((chan >= 0) & (chan < n_chan))[None, :]
    x = tl.load(ptr + pix_off[:, None] + chan.to(tl.int64)[None, :] * stride_c, mask=mask, other=0.0)
    x = x.to(tl.float32)
    if RELU:
        x = tl.maximum(x, 0.0)
    return x


@triton.jit
def _window_sum_sq(x_ptr, pix_off, chan, stride_c, n_chan, pix_ok, a,
                   LO: tl.constexpr, HI: tl.constexpr, RELU: tl.constexpr):
    """sum of a^2 over channels chan-LO .. chan+HI, given a at chan."""
    sum_sq = a * a
    for d in tl.static_range(1, LO + 1):
        v = _load_act(x_ptr, pix_off, chan - d, stride_c, n_chan, pix_ok, RELU)
        sum_sq += v * v
    for d in tl.static_range(1, HI + 1):
        v = _load_act(x_ptr, pix_off, chan + d, stride_c, n_chan, pix_ok, RELU)
        sum_sq += v * v
    return sum_sq


@triton.jit(do_not_specialize=["n_pix", "height", "width"])
def _relu_lrn_fwd_kernel(
    x_ptr, y_ptr, u_ptr,
    n_pix, n_chan, height, width,
    sx_n, sx_c, sx_h, sx_w,
    sy_n, sy_c, sy_h, sy_w,
    k, alpha, beta,
    LO: tl.constexpr, HI: tl.constexpr, RELU: tl.constexpr, SAVE_U: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """x: (N, C, H, W) read through strides sx_*; y = relu+LRN(x) and, if SAVE_U,
    u = y / s, both written through strides sy_*."""
    pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    chan = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    pix_ok = pix < n_pix
    x_pix = pixel_offsets(pix, height, width, sx_n, sx_h, sx_w)

    a = _load_act(x_ptr, x_pix, chan, sx_c, n_chan, pix_ok, RELU)
    s = k + alpha * _window_sum_sq(x_ptr, x_pix, chan, sx_c, n_chan, pix_ok, a, LO, HI, RELU)
    y = a * tl.exp2(-beta * tl.log2(s))

    y_off = pixel_offsets(pix, height, width, sy_n, sy_h, sy_w)[:, None] + chan.to(tl.int64)[None, :] * sy_c
    mask = pix_ok[:, None] & (chan < n_chan)[None, :]
    tl.store(y_ptr + y_off, y.to(y_ptr.dtype.element_ty), mask=mask)
    if SAVE_U:
        tl.store(u_ptr + y_off, (y / s).to(u_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["n_pix", "height", "width"])
def _relu_lrn_bwd_kernel(
    x_ptr, u_ptr, dy_ptr, dx_ptr,
    n_pix, n_chan, height, width,
    sx_n, sx_c, sx_h, sx_w,
    sy_n, sy_c, sy_h, sy_w,
    k, alpha, beta,
    LO: tl.constexpr, HI: tl.constexpr, RELU: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dx = d(relu+LRN)/dx^T dy. x through strides sx_*; u, dy and dx through sy_*.
    Channel i's window holds j iff i in j-HI .. j+LO, hence the mirrored loop below."""
    pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    chan = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    pix_ok = pix < n_pix
    x_pix = pixel_offsets(pix, height, width, sx_n, sx_h, sx_w)
    y_pix = pixel_offsets(pix, height, width, sy_n, sy_h, sy_w)

    a = _load_act(x_ptr, x_pix, chan, sx_c, n_chan, pix_ok, RELU)
    s = k + alpha * _window_sum_sq(x_ptr, x_pix, chan, sx_c, n_chan, pix_ok, a, LO, HI, RELU)
    dy = tl.load(dy_ptr + y_pix[:, None] + chan.to(tl.int64)[None, :] * sy_c,
                 mask=pix_ok[:, None] & (chan < n_chan)[None, :], other=0.0).to(tl.float32)

    # sum over i in chan-HI .. chan+LO of dy[i] * u[i] (zero outside the channels)
    cross = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
    for d in tl.static_range(-HI, LO + 1):
        c = chan + d
        mask = pix_ok[:, None] & ((c >= 0) & (c < n_chan))[None, :]
        off = y_pix[:, None] + c.to(tl.int64)[None, :] * sy_c
        dy_i = tl.load(dy_ptr + off, mask=mask, other=0.0).to(tl.float32)
        u_i = tl.load(u_ptr + off, mask=mask, other=0.0).to(tl.float32)
        cross += dy_i * u_i

    dx = dy * tl.exp2(-beta * tl.log2(s)) - (2.0 * alpha * beta) * a * cross
    if RELU:
        dx = tl.where(a > 0.0, dx, 0.0)
    tl.store(dx_ptr + y_pix[:, None] + chan.to(tl.int64)[None, :] * sy_c, dx.to(dx_ptr.dtype.element_ty),
             mask=pix_ok[:, None] & (chan < n_chan)[None, :])


# ------------------------------------------------------------------------------ launchers
def _check_params(size, alpha, beta, k):
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if not k > 0:
        raise ValueError(f"k must be > 0 so that the denominator never vanishes, got {k!r}")
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha!r}")


def _blocks(n_chan: int, fmt: torch.memory_format) -> tuple[int, int, int]:
    """(BLOCK_P, BLOCK_C, num_warps): the contiguous dim gets the long side of the tile."""
    if interpreting():
        return 16, min(32, triton.next_power_of_2(n_chan)), 4
    if fmt == torch.channels_last:
        block_c = min(64, triton.next_power_of_2(n_chan))
        return max(16, 2048 // block_c), block_c, 4
    return 128, min(16, triton.next_power_of_2(n_chan)), 4


def relu_lrn_forward(x, size=5, alpha=1e-4, beta=0.75, k=2.0, relu=True, save_u=False, blocks=None):
    """Launch the forward; returns (y, u) with u None unless save_u.
    blocks = (BLOCK_P, BLOCK_C, num_warps) overrides the tile choice (bench/sweep_memory.py)."""
    check_tensor(x, "x", ndim=4)
    _check_params(size, alpha, beta, k)
    n_img, n_chan, height, width = x.shape
    fmt = memory_format(x)
    y = empty_4d(x.shape, x, fmt)
    u = empty_4d(x.shape, x, fmt) if save_u else y  # y stands in for the unused pointer
    if y.numel() == 0:
        return y, (u if save_u else None)
    n_pix = n_img * height * width
    block_p, block_c, warps = blocks or _blocks(n_chan, fmt)
    grid = (cdiv(n_pix, block_p), cdiv(n_chan, block_c))
    _relu_lrn_fwd_kernel[grid](
        x, y, u, n_pix, n_chan, height, width, *x.stride(), *y.stride(),
        float(k), float(alpha), float(beta),
        LO=size // 2, HI=(size - 1) // 2, RELU=relu, SAVE_U=save_u,
        BLOCK_P=block_p, BLOCK_C=block_c, num_warps=warps,
    )
    return y, (u if save_u else None)


def relu_lrn_backward(dy, x, u, size=5, alpha=1e-4, beta=0.75, k=2.0, relu=True, blocks=None):
    """dx from the upstream gradient dy and the saved x and u."""
    dy = as_format(dy, memory_format(u))
    if dy.stride() != u.stride():  # the kernel reads dy through u's strides
        dy = torch.empty_like(u).copy_(dy)
    dx = torch.empty_like(u)
    if dx.numel() == 0:
        return dx
    n_img, n_chan, height, width = x.shape
    n_pix = n_img * height * width
    block_p, block_c, warps = blocks or _blocks(n_chan, memory_format(u))
    grid = (cdiv(n_pix, block_p), cdiv(n_chan, block_c))
    _relu_lrn_bwd_kernel[grid](
        x, u, dy, dx, n_pix, n_chan, height, width, *x.stride(), *dx.stride(),
        float(k), float(alpha), float(beta),
        LO=size // 2, HI=(size - 1) // 2, RELU=relu, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=warps,
    )
    return dx


class ReLULRNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, size, alpha, beta, k, relu):
        need_grad = ctx.needs_input_grad[0]
        y, u = relu_lrn_forward(x, size, alpha, beta, k, relu, save_u=need_grad)
        if need_grad:
            ctx.save_for_backward(x, u)
        ctx.params = (size, alpha, beta, k, relu)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, u = ctx.saved_tensors
        return relu_lrn_backward(dy, x, u, *ctx.params), None, None, None, None, None


def relu_lrn(x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
    """ReLU then local response normalisation across channels, fused (paper section 3.3;
    defaults k=2, n=5, alpha=1e-4, beta=0.75). Note alpha is not divided by size."""
    return ReLULRNFunction.apply(x, size, alpha, beta, k, True)


def local_response_norm(x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
    """Local response normalisation without the ReLU (for the tanh ablation); alpha is
    not divided by size."""
    return ReLULRNFunction.apply(x, size, alpha, beta, k, False)

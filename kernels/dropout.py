"""Dropout with a counter-based RNG: the mask is a pure function of (seed, element index).

One Philox call (`tl.randint4x`, 10 rounds) gives four 32-bit numbers, i.e. eight 16-bit
draws, used for eight contiguous elements. An element
is kept when its 16-bit draw is at least round(p * 2**16), so p is applied with a
resolution of 2**-16 (exact for p = 0.5) at half the Philox work of one 32-bit draw per
element. Kept elements are scaled by 1 / (1 - p) (inverted dropout, equivalent to the
paper's x0.5 at test time).

The seed is an int64 drawn from torch's generator on the tensor's device, so
`torch.manual_seed` makes runs reproducible, and it stays on the device (no host sync, safe
to capture in a CUDA graph). The backward regenerates the same mask from the saved seed:
nothing mask-sized is stored. Elements are indexed in storage order, so x may be any dense
layout (contiguous, channels_last, ...).

As torch's dropout (x * mask / (1 - p)), the kernel multiplies: a dropped NaN or inf gives
NaN, not 0, so a non-finite activation is never hidden from the loss. p may be a Python or
NumPy number or a one-element tensor (read on the host). The Function is
once_differentiable: a double backward raises.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from ._common import cdiv, check_tensor, interpreting

__all__ = ["dropout", "DropoutFunction"]


@triton.jit
def _halves(word):
    """(low 16 bits, high 16 bits) of a uint32 tensor, as int32, joined on a new last dim."""
    return tl.join((word & 0xFFFF).to(tl.int32), (word >> 16).to(tl.int32))


@triton.jit
def _dropout_kernel(x_ptr, y_ptr, seed_ptr, n_elem, keep_threshold, scale, BLOCK: tl.constexpr):
    """y = x * keep * scale over n_elem elements of flat storage; keep = (draw >= threshold).
    The same kernel applies the mask forward (x = input) and backward (x = dy).
    Philox counter c gives the eight 16-bit draws of elements 8c .. 8c+7: joined into a
    (BLOCK/8, 8) tile and flattened, each thread's draws line up with 8 contiguous elements
    (one 16-byte load in bf16)."""
    pid = tl.program_id(0).to(tl.int64)
    counter = pid * (BLOCK // 8) + tl.arange(0, BLOCK // 8)
    r0, r1, r2, r3 = tl.randint4x(tl.load(seed_ptr), counter)
    draws = tl.join(tl.join(_halves(r0), _halves(r1)), tl.join(_halves(r2), _halves(r3)))  # (BLOCK/8, 2, 2, 2)
    draws = tl.reshape(draws, (BLOCK,))
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elem
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    # x * 0, not 0, where dropped: NaN and inf become NaN there, as in torch's x * mask / (1 - p)
    y = x * tl.where(draws >= keep_threshold, scale, 0.0)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------ launchers
def _dense(t: torch.Tensor) -> bool:
    """True if t's elements fill its storage span exactly (contiguous in some order)."""
    return t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last) or (
        t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d))


def new_seed(device, generator: torch.Generator | None = None) -> torch.Tensor:
    """A fresh int64 seed on `device`, drawn from `generator` (default: torch's generator
    for `device`, so torch.manual_seed governs it)."""
    gen_device = generator.device if generator is not None else device
    seed = torch.randint(0, 2**62, (1,), device=gen_device, dtype=torch.int64, generator=generator)
    return seed.to(device, non_blocking=True)


def apply_dropout_mask(x: torch.Tensor, seed: torch.Tensor, p: float) -> torch.Tensor:
    """x times the mask for (seed, p), scaled by 1/(1-p); x must be dense (see _dense)."""
    y = torch.empty_like(x)  # same strides as a dense x, so storage order matches
    n_elem = x.numel()
    if n_elem == 0:
        return y
    # Small tensors (an fc layer's 128 x 4096) need small blocks to fill the GPU.
    block = 2048 if interpreting() or n_elem < (1 << 23) else 8192
    keep_threshold = int(round(p * 2**16))
    _dropout_kernel[(cdiv(n_elem, block),)](x, y, seed, n_elem, keep_threshold, 1.0 / (1.0 - p), BLOCK=block,
                                            num_warps=4 if block <= 2048 else 8)
    return y


class DropoutFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p, generator):
        seed = new_seed(x.device, generator)
        ctx.save_for_backward(seed)
        ctx.p = p
        ctx.layout = x.stride()
        return apply_dropout_mask(x, seed, p)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        (seed,) = ctx.saved_tensors
        if dy.stride() != ctx.layout:  # the mask follows storage order: match x's layout
            dy = torch.empty_strided(dy.shape, ctx.layout, dtype=dy.dtype, device=dy.device).copy_(dy)
        return apply_dropout_mask(dy, seed, ctx.p), None, None


def _probability(p) -> float:
    """p as a float in [0, 1]: a Python or NumPy number, or a one-element tensor (read on
    the host: a sync for a CUDA tensor); anything else, NaN included, is refused."""
    import numbers

    if isinstance(p, torch.Tensor) and p.numel() == 1 and not p.is_complex():
        p = p.item()
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability p must be in [0, 1] (a number or a one-element tensor), got {p!r}")
    return float(p)


def dropout(x: torch.Tensor, p: float = 0.5, training: bool = True,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Inverted dropout (paper section 4.2, p = 0.5): in training, zero each element with
    probability p and scale the rest by 1/(1-p); identity when not training or p = 0.
    The mask's seed comes from `generator` (default: torch's generator for x's device)."""
    p = _probability(p)
    check_tensor(x, "x")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0  # every element dropped; keeps the autograd graph (gradient 0)
    if not _dense(x):
        x = x.contiguous()
    return DropoutFunction.apply(x, float(p), generator)

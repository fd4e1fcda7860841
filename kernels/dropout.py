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

`column_dropout(x, p, state)` is the model's dropout (alexnet.layers.ColumnDropout): x (B,
columns * F), column c's (B, F) block drawn from its own stream, all columns in one launch
forward and one backward. Its Philox key is the column's seed and its counter (element
group, call index); the call index lives on the device in `ColumnDropoutState` and the
launch itself advances it, so a call needs no seed draw, no host work and replays correctly
inside a CUDA graph. At call index 0 a column's mask is exactly `dropout`'s with that seed.

As torch's dropout (x * mask / (1 - p)), the kernel multiplies: a dropped NaN or inf gives
NaN, not 0, so a non-finite activation is never hidden from the loss. p may be a Python or
NumPy number or a one-element tensor (read on the host). The dropout op's backward is the
same op with the same seed (dropout is linear), so a double backward is exact;
`column_dropout`'s Function is once_differentiable: a double backward raises.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from ._common import cdiv, check_tensor
from .launch import dropout_launch

__all__ = ["dropout", "column_dropout", "ColumnDropoutState"]


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


@triton.jit
def _column_dropout_kernel(x_ptr, y_ptr, seeds_ptr, call_ptr, tickets_ptr, used_ptr, n_rows, width, row_stride,
                           keep_threshold, scale, ADVANCE: tl.constexpr, BLOCK: tl.constexpr):
    """Dropout of a (n_rows, columns * width) row-major tensor, column c = program_id(1)
    drawing from its own stream: Philox key seeds[c], counter (element group of 8 within
    the column's (n_rows, width) block, call index). Element (r, j) of column c is number
    i = r * width + j of that block, so a column's mask does not depend on how many columns
    share the tensor: the single-device (B, 2F) launch and a rank's (B, F) launch agree.
    The call index is read from call_ptr. ADVANCE (forward): the call index is written to
    used_ptr for the backward, and the last program to finish (a ticket from an atomic
    counter) increments it, so the next call draws a new mask without any host work."""
    pid = tl.program_id(0).to(tl.int64)
    column = tl.program_id(1)
    call = tl.load(call_ptr)
    seed = tl.load(seeds_ptr + column)
    counter = pid * (BLOCK // 8) + tl.arange(0, BLOCK // 8)
    r0, r1, r2, r3 = tl.philox(seed, (counter & 0xFFFFFFFF).to(tl.uint32), (counter >> 32).to(tl.uint32),
                               (call & 0xFFFFFFFF).to(tl.uint32), (call >> 32).to(tl.uint32))
    draws = tl.join(tl.join(_halves(r0), _halves(r1)), tl.join(_halves(r2), _halves(r3)))  # (BLOCK/8, 2, 2, 2)
    draws = tl.reshape(draws, (BLOCK,))
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_rows * width
    row = offs // width
    addr = row * row_stride + column * width + (offs - row * width)
    x = tl.load(x_ptr + addr, mask=mask, other=0.0).to(tl.float32)
    y = x * tl.where(draws >= keep_threshold, scale, 0.0)  # x * 0 where dropped: NaN/inf stay NaN, as torch
    tl.store(y_ptr + addr, y.to(y_ptr.dtype.element_ty), mask=mask)
    if ADVANCE:
        first = (pid == 0) & (column == 0)
        tl.store(used_ptr, call, mask=first)
        n_programs = tl.num_programs(0) * tl.num_programs(1)
        ticket = tl.atomic_add(tickets_ptr, 1, sem="acq_rel")
        last = ticket == n_programs - 1
        tl.store(call_ptr, call + 1, mask=last)
        tl.store(tickets_ptr, 0, mask=last)


# ------------------------------------------------------------------------------ launchers
def new_seed(device, generator: torch.Generator | None = None) -> torch.Tensor:
    """A fresh int64 seed on `device`, drawn from `generator` (default: torch's generator
    for `device`, so torch.manual_seed governs it)."""
    gen_device = generator.device if generator is not None else device
    seed = torch.randint(0, 2**62, (1,), device=gen_device, dtype=torch.int64, generator=generator)
    return seed.to(device, non_blocking=True)


def apply_dropout_mask(x: torch.Tensor, seed: torch.Tensor, p: float) -> torch.Tensor:
    """x times the mask for (seed, p), scaled by 1/(1-p); x must be dense (see kernels.layout.is_dense)."""
    y = torch.empty_like(x)  # same strides as a dense x, so storage order matches
    n_elem = x.numel()
    if n_elem == 0:
        return y
    launch = dropout_launch(n_elem)  # small tensors (an fc layer's 128 x 4096) need small blocks
    keep_threshold = int(round(p * 2**16))
    _dropout_kernel[(cdiv(n_elem, launch.block),)](x, y, seed, n_elem, keep_threshold, 1.0 / (1.0 - p),
                                                   BLOCK=launch.block, num_warps=launch.num_warps)
    return y


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
    check_tensor(x, "x", kernel_device=False)
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0  # every element dropped; keeps the autograd graph (gradient 0)
    # op alexnet_triton::dropout (kernels/ops.py): the seed is an input, the backward reuses it
    return torch.ops.alexnet_triton.dropout(x, new_seed(x.device, generator), float(p))


# ------------------------------------------------------------------------------ column streams
class ColumnDropoutState:
    """The device-side state of a set of column streams: `seeds` (columns,) int64 Philox
    keys, `calls` (1,) int64, the number of forward calls made so far (each call's masks
    are drawn at its call index), and `tickets` (1,) int32, the launch's completion counter.
    Everything stays on the device: no host sync per call, and a CUDA graph replay of a
    captured call draws a new mask (the counter lives in device memory)."""

    def __init__(self, seeds, device):
        self.seeds = torch.tensor([int(s) for s in seeds], dtype=torch.int64, device=device)
        self.calls = torch.zeros(1, dtype=torch.int64, device=device)
        self.tickets = torch.zeros(1, dtype=torch.int32, device=device)


def _launch_columns(x, y, state: ColumnDropoutState, call, used, p: float, advance: bool) -> None:
    n_rows, features = x.shape
    columns = state.seeds.numel()
    width = features // columns
    if n_rows * width == 0:
        return
    launch = dropout_launch(n_rows * width)
    grid = (cdiv(n_rows * width, launch.block), columns)
    _column_dropout_kernel[grid](x, y, state.seeds, call, state.tickets, used, n_rows, width, x.stride(0),
                                 int(round(p * 2**16)), 1.0 / (1.0 - p), ADVANCE=advance, BLOCK=launch.block,
                                 num_warps=launch.num_warps)


class ColumnDropoutFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p, state):
        y = torch.empty_like(x)
        used = torch.empty(1, dtype=torch.int64, device=x.device)  # this call's index, for the backward
        _launch_columns(x, y, state, state.calls, used, p, advance=True)
        ctx.save_for_backward(used)
        ctx.p, ctx.state = p, state
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        (used,) = ctx.saved_tensors
        dy = dy.contiguous()
        dx = torch.empty_like(dy)
        _launch_columns(dy, dx, ctx.state, used, used, ctx.p, advance=False)
        return dx, None, None


def column_dropout(x: torch.Tensor, p: float, state: ColumnDropoutState) -> torch.Tensor:
    """Inverted dropout of x (B, columns * F) in training, column c's (B, F) block drawing
    from stream state.seeds[c] at call index state.calls (advanced by the call): one launch
    forward and one backward for all columns."""
    p = _probability(p)
    if p == 1.0:
        raise ValueError("column_dropout needs p < 1 (p = 1 drops everything: use dropout)")
    check_tensor(x, "x", ndim=2)
    if not isinstance(state, ColumnDropoutState):
        raise TypeError(f"state must be a ColumnDropoutState, got {type(state).__name__}")
    if state.seeds.device != x.device:
        raise ValueError(f"the dropout state is on {state.seeds.device} but x is on {x.device}")
    if x.shape[1] % state.seeds.numel():
        raise ValueError(f"{x.shape[1]} features do not split into {state.seeds.numel()} equal columns")
    if not x.is_contiguous():
        x = x.contiguous()
    return ColumnDropoutFunction.apply(x, float(p), state)

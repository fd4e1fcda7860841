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

`column_dropout(x, seeds, call, p)` is the model's dropout (alexnet.network.layers.ColumnDropout): x
(B, columns * F), column c's (B, F) block drawn from its own stream, all columns in one launch
forward and one backward. Its Philox key is the column's seed and its counter (element group,
call index); the call index is a device tensor, and the launch also writes the next one into
a fresh output, so the op is functional (torch.compile sees one node per direction), a call
needs no seed draw and no host work, and the backward redraws the mask from the next index.
At call index 0 a column's mask is exactly `dropout`'s with that seed.

As torch's dropout (x * mask / (1 - p)), the kernel multiplies: a dropped NaN or inf gives
NaN, not 0, so a non-finite activation is never hidden from the loss. p may be a Python or
NumPy number or a one-element tensor (read on the host). Dropout is linear: the dropout
op's backward is the same op with the same seed, column_dropout's backward applies the
forward's masks again (and is its own backward), so a double backward is exact for both.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import cdiv, check_tensor
from .runtime.dispatch import call as _call
from .runtime.fastlaunch import launch as fast_launch
from .runtime.launch_params import dropout_launch

__all__ = ["dropout", "column_dropout"]


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
def _column_dropout_kernel(x_ptr, y_ptr, seeds_ptr, call_ptr, next_ptr, relu_ptr, n_rows, width, row_stride,
                           keep_threshold, scale, CALL_OFFSET: tl.constexpr, WRITE_NEXT: tl.constexpr,
                           RELU: tl.constexpr, RELU_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    """Dropout of a (n_rows, columns * width) tensor with unit column stride, column c =
    program_id(1) drawing from its own stream: Philox key seeds[c], counter (element group of
    8 within the column's (n_rows, width) block, call index). Element (r, j) of column c is
    number i = r * width + j of that block, so a column's mask does not depend on how many
    columns share the tensor: the single-device (B, 2F) launch and a rank's (B, F) launch agree.
    The call index is call_ptr's value + CALL_OFFSET (the backward reads the forward's next
    index and draws at -1). WRITE_NEXT (forward): program (0, 0) also writes call + 1 to
    next_ptr, a fresh output, so the op stays functional and needs no second launch.
    RELU (forward): y = relu(x) * keep * scale, the fc layer's ReLU fused in. RELU_GRAD
    (backward): the gradient also passes only where relu_ptr's element (that ReLU's input, laid
    out as dy) is > 0 (a NaN passes, as torch's threshold_backward)."""
    pid = tl.program_id(0).to(tl.int64)
    column = tl.program_id(1)
    call = tl.load(call_ptr) + CALL_OFFSET
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
    if RELU:
        x = tl.where(x < 0, 0.0, x)  # torch.relu: NaN stays NaN
    y = x * tl.where(draws >= keep_threshold, scale, 0.0)  # x * 0 where dropped: NaN/inf stay NaN, as torch
    if RELU_GRAD:
        y = tl.where(tl.load(relu_ptr + addr, mask=mask, other=0.0) <= 0, 0.0, y)
    tl.store(y_ptr + addr, y.to(y_ptr.dtype.element_ty), mask=mask)
    if WRITE_NEXT:
        tl.store(next_ptr, call + 1, mask=(pid == 0) & (column == 0))


# ------------------------------------------------------------------------------ launchers
def new_seed(device, generator: torch.Generator | None = None) -> torch.Tensor:
    """A fresh int64 seed on `device`, drawn from `generator` (default: torch's generator
    for `device`, so torch.manual_seed governs it)."""
    gen_device = generator.device if generator is not None else device
    seed = torch.randint(0, 2**62, (1,), device=gen_device, dtype=torch.int64, generator=generator)
    return seed.to(device, non_blocking=True)


def apply_dropout_mask(x: torch.Tensor, seed: torch.Tensor, p: float) -> torch.Tensor:
    """x times the mask for (seed, p), scaled by 1/(1-p); x must be dense (see kernels.runtime.layout.is_dense)."""
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
def launch_column_dropout(x: torch.Tensor, seeds: torch.Tensor, call: torch.Tensor, p: float,
                          backward: bool = False, relu: bool = False, relu_input: torch.Tensor | None = None):
    """The Triton implementation of ops alexnet_triton::column_dropout (forward: (y, call + 1),
    masks drawn at `call`; `relu`: of relu(x)) and ::column_dropout_backward (backward=True:
    dx, masks drawn at call - 1, `call` being the forward's next index; `relu_input`: the
    forward's x when it had `relu`, whose ReLU gradient is applied too). One launch, all
    columns; y contiguous."""
    x = x.contiguous()  # y's layout: element (r, j) at the same offset in both
    seeds = seeds.contiguous()  # the kernel reads seeds[column] at column
    if relu_input is not None:
        relu_input = relu_input.contiguous()  # laid out as x
    n_rows, features = x.shape
    columns = seeds.numel()
    width = features // columns
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    next_call = torch.empty_like(call) if not backward else call
    launch = dropout_launch(n_rows * width)
    grid = (max(1, cdiv(n_rows * width, launch.block)), columns)  # >= 1 program: the next index is written
    fast_launch(_column_dropout_kernel, grid,
                (x, y, seeds, call, next_call, relu_input if relu_input is not None else x, n_rows, width, x.stride(0),
                 int(round(p * 2**16)), 1.0 / (1.0 - p)),
                dict(CALL_OFFSET=-1 if backward else 0, WRITE_NEXT=not backward, RELU=relu,
                     RELU_GRAD=relu_input is not None, BLOCK=launch.block, num_warps=launch.num_warps))
    return y if backward else (y, next_call)


def column_dropout(x: torch.Tensor, seeds: torch.Tensor, call: torch.Tensor, p: float = 0.5, *, relu: bool = False):
    """Inverted dropout of x (B, columns * F) in training (of relu(x) with `relu`: the ReLU
    fused into the same launch, its gradient into the backward's), column c's (B, F) block drawn from
    the Philox stream keyed by seeds[c] (int64, one per column) at call index `call` (int64,
    one element, on x's device). Returns (y, next_call): next_call = call + 1, a new tensor,
    to pass as `call` next time (alexnet.network.layers.ColumnDropout keeps it). One launch forward and
    one backward for all columns, no host read: op alexnet_triton::column_dropout
    (kernels/ops.py), whose CPU implementation draws the same masks in torch ops."""
    p = _probability(p)
    if p == 1.0:
        raise ValueError("column_dropout needs p < 1 (p = 1 drops everything: use dropout)")
    check_tensor(x, "x", ndim=2, kernel_device=False)
    for name, t in (("seeds", seeds), ("call", call)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.ndim != 1 or t.device != x.device:
            raise TypeError(f"{name} must be a 1-D int64 tensor on x's device ({x.device}), got "
                            + (f"{t.dtype} {tuple(t.shape)} on {t.device}" if isinstance(t, torch.Tensor)
                               else type(t).__name__))
    if seeds.numel() == 0 or call.numel() != 1:
        raise ValueError(f"need at least one seed and one call index, got {seeds.numel()} and {call.numel()}")
    if x.shape[1] % seeds.numel():
        raise ValueError(f"{x.shape[1]} features do not split into {seeds.numel()} equal columns")

    return _call("column_dropout", x, seeds, call, float(p), bool(relu))

"""Softmax cross-entropy with its gradient and the step's metrics, in one launch.

The training step needs, from the logits (B, C) and the labels (B,): the mean loss, its
gradient with respect to the logits, whether the loss is finite (the run's guard) and how many
top-1 guesses are wrong. In torch ops that is a cast, log_softmax, nll_loss, the finiteness
test (3 ops), backward's ones_like, nll_loss_backward, log_softmax_backward, the cast back,
and argmax, ne, sum: 13 launches. Here it is one, and the step calls
`logits.backward(dlogits)` with the gradient this launch wrote (the gradient of the mean loss,
so the seed gradient 1 needs no multiply).

    loss     = mean_r [ logsumexp(x_r) - x_r[label_r] ]        fp32, 0-d
    dlogits  = (softmax(x_r) - onehot(label_r)) / B            in the logits' dtype
    wrong    = #{r : argmax(x_r) != label_r}                   int64, 0-d
    finite  &= isfinite(loss)                                  bool, 0-d, in place

One program does it all, looping over blocks of BLOCK_R rows: the sums over rows then run in
one fixed order (bit-reproducible, no atomics), and at the paper's shape (128 x 1000) the
whole input is 256 KB in bf16: the cost of one program streaming it (predicted some 10-20 us
on an H100, not measured) is of the order of the launches it replaces. Each row is read in
chunks of BLOCK_C classes with an online logsumexp, so any C works; when one chunk holds the
whole row (C <= BLOCK_C, the paper's 1000 classes) the row stays in registers for the
gradient, otherwise a second pass re-reads it.

Semantics follow F.cross_entropy(x.float(), labels) and torch.argmax: NaN or +inf logits make
the row's loss NaN; a label's logit of -inf makes it inf; argmax returns the first maximal
index and a NaN counts as the maximum (its first index). An empty batch gives a NaN loss (the
mean of nothing), as torch. Labels outside [0, C) cannot be refused without a host-device
sync: their rows get a NaN loss and NaN gradient, so the run's non-finite guard stops it (torch
would raise; its ignore_index is not supported).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check_same_device, check_tensor, interpreting
from .runtime.dispatch import call as _call
from .runtime.fastlaunch import launch as fast_launch

__all__ = ["softmax_cross_entropy", "launch_softmax_cross_entropy"]

ELEMENTS_PER_TILE = 8192  # BLOCK_R x BLOCK_C: 32 fp32 values per thread at 8 warps


@triton.jit
def _chunk_stats(x, cols, label, m, s, picked, best, best_idx, nan_idx, BIG: tl.constexpr):
    """Fold one (BLOCK_R, BLOCK_C) chunk of logits (fp32, -inf where masked) into each row's
    running max m and sum of exp(x - m), the label's logit, and the argmax state."""
    new_m = tl.maximum(m, tl.max(x, 1))
    shift = tl.where(new_m == float("-inf"), 0.0, new_m)  # no -inf - -inf = NaN for a chunk of -inf so far
    s = s * tl.exp(m - shift) + tl.sum(tl.exp(x - shift[:, None]), 1)
    picked += tl.sum(tl.where(cols[None, :] == label[:, None], x, 0.0), 1)
    # argmax as torch: the first NaN wins; else the first maximum (a later chunk only by >)
    is_nan = x != x
    nan_idx = tl.minimum(nan_idx, tl.min(tl.where(is_nan, cols[None, :], BIG), 1))
    x_num = tl.where(is_nan, float("-inf"), x)
    chunk_best = tl.max(x_num, 1)
    chunk_idx = tl.min(tl.where(x_num == chunk_best[:, None], cols[None, :], BIG), 1)
    take = chunk_best > best
    best_idx = tl.where(take, chunk_idx, best_idx)
    best = tl.where(take, chunk_best, best)
    return new_m, s, picked, best, best_idx, nan_idx


@triton.jit
def _cross_entropy_kernel(x_ptr, label_ptr, loss_ptr, dx_ptr, wrong_ptr, finite_ptr, n_rows, n_classes,
                          x_row_stride, dx_row_stride, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                          ONE_CHUNK: tl.constexpr):
    """Grid (1,). x (n_rows, n_classes) with unit class stride; dx has x's shape and dtype."""
    BIG: tl.constexpr = 2**30
    inv_rows = 1.0 / n_rows  # n_rows >= 1 (the launcher handles an empty batch)
    total = tl.zeros((BLOCK_R,), dtype=tl.float32)  # per-lane partial sums, one fixed order
    n_wrong = tl.zeros((BLOCK_R,), dtype=tl.int32)
    cols0 = tl.arange(0, BLOCK_C)
    for r0 in range(0, n_rows, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        row_ok = rows < n_rows
        label = tl.load(label_ptr + rows, mask=row_ok, other=0)
        label_ok = (label >= 0) & (label < n_classes)
        label = label.to(tl.int32)
        x_row = x_ptr + rows.to(tl.int64)[:, None] * x_row_stride
        dx_row = dx_ptr + rows.to(tl.int64)[:, None] * dx_row_stride
        m = tl.full((BLOCK_R,), float("-inf"), tl.float32)
        s = tl.zeros((BLOCK_R,), dtype=tl.float32)
        picked = tl.zeros((BLOCK_R,), dtype=tl.float32)
        best = tl.full((BLOCK_R,), float("-inf"), tl.float32)
        best_idx = tl.full((BLOCK_R,), BIG, tl.int32)
        nan_idx = tl.full((BLOCK_R,), BIG, tl.int32)
        # ---- pass 1: logsumexp, the label's logit, argmax
        if ONE_CHUNK:  # the whole row in one chunk, kept in registers for pass 2
            ok = row_ok[:, None] & (cols0 < n_classes)[None, :]
            x = tl.load(x_row + cols0[None, :], mask=ok, other=float("-inf")).to(tl.float32)
            m, s, picked, best, best_idx, nan_idx = _chunk_stats(x, cols0, label, m, s, picked, best, best_idx,
                                                                 nan_idx, BIG)
        else:
            for c0 in range(0, n_classes, BLOCK_C):
                cols = c0 + cols0
                ok = row_ok[:, None] & (cols < n_classes)[None, :]
                x = tl.load(x_row + cols[None, :], mask=ok, other=float("-inf")).to(tl.float32)
                m, s, picked, best, best_idx, nan_idx = _chunk_stats(x, cols, label, m, s, picked, best, best_idx,
                                                                     nan_idx, BIG)
        best_idx = tl.where(best_idx == BIG, 0, best_idx)  # a row of -inf only: index 0, as torch
        guess = tl.where(nan_idx < BIG, nan_idx, best_idx)
        loss = tl.log(s) + m - picked
        loss = tl.where(label_ok, loss, float("nan"))
        total += tl.where(row_ok, loss, 0.0)
        n_wrong += tl.where(row_ok & (guess != label), 1, 0)
        # ---- pass 2: dlogits = (softmax - onehot) / B (NaN rows for labels out of range)
        scale = tl.where(label_ok, inv_rows / s, float("nan"))
        if ONE_CHUNK:  # the row is still in registers
            grad = tl.exp(x - m[:, None]) * scale[:, None] - tl.where(cols0[None, :] == label[:, None], inv_rows, 0.0)
            tl.store(dx_row + cols0[None, :], grad.to(dx_ptr.dtype.element_ty), mask=ok)
        else:
            for c0 in range(0, n_classes, BLOCK_C):
                cols = c0 + cols0
                ok = row_ok[:, None] & (cols < n_classes)[None, :]
                x = tl.load(x_row + cols[None, :], mask=ok, other=float("-inf")).to(tl.float32)
                grad = (tl.exp(x - m[:, None]) * scale[:, None]
                        - tl.where(cols[None, :] == label[:, None], inv_rows, 0.0))
                tl.store(dx_row + cols[None, :], grad.to(dx_ptr.dtype.element_ty), mask=ok)
    mean = tl.sum(total, 0) * inv_rows
    tl.store(loss_ptr, mean)
    tl.store(wrong_ptr, tl.sum(n_wrong, 0).to(tl.int64))
    finite = tl.load(finite_ptr) != 0
    tl.store(finite_ptr, (finite & (tl.abs(mean) < float("inf"))).to(finite_ptr.dtype.element_ty))


# ------------------------------------------------------------------------------ launcher
def _blocks(n_classes: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_C, num_warps): one chunk per row up to 4096 classes."""
    block_c = min(triton.next_power_of_2(max(n_classes, 1)), 4096)
    block_r = max(1, (256 if interpreting() else ELEMENTS_PER_TILE) // block_c)
    return block_r, block_c, 8


def launch_softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, finite: torch.Tensor):
    """The Triton implementation of op alexnet_triton::softmax_cross_entropy: (loss, dlogits,
    wrong), `finite` updated in place. Arguments checked by `softmax_cross_entropy`."""
    n_rows, n_classes = logits.shape
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    labels = labels.contiguous()  # the kernel reads labels[row] at row (an expanded or strided view: copied)
    loss = torch.empty((), dtype=torch.float32, device=logits.device)
    wrong = torch.empty((), dtype=torch.int64, device=logits.device)
    dlogits = torch.empty((n_rows, n_classes), dtype=logits.dtype, device=logits.device)
    if n_rows == 0:  # the mean of nothing: NaN, as torch
        finite.zero_()
        return loss.fill_(float("nan")), dlogits, wrong.zero_()
    block_r, block_c, warps = _blocks(n_classes)
    fast_launch(_cross_entropy_kernel, (1,),
                (logits, labels, loss, dlogits, wrong, finite, n_rows, n_classes, logits.stride(0), dlogits.stride(0)),
                dict(BLOCK_R=block_r, BLOCK_C=block_c, ONE_CHUNK=n_classes <= block_c, num_warps=warps))
    return loss, dlogits, wrong


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, finite: torch.Tensor | None = None):
    """(loss, dlogits, wrong) of logits (B, C) (fp32, bf16 or fp16) against int64 labels (B,):
    the mean cross-entropy in fp32 (as F.cross_entropy(logits.float(), labels)), its gradient
    with respect to the logits in their dtype, and the count of wrong top-1 guesses (int64), all
    0-d device tensors but dlogits, from one launch with no host-device sync. `finite` (a 0-d
    bool tensor, optional) is and-ed in place with the loss's finiteness. Not differentiable:
    pass dlogits to `logits.backward`. Op alexnet_triton::softmax_cross_entropy (kernels/ops.py)."""
    check_tensor(logits, "logits", ndim=2, kernel_device=False)
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.shape != logits.shape[:1]:
        raise TypeError(f"labels must be an int64 tensor of shape ({logits.shape[0]},), got "
                        + (f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor)
                           else type(labels).__name__))
    if logits.shape[1] == 0:
        raise ValueError("logits must have at least one class")
    if finite is None:
        finite = torch.ones((), dtype=torch.bool, device=logits.device)
    if not isinstance(finite, torch.Tensor) or finite.dtype != torch.bool or finite.numel() != 1:
        raise TypeError("finite must be a one-element bool tensor")
    check_same_device(("logits", logits), ("labels", labels), ("finite", finite))
    if logits.requires_grad and torch.is_grad_enabled():
        raise ValueError("softmax_cross_entropy is not differentiable: pass logits.detach() and call "
                         "logits.backward(dlogits)")
    return _call("softmax_cross_entropy", logits, labels, finite)

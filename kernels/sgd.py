"""The paper's SGD step over flat parameter, velocity and gradient buffers, in one launch.

For element i of the flat buffers (weights first, then the elements that take no weight
decay, i.e. the biases):

    v[i] <- momentum * v[i] - decay_i * lr * w[i] - lr * g[i],   decay_i = weight_decay if i < n_decay else 0
    w[i] <- w[i] + v[i]

and, optionally, w_low[i] <- w[i] cast to bf16/fp16: the compute copy of the weights for
mixed precision, written in the same pass instead of a separate cast per layer per step.
lr is read from a one-element device tensor, so the step needs no host sync and can be
captured in a CUDA graph. w and v are fp32 (master weights); g may be fp32 or 16-bit.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import cdiv, check_same_device, check_tensor
from .runtime.dispatch import call as _call
from .runtime.fastlaunch import launch as fast_launch
from .runtime.launch_params import sgd_launch

__all__ = ["launch_sgd_step", "sgd_step_"]


@triton.jit
def _sgd_step_kernel(w_ptr, v_ptr, g_ptr, low_ptr, lr_ptr, n_elem, n_decay, momentum, weight_decay,
                     WRITE_LOW: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elem
    lr = tl.load(lr_ptr)
    w = tl.load(w_ptr + offs, mask=mask)
    v = tl.load(v_ptr + offs, mask=mask)
    g = tl.load(g_ptr + offs, mask=mask).to(tl.float32)
    decay = tl.where(offs < n_decay, weight_decay, 0.0)  # n_decay may be <= 0 for a tail: no decay
    v = momentum * v - (decay * lr) * w - lr * g
    w = w + v
    tl.store(v_ptr + offs, v, mask=mask)
    tl.store(w_ptr + offs, w, mask=mask)
    if WRITE_LOW:
        tl.store(low_ptr + offs, w.to(low_ptr.dtype.element_ty), mask=mask)


def sgd_step_(weights: torch.Tensor, velocity: torch.Tensor, grads: torch.Tensor, lr: torch.Tensor,
              momentum: float = 0.9, weight_decay: float = 5e-4, n_decay: int | None = None,
              low_precision_out: torch.Tensor | None = None) -> None:
    """In-place paper SGD step on 1-D fp32 `weights` and `velocity` with `grads` (same length);
    elements [0, n_decay) get weight decay (default: all). `lr` is a 1-element fp32 tensor on
    the same device. If given, `low_precision_out` (bf16/fp16, same length) receives the
    updated weights. Op alexnet_triton::sgd_step_ (kernels/ops.py: the device picks Triton or
    the reference)."""
    check_tensor(weights, "weights", ndim=1, dtypes=(torch.float32,), kernel_device=False)
    check_tensor(velocity, "velocity", ndim=1, dtypes=(torch.float32,), kernel_device=False)
    check_tensor(grads, "grads", ndim=1, kernel_device=False)
    check_tensor(lr, "lr", ndim=1, dtypes=(torch.float32,), kernel_device=False)
    named = [("weights", weights), ("velocity", velocity), ("grads", grads), ("lr", lr)]
    if low_precision_out is not None:
        check_tensor(low_precision_out, "low_precision_out", ndim=1, dtypes=(torch.bfloat16, torch.float16),
                     kernel_device=False)
        named.append(("low_precision_out", low_precision_out))
    check_same_device(*named)
    n_elem = weights.numel()
    for name, t in named:
        if name != "lr" and t.numel() != n_elem:
            raise ValueError(f"{name} has {t.numel()} elements, weights has {n_elem}")
        if name not in ("grads", "lr") and not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous: it is updated in place (a strided or expanded view "
                             "cannot take the update)")
    grads, lr = grads.contiguous(), lr.contiguous()  # read-only inputs: a strided or expanded view is copied
    if lr.numel() != 1:
        raise ValueError("lr must be a one-element tensor")
    n_decay = n_elem if n_decay is None else n_decay
    if not 0 <= n_decay <= n_elem:
        raise ValueError(f"n_decay must be in [0, {n_elem}], got {n_decay}")
    _call("sgd_step_", weights, velocity, grads, lr, float(momentum), float(weight_decay), n_decay,
                                       low_precision_out)


def launch_sgd_step(weights, velocity, grads, lr, momentum: float, weight_decay: float, n_decay: int,
                    low_precision_out) -> None:
    """The Triton implementation of `sgd_step_` (arguments checked there)."""
    n_elem = weights.numel()
    if n_elem == 0:
        return
    launch = sgd_launch()
    block = launch.block
    out = low_precision_out if low_precision_out is not None else weights
    # Two launches: whole blocks, whose length (a multiple of 16) lets the compiler vectorise
    # the masked loads, then the tail (AlexNet's 60,965,224 is not a multiple of 16).
    n_main = n_elem - n_elem % block
    for start, length in ((0, n_main), (n_main, n_elem - n_main)):
        if length:
            fast_launch(_sgd_step_kernel, (cdiv(length, block),),
                        (weights[start:], velocity[start:], grads[start:], out[start:], lr, length, n_decay - start,
                         float(momentum), float(weight_decay)),
                        dict(WRITE_LOW=low_precision_out is not None, BLOCK=block, num_warps=launch.num_warps))

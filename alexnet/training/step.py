"""One training step, as trained (alexnet/training/loop.py), captured in a CUDA graph
(alexnet/training/step_graph.py) and measured (bench/host_step.py, bench/step_timing.py): the
optimizer the ops choose, and forward, loss, backward and update with no host-device sync.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from alexnet.network.config import uses_kernels
from alexnet.training.optim import FlatPaperSGD, PaperSGD, param_groups

__all__ = ["build_optimizer", "training_step"]


def build_optimizer(model, ops: str, dtype: torch.dtype, lr: float, momentum: float, weight_decay: float,
                    replicas: int = 1):
    """The Triton build takes the fused one-launch update over flat buffers (in 16-bit
    compute it also keeps the layers' 16-bit weight copies: no per-step casts); the
    reference build torch's ops. The 16-bit copies need the gradients in the optimizer's
    own buffer, so with several data-parallel replicas (whose averaging reads p.grad) the
    layers cast per step instead."""
    groups = param_groups(model, weight_decay)
    if not uses_kernels(ops):
        return PaperSGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    low = dtype if dtype != torch.float32 and replicas == 1 else None
    optimizer = FlatPaperSGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, low_precision=low)
    if low is not None:
        optimizer.attach(model)
    return optimizer


def training_step(model, optimizer, images, labels, finite: torch.Tensor, sync_gradients=None):
    """Forward, loss, backward, (gradient sync,) update: the step as trained and as measured
    (bench/host_step.py). Returns the loss and the count of wrong top-1 guesses as device
    tensors; `finite` is and-ed in place with the loss's finiteness. No host-device sync.
    With the Triton ops the loss, its gradient, the count and the finiteness test are one
    launch (kernels/cross_entropy.py) and the backward starts from that gradient; the
    reference ops keep torch's loss (the eager yardstick)."""
    logits = model(images)
    optimizer.zero_grad(set_to_none=True)
    ops = getattr(getattr(model, "config", None), "ops", None)  # (a model without one: torch's loss)
    if ops is not None and uses_kernels(ops):
        from kernels import softmax_cross_entropy

        loss, dlogits, wrong = softmax_cross_entropy(logits.detach(), labels, finite)
        logits.backward(dlogits)
    else:
        loss = F.cross_entropy(logits.float(), labels)
        finite &= loss.abs() < math.inf  # isfinite (NaN < inf is False) in 3 launches where torch.isfinite takes 5
        loss.backward()
        wrong = (logits.argmax(1) != labels).sum()
    if sync_gradients is not None:
        sync_gradients()
    optimizer.step()
    return loss.detach(), wrong

"""The paper's optimiser and learning-rate schedule (section 5, "Details of learning").

Update, for every weight w with gradient g at learning rate lr:

    v <- momentum * v - weight_decay * lr * w - lr * g
    w <- w + v

with momentum 0.9 and weight decay 0.0005. The learning rate sits inside the velocity, so
after a change of lr the old velocity keeps its old scale; torch.optim.SGD instead scales
the whole velocity by the new lr (v <- 0.9 v + g; w <- w - lr v), which differs exactly
when lr changes. Weight decay applies to weights, not biases: the paper's equation names
the weights w, and decaying the biases it initialises to 1 would pull them back to 0; this
is also what Caffe's reference AlexNet does (bias decay_mult 0).

Schedule: lr starts at 0.01 and is divided by 10 when the validation error stops improving
(no new best for `patience` epochs); the paper reduced it three times before stopping.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from kernels import SGD_GPU_BLOCK, cdiv, is_dense, set_grad_into


class PaperSGD(torch.optim.Optimizer):
    """SGD with the paper's momentum and weight-decay update (see the module docstring).

    `params` may be an iterable of tensors or of parameter groups; give biases their own
    group with weight_decay=0 (`param_groups(model)` does this by name)."""

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4):
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError(f"bad hyper-parameters: lr={lr}, momentum={momentum}, weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            velocity = []
            for p in params:
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                velocity.append(state["velocity"])
            lr, decay = group["lr"], group["weight_decay"]
            torch._foreach_mul_(velocity, group["momentum"])
            if decay:
                torch._foreach_add_(velocity, params, alpha=-decay * lr)
            torch._foreach_add_(velocity, grads, alpha=-lr)
            torch._foreach_add_(params, velocity)
        return loss


class FlatPaperSGD(PaperSGD):
    """PaperSGD as one kernel launch per step (kernels.sgd.sgd_step_) over flat buffers.

    At construction every parameter is moved into one flat fp32 buffer (weight-decayed groups
    first, then the others, so decay covers a prefix) and replaced by a view of it with the
    same shape and strides (channels_last weights stay channels_last); gradients live in
    views of a flat gradient buffer, and the velocity in a third one, exposed per parameter
    as state[p]["velocity"] (views: write them with copy_). Build it after the model is on
    its device, and do not move the model afterwards. All groups share one lr (the paper's
    "equal for all layers"), momentum, and one weight decay or 0.

    Gradients without accumulation launches: zero_grad() sets the gradients to None (no
    launch); each gradient-holding leaf is registered with `kernels.runtime.dispatch.set_grad_into`: a
    fresh view of its slot in the flat buffer is handed out while its .grad is None. The
    eager backward of the conv op (kernels/conv/op.py) and of alexnet.network.layers.Linear writes the
    weight/bias gradients into that view and autograd's AccumulateGrad adopts it as .grad
    without a copy. A gradient that arrives anywhere else (a compiled graph's, a plain
    nn.Linear's) is copied into its slot by step() (one launch each), and a leaf without a
    gradient gets its slot zeroed, so the update reads what the old zero_grad + accumulate
    gave, bit for bit. zero_grad(set_to_none=False)
    zeroes the buffer in place (gradients then accumulate into it).

    `low_precision` (bf16 or fp16): mixed precision without per-step casts. A flat copy of
    the weights in that dtype is kept up to date by the update kernel itself (it writes the
    rounded new weights in the same pass); `attach(model)` hands each Conv2d/Linear its
    copies (`compute_params`), which the layers read instead of casting their fp32 weights
    every forward. The copies are autograd leaves whose gradients accumulate into a flat
    buffer of that dtype, which the update reads; the fp32 parameters then have no .grad
    (`gradient(p)` gives a parameter's). Numerically this is the cast-per-step scheme: the
    same rounded weights, the same 16-bit gradients (each weight is used once per step, so
    nothing is summed in 16 bits). After writing the fp32 weights directly (loading a
    checkpoint), call `refresh_low_precision()`."""

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4,
                 low_precision: torch.dtype | None = None):
        super().__init__(params, lr, momentum, weight_decay)
        groups = sorted(self.param_groups, key=lambda g: g["weight_decay"] == 0)  # decayed groups first
        decays = {g["weight_decay"] for g in groups if g["weight_decay"]}
        if len(decays) > 1 or len({g["momentum"] for g in groups}) > 1:
            raise ValueError("FlatPaperSGD needs one weight decay (or 0) and one momentum for all groups")
        if low_precision not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"low_precision must be None, torch.bfloat16 or torch.float16, got {low_precision}")
        ordered = [p for g in groups for p in g["params"]]
        if len({p.device for p in ordered}) != 1 or any(p.dtype != torch.float32 for p in ordered):
            raise ValueError("FlatPaperSGD needs fp32 parameters on one device")
        if any(not is_dense(p) for p in ordered):
            raise ValueError("FlatPaperSGD needs dense (contiguous or channels_last) parameters")
        self.weight_decay = decays.pop() if decays else 0.0
        self.momentum = groups[0]["momentum"]
        self.n_decay = sum(p.numel() for g in groups if g["weight_decay"] for p in g["params"])
        # Padded to whole blocks of the update kernel (zeros that stay zero): one launch, no tail.
        total = cdiv(sum(p.numel() for p in ordered), _SGD_PAD) * _SGD_PAD
        device = ordered[0].device
        self.flat_params = torch.zeros(total, device=device)
        self.flat_velocity = torch.zeros(total, device=device)
        self.lr_tensor = torch.full((1,), float(lr), device=device)
        self.lr_filled = float(lr)  # the value lr_tensor holds (or will hold once queued work runs)
        self.low_precision = low_precision
        grad_dtype = low_precision or torch.float32
        self.flat_grads = torch.zeros(total, device=device, dtype=grad_dtype)
        self.flat_low = torch.empty(total, device=device, dtype=low_precision) if low_precision else None
        self.low: dict[torch.Tensor, torch.Tensor] = {}  # fp32 parameter -> its low-precision leaf
        self.grad_slots: list[tuple] = []  # (leaf holding the gradient, its slot's view maker, offset)
        offset = 0
        with torch.no_grad():
            for p in ordered:
                view = lambda flat, p=p, offset=offset: flat.as_strided(p.shape, p.stride(), offset)  # noqa: E731
                new = view(self.flat_params)
                new.copy_(p)
                p.data = new
                leaf = p
                if low_precision:
                    leaf = self.low[p] = view(self.flat_low).requires_grad_(True)
                    p.grad = None
                slot = lambda view=view: view(self.flat_grads)  # noqa: E731
                leaf.grad = slot()
                set_grad_into(leaf, slot)
                self.grad_slots.append((leaf, slot, offset))
                self.state[p]["velocity"] = view(self.flat_velocity)
                offset += p.numel()
        self._grad_storage = self.flat_grads.untyped_storage()._cdata
        self.refresh_low_precision()

    def refresh_low_precision(self) -> None:
        """Rewrite the low-precision copy from the fp32 weights (after loading them)."""
        if self.flat_low is not None:
            with torch.no_grad():
                self.flat_low.copy_(self.flat_params)

    def attach(self, model: torch.nn.Module) -> None:
        """Give every module with `compute_params` (alexnet.network.layers.Conv2d/Linear) the
        low-precision copies of its weight and bias."""
        if self.flat_low is None:
            raise ValueError("attach needs FlatPaperSGD(low_precision=...)")
        for module in model.modules():
            if hasattr(module, "compute_params"):
                module.compute_params = (self.low[module.weight], self.low[module.bias])

    def gradient(self, p: torch.Tensor) -> torch.Tensor | None:
        """p's gradient of the last backward (in the low-precision dtype when that is on)."""
        return self.low[p].grad if p in self.low else p.grad

    def zero_grad(self, set_to_none: bool = True) -> None:
        if not set_to_none:
            self.flat_grads.zero_()
            return
        for leaf, _slot, _offset in self.grad_slots:
            leaf.grad = None

    def _gather_gradients(self) -> None:
        """Every gradient into its slot of the flat buffer (see the class docstring)."""
        for leaf, slot, offset in self.grad_slots:
            g = leaf.grad
            if g is None:
                slot().zero_()
            elif (g.untyped_storage()._cdata != self._grad_storage or g.storage_offset() != offset
                  or g.stride() != leaf.stride()):
                view = slot()
                view.copy_(g)
                leaf.grad = view

    @torch.no_grad()
    def step(self, closure=None):
        from kernels import sgd_step_

        loss = closure() if closure is not None else None
        self._gather_gradients()
        lr = self.param_groups[0]["lr"]
        if lr != self.lr_filled:  # a launch only when lr changes (set lr_filled = None to force one)
            self.lr_tensor.fill_(lr)
            self.lr_filled = lr
        sgd_step_(self.flat_params, self.flat_velocity, self.flat_grads, self.lr_tensor, self.momentum,
                  self.weight_decay, self.n_decay, low_precision_out=self.flat_low)
        return loss


_SGD_PAD = SGD_GPU_BLOCK  # kernels.sgd's GPU block (the interpreter's divides it; kernels/runtime/launch_params.py)


def load_velocity(optimizer: PaperSGD, model: torch.nn.Module, velocity: dict) -> None:
    """Restore the velocities saved by name (a checkpoint's "velocity") into `optimizer`:
    FlatPaperSGD's are views into its flat buffer, which the fused update reads, so they are
    filled in place; PaperSGD's are set."""
    for name, p in model.named_parameters():
        state = optimizer.state[p]
        if "velocity" in state:  # FlatPaperSGD's views into its flat buffer: fill in place
            state["velocity"].copy_(velocity[name])
        else:
            state["velocity"] = velocity[name].to(p.device, p.dtype).clone()


def param_groups(model: torch.nn.Module, weight_decay: float = 5e-4) -> list[dict]:
    """Two groups: weights (decayed) and biases (not decayed), told apart by name."""
    weights, biases = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (biases if name.endswith("bias") else weights).append(p)
    return [dict(params=weights, weight_decay=weight_decay), dict(params=biases, weight_decay=0.0)]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass
class PlateauSchedule:
    """Divide lr by `factor` when the validation error has not improved by more than
    `threshold` for `patience` epochs; after `max_reductions` reductions, the next plateau
    ends training (the paper: "reduced three times prior to termination")."""

    lr: float = 0.01
    factor: float = 10.0
    patience: int = 5
    max_reductions: int = 3
    threshold: float = 1e-4
    best: float = math.inf
    epochs_since_best: int = 0
    reductions: int = 0
    finished: bool = False

    def step(self, val_error: float) -> str:
        """Record one epoch's validation error. Returns 'improved', 'waiting', 'reduced' or 'stop'."""
        if not math.isfinite(val_error):
            raise ValueError(f"validation error must be finite, got {val_error}")
        if val_error < self.best - self.threshold:
            self.best, self.epochs_since_best = val_error, 0
            return "improved"
        self.epochs_since_best += 1
        if self.epochs_since_best < self.patience:
            return "waiting"
        if self.reductions >= self.max_reductions:
            self.finished = True
            return "stop"
        self.lr /= self.factor
        self.reductions += 1
        self.epochs_since_best = 0
        return "reduced"

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)

"""Thin modules over the project's ops: they hold parameters and call the op they are given.

Which ops the model calls is chosen once, when it is built (`load_ops(config.ops)`); the
modules only store the functions. Parameter names and layouts are those of torch (conv weight
(out, in / groups, kh, kw), linear weight (out, in)), the same for every choice of ops, so a
checkpoint loads into either.
"""
from __future__ import annotations

import importlib
from types import ModuleType

import torch
import torch.nn as nn
import torch.nn.functional as F

from alexnet.base.seeds import mixed_seed
from alexnet.network.config import resolve_ops
from kernels import grad_into, has_grad_slot

__all__ = ["load_ops", "Conv2d", "LocalResponseNorm", "MaxPool2d", "Linear", "ColumnDropout", "column_seed"]

OPS_MODULES = {"triton": "kernels", "reference": "kernels.reference"}


def load_ops(name: str) -> ModuleType:
    """The functions a run calls for config.ops = `name`. This is the one op-selection rule:

    `config.ops` (AlexNetConfig.ops, --ops) picks a module, and everything that can run either
    way takes its functions from it: the layers (`conv2d`, `relu_lrn`, ...: model.py), the
    augmentation (`augment`: alexnet/data/augment.py crop_batch, for TrainLoader, EvalLoader and
    the evaluation views, given the model's resolved ops) and the optimizer (`sgd_step_`:
    alexnet.training.loop.build_optimizer takes FlatPaperSGD's fused update for "triton", PaperSGD's torch
    ops for "reference").

    - "triton": `kernels`, the alexnet_triton custom ops (kernels/ops.py). Inside, each picks
      its implementation by the tensors' device: the Triton kernel on CUDA, the plain-PyTorch
      reference on the CPU (the Triton kernel there under TRITON_INTERPRET=1). They show up
      as single nodes under torch.compile and torch.export.
    - "reference": `kernels.reference`, torch's own ops called directly: the baseline the
      kernels are tested and measured against, with no custom op in the graph, on any device.
    - "auto": `config.resolve_ops` (AlexNetConfig.resolved uses it too): triton on a machine
      with CUDA, else reference."""
    return importlib.import_module(OPS_MODULES[resolve_ops(name)])


def compute_params(layer: nn.Module, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) in the activations' dtype (mixed precision: fp32 master parameters).
    With the optimizer's persistent low-precision copies attached (FlatPaperSGD.attach),
    those, with no cast; otherwise a cast per call (none in fp32)."""
    copies = layer.compute_params
    if copies is not None and copies[0].dtype == dtype:
        return copies
    return layer.weight.to(dtype), layer.bias.to(dtype)


class Conv2d(nn.Module):
    """Convolution, with the ReLU fused into its epilogue when `relu` (conv3-5, and conv1-2
    when no LRN follows). weight (out, in / groups, k, k) ~ N(0, std), bias (out,).

    `input_relu` (this layer's input is the previous conv's fused ReLU output) and
    `dy_masked` (this layer's only consumer is such a conv) move that ReLU's gradient mask into
    the consumer's dgrad epilogue (kernels/conv/op.py); the model sets them in pairs from its
    layer table (model.py, `relu_mask_moves`). Passed to the op only when set."""

    def __init__(self, conv2d, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int = 1, padding: int = 0, groups: int = 1, relu: bool = False,
                 input_relu: bool = False, dy_masked: bool = False):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        if dy_masked and not relu:
            raise ValueError("dy_masked=True needs relu=True: it skips the fused ReLU's gradient mask")
        self.conv2d, self.stride, self.padding, self.groups, self.relu = conv2d, stride, padding, groups, relu
        self.mask_flags = {k: v for k, v in dict(input_relu=input_relu, dy_masked=dy_masked).items() if v}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.compute_params = None  # persistent low-precision copies (FlatPaperSGD.attach)

    def forward(self, x):
        weight, bias = compute_params(self, x.dtype)
        return self.conv2d(x, weight, bias, self.stride, self.padding, self.groups, self.relu, **self.mask_flags)

    def extra_repr(self):
        out, per_group, k, _ = self.weight.shape
        flags = "".join(f", {k}=True" for k in self.mask_flags)
        return (f"{per_group * self.groups}, {out}, kernel_size={k}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, relu={self.relu}{flags}")


class LocalResponseNorm(nn.Module):
    """Local response normalisation across channels (section 3.3); `relu_lrn` fuses the
    ReLU before it, `local_response_norm` is the plain one (tanh ablation).

    groups=2 normalises each column's maps separately: in the two-GPU net a map's
    "adjacent kernel maps" are those on its own GPU (nothing crosses before conv3), so the
    window stops at the column boundary (maps 47 | 48 of conv1) and the grouped model
    computes the same function as the sharded one."""

    def __init__(self, lrn, size: int, alpha: float, beta: float, k: float, groups: int = 1):
        super().__init__()
        self.lrn, self.params = lrn, dict(size=size, alpha=alpha, beta=beta, k=k, groups=groups)

    def forward(self, x):
        return self.lrn(x, **self.params)

    def extra_repr(self):
        return f"{self.lrn.__name__}, " + ", ".join(f"{k}={v}" for k, v in self.params.items())


class MaxPool2d(nn.Module):
    """Max-pooling without padding; the paper's overlapping 3x3 stride 2 (section 3.4)."""

    def __init__(self, max_pool2d, kernel_size: int, stride: int):
        super().__init__()
        self.max_pool2d, self.kernel_size, self.stride = max_pool2d, kernel_size, stride

    def forward(self, x, input_relu: bool = False, contiguous_out: bool = False):
        """`input_relu`: x is the output of the conv before, whose fused ReLU's gradient mask
        this pooling's backward applies (that conv has dy_masked; model.py sets both).
        `contiguous_out`: the output in NCHW order (pool5's, flattened for fc6 with no copy)."""
        if input_relu or contiguous_out:
            return self.max_pool2d(x, self.kernel_size, self.stride, input_relu=input_relu,
                                   contiguous_out=contiguous_out)
        return self.max_pool2d(x, self.kernel_size, self.stride)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class Linear(nn.Module):
    """y = act(x W^T + b), W (out, in).

    Runs on cuBLAS through F.linear, the activation as a separate op (`activate=False`: fc6's
    and fc7's ReLU then runs inside the column-dropout launch). No Triton GEMM with the bias
    and ReLU in its epilogue has been built."""

    def __init__(self, in_features: int, out_features: int, activation: str | None = None):
        super().__init__()
        if activation not in (None, "relu", "tanh"):
            raise ValueError(f"activation must be None, 'relu' or 'tanh', got {activation!r}")
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        self.compute_params = None  # persistent low-precision copies (FlatPaperSGD.attach)

    def forward(self, x, add_bias: bool = True, activate: bool = True):
        """`activate=False`: without the activation (the ReLU fused into the dropout after)."""
        weight, bias = compute_params(self, x.dtype)
        bias = bias if add_bias else None
        if has_grad_slot(weight) and torch.is_grad_enabled() and not torch.compiler.is_compiling():
            y = LinearIntoBuffer.apply(x, weight, bias)
        else:
            y = F.linear(x, weight, bias)
        if not activate:
            return y
        if self.activation == "relu":
            return torch.relu(y)
        return torch.tanh(y) if self.activation == "tanh" else y

    def extra_repr(self):
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, activation={self.activation}"


class LinearIntoBuffer(torch.autograd.Function):
    """F.linear for 2-D x whose weight and bias gradients are written straight into the
    optimizer's flat gradient buffer (kernels.runtime.dispatch.grad_into, FlatPaperSGD's slots): the same
    GEMM and sum as F.linear's backward, without the copy into the buffer afterwards."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.owners = (weight, bias)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        dx = dw = db = None
        if need_x:
            dx = dy.mm(weight)
        if need_w:
            out = grad_into(ctx.owners[0])
            dw = dy.t().mm(x) if out is None else torch.mm(dy.t(), x, out=out)
        if need_b:
            out = grad_into(ctx.owners[1])
            db = dy.sum(0) if out is None else torch.sum(dy, 0, out=out)
        return dx, dw, db


def column_seed(seed: int, column: int, replica: int = 0) -> int:
    """The seed of one column's dropout stream: independent streams for every (replica,
    column) pair of one base seed (numpy's SeedSequence does the mixing)."""
    return mixed_seed(seed, spawn_key=(replica, column))


class ColumnDropout(nn.Module):
    """Inverted dropout (section 4.2) applied to each column's share of the features with
    that column's own random stream.

    The features (B, F) split into len(columns) equal chunks along F, chunk i belonging to
    column columns[i], whose stream is seeded with column_seed(seed, column, replica). The
    single-device model holds columns (0, 1); rank r of the two-rank model holds (r,) and
    sees its (B, F/2) share as one tensor, the same shape as the single-device chunk, so
    with the same seed both draw exactly the same masks. fc6 and fc7 share the module (and
    the streams), in that order on every layout.

    Given `column_op` (the project's ops: `kernels.column_dropout`) the layer is one call of
    the functional op alexnet_triton::column_dropout on every device (`kernels.column_dropout`:
    one Triton launch forward and one backward on CUDA and under the interpreter, the same
    masks in torch ops on a plain CPU): column i's mask is Philox keyed by its seed at the
    layer's call count, a (1,) int64 tensor on the device, and the op returns the next count
    as a new tensor, which the module keeps. No host work per call, and
    torch.compile(fullgraph=True) traces the layer (the new count is a graph output). `pin()`
    keeps the count at one address instead (copied there: one small copy per call), which a
    captured CUDA graph needs to advance it on every replay (alexnet/training/step_graph.py).
    Without it (the reference ops: torch's own `dropout`) each chunk is dropped separately
    with a torch.Generator per column, eagerly (Dynamo does not trace a Generator's state).
    (`kernels.reference.column_dropout` as `column_op` draws the column op's masks in torch
    ops: tests/test_convergence.py gives it to the reference model.)

    State is created per device on first use; `get_rng_state`/`set_rng_state` save and
    restore it (for exact resumption).
    """

    def __init__(self, dropout, p: float, seed: int, columns: tuple[int, ...], replica: int = 0, *,
                 column_op=None):
        super().__init__()
        self.dropout, self.p, self.columns, self.replica = dropout, p, tuple(columns), replica
        self.fused = column_op is not None  # the column op: one launch per call for all columns
        self._column_dropout = column_op
        self.pinned = False
        self.manual_seed(seed)

    def manual_seed(self, seed: int) -> None:
        """Restart every column's stream from `seed`."""
        self.seed = int(seed)
        # mixed here, not on first use: a first call inside torch.compile creates the state too
        self._column_seeds = [column_seed(self.seed, c, self.replica) for c in self.columns]
        self._streams: dict[torch.device, object] = {}
        self._calls: dict[torch.device, torch.Tensor] = {}

    def _device(self, device) -> torch.device:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        return device

    def streams(self, device):
        """On `device`: the column op's (seeds (columns,) int64, call count (1,) int64), or
        one torch.Generator per column."""
        device = self._device(device)
        if device not in self._streams:
            seeds = self._column_seeds
            if self.fused:
                self._streams[device] = torch.tensor(seeds, dtype=torch.int64, device=device)
                self._calls[device] = torch.zeros(1, dtype=torch.int64, device=device)
            else:
                self._streams[device] = [torch.Generator(device).manual_seed(s) for s in seeds]
        if self.fused:
            return self._streams[device], self._calls[device]
        return self._streams[device]

    def pin(self) -> None:
        """Keep each device's call count in one tensor from now on: every call copies the new
        count into it (in a captured CUDA graph, each replay reads and advances that address).
        The count moves to a fresh tensor first, so no forward's saved output is overwritten."""
        if self.pinned:
            return
        self.pinned = True
        self._calls = {device: calls.clone() for device, calls in self._calls.items()}

    def get_rng_state(self, device) -> list[torch.Tensor]:
        """One state tensor per column (the column op: the call count, the same for all)."""
        streams = self.streams(device)
        if self.fused:
            return [streams[1].detach().cpu().clone() for _ in self.columns]
        return [g.get_state() for g in streams]

    def set_rng_state(self, states, device) -> None:
        device = self._device(device)
        streams = self.streams(device)
        if len(states) != len(self.columns):
            raise ValueError(f"{len(states)} dropout states for {len(self.columns)} columns")
        if not self.fused:
            for g, state in zip(streams, states, strict=True):
                g.set_state(state)
            return
        if any(s.dtype != torch.int64 or s.numel() != 1 for s in states) or len({int(s) for s in states}) != 1:
            raise ValueError("not the column op's dropout state (one int64 call count per column, all equal)")
        if self.pinned:
            streams[1].copy_(states[0].reshape(1))
        else:  # a new tensor: the current one may be saved for a backward still to come
            self._calls[device] = states[0].reshape(1).to(device, copy=True)

    def forward(self, x, relu: bool = False):
        """Dropout of x, or of relu(x) with `relu` (with the column op: in the same launch)."""
        if relu and not (self.fused and self.training and 0.0 < self.p < 1.0):
            x = torch.relu(x)
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:  # everything dropped, no stream needed
            return self.dropout(x, self.p, True)
        streams = self.streams(x.device)
        if self.fused:
            seeds, calls = streams
            y, next_call = self._column_dropout(x, seeds, calls, self.p, relu=relu)
            if self.pinned:
                calls.copy_(next_call)
            else:
                self._calls[self._device(x.device)] = next_call
            return y
        if len(streams) == 1:
            return self.dropout(x, self.p, True, streams[0])
        return torch.cat([self.dropout(part, self.p, True, g)
                          for part, g in zip(x.chunk(len(streams), dim=1), streams)], dim=1)

    def extra_repr(self):
        return f"p={self.p}, columns={self.columns}, replica={self.replica}, seed={self.seed}"

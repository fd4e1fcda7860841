"""The paper's two-GPU model parallelism (section 3.2), one column of kernels per rank.

Rank r of a pair (see distributed.py) holds column r: conv1 48 kernels, conv2 128 (from its
own 48 maps), conv3 192 (from all 256), conv4 192 (own), conv5 128 (own), fc6 2048 (from
all 9216), fc7 2048 (from all 4096), and fc8's weights for its own 2048 fc7 features. The
columns talk only where the paper's do, in this file's "Collectives" section and nowhere else:

    point   forward                               backward
    conv3   all-gather pool2 maps (B,128,13,13)   reduce-scatter (sum) of their gradient
    fc6     all-gather pool5, flat (B, 4608)      reduce-scatter
    fc7     all-gather fc6 output (B, 2048)       reduce-scatter
    fc8     all-reduce partial logits (B, 1000)   none: the gradient is already whole

An all-gather's consumer (conv3, fc6, fc7) uses all columns' maps to make its own outputs,
so each rank's gradient for the gathered tensor is a partial one; the true gradient of a
column's share is the sum over ranks: reduce-scatter. Gathering concatenates along dim 1
in rank order, so the sharded pool5 flattens to exactly the single-device 9216 vector
(channels 0..127 of rank 0, then 128..255 of rank 1, each 6x6 in row order).

fc8 is split by its inputs (rank r: logits_r = fc7_r @ W8[:, r-th 2048]^T), the partial
logits summed by an all-reduce and the (replicated) bias added on both ranks, rather than
split by outputs (500 logits per rank, gathered after an all-gather of fc7): the sum moves
B*1000 values forward and nothing backward, the output split B*(2048 + 500) forward and
B*2048 backward. Both ranks then hold the same logits, compute the same loss, and call
backward on it; the all-reduce's backward is the identity because each rank's upstream
gradient is already the whole one (Megatron-LM's "g" operator).

Any checkpoint loads into any layout: `shard_state_dict(full, r)` and
`merge_state_dicts([sd0, sd1])` convert between the single-device (grouped) state dict and
the two ranks' ones; parameter names are the same in all of them. `full_state(t, layout)`
and `local_state(full, layout)` (layout None: one process) are what the trainer's
checkpoints use; this file is the only place that converts between the layouts.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist

from alexnet.network.config import EXCHANGE_POINTS, AlexNetConfig, input_shape, split_dim
from alexnet.network.distributed import ParallelLayout, guard
from alexnet.network.model import AlexNet
from kernels import memory_format

__all__ = ["ShardedAlexNet", "shard_state_dict", "merge_state_dicts", "full_state", "local_state", "Exchange",
           "exchange_plan", "format_plan"]


# ======================================================================== collectives
def bytes_sent(collective: str, numel: int, element_size: int, ranks: int) -> int:
    """Bytes each rank sends (= receives) in a bandwidth-optimal (ring) collective.
    numel: all-gather, the local input; reduce-scatter, the local output; all-reduce, the tensor."""
    factor = {"all-gather": ranks - 1, "reduce-scatter": ranks - 1, "all-reduce": 2 * (ranks - 1) / ranks}[collective]
    return int(factor * numel * element_size)


def _comm_device(layout: ParallelLayout, t: torch.Tensor) -> torch.device:
    """Where a collective's buffers live: gloo works on host memory (its CUDA paths copy
    through the host anyway, and not every op has one in every torch version), so CUDA
    tensors are staged explicitly; NCCL works in place on the GPU."""
    return torch.device("cpu") if layout.backend == "gloo" else t.device


def _all_gather_dim1(x, layout: ParallelLayout, point: str, traffic: Counter) -> torch.Tensor:
    """(B, C, ...) on each rank -> (B, ranks * C, ...), rank r's share at [r*C, (r+1)*C),
    in x's memory format."""
    ranks = dist.get_world_size(layout.pair_group)
    fmt = memory_format(x)
    nhwc = x.dim() == 4 and fmt == torch.channels_last  # gathered as its (B, H, W, C) storage: no copy first
    local = (x.permute(0, 2, 3, 1) if nhwc else x.contiguous()).to(_comm_device(layout, x))
    stacked = local.new_empty((ranks * local.shape[0], *local.shape[1:]))  # rank-major
    with guard(f"all-gather before {point}", layout.timeout):
        dist.all_gather_into_tensor(stacked, local, group=layout.pair_group)
    traffic[(point, "forward")] += bytes_sent("all-gather", local.numel(), local.element_size(), ranks)
    c = x.shape[1]
    full = torch.empty((x.shape[0], ranks * c, *x.shape[2:]), dtype=x.dtype, device=x.device, memory_format=fmt)
    shares = stacked.unflatten(0, (ranks, x.shape[0])).movedim(0, 1)  # (B, ranks, ...) rank r's share at [:, r]
    if nhwc:  # (B, ranks, H, W, C) into full's (B, H, W, ranks, C) storage
        full.permute(0, 2, 3, 1).unflatten(3, (ranks, c)).copy_(shares.permute(0, 2, 3, 1, 4))
    else:
        full.unflatten(1, (ranks, c)).copy_(shares)
    return full


def _reduce_scatter_dim1(grad, layout: ParallelLayout, point: str, traffic: Counter) -> torch.Tensor:
    """(B, ranks * C, ...) partial gradients on each rank -> their sum's share (B, C, ...) of this rank."""
    ranks = dist.get_world_size(layout.pair_group)
    stacked = grad.unflatten(1, (ranks, grad.shape[1] // ranks)).movedim(1, 0)  # (ranks, B, C, ...)
    stacked = stacked.contiguous().to(_comm_device(layout, grad))
    out = stacked.new_empty(stacked.shape[1:])
    with guard(f"reduce-scatter (backward) before {point}", layout.timeout):
        dist.reduce_scatter_tensor(out, stacked.flatten(0, 1), group=layout.pair_group)
    traffic[(point, "backward")] += bytes_sent("reduce-scatter", out.numel(), out.element_size(), ranks)
    return out.to(grad.device)


class _GatherColumns(torch.autograd.Function):
    """Forward: all-gather of the columns' shares along dim 1. Backward: reduce-scatter."""

    @staticmethod
    def forward(ctx, x, layout, point, traffic):
        ctx.layout, ctx.point, ctx.traffic = layout, point, traffic
        return _all_gather_dim1(x, layout, point, traffic)

    @staticmethod
    def backward(ctx, grad):
        return _reduce_scatter_dim1(grad, ctx.layout, ctx.point, ctx.traffic), None, None, None


class _SumColumns(torch.autograd.Function):
    """Forward: all-reduce (sum) of partial results. Backward: identity (see module docstring)."""

    @staticmethod
    def forward(ctx, x, layout, point, traffic):
        # in place where the collective works on x's device (NCCL; gloo on the CPU): x is fc8's
        # fresh partial product, which nothing saved, so no copy is needed
        in_place = _comm_device(layout, x) == x.device and x.is_contiguous()
        total = x if in_place else x.to(_comm_device(layout, x), copy=True)
        with guard(f"all-reduce at {point}", layout.timeout):
            dist.all_reduce(total, group=layout.pair_group)
        traffic[(point, "forward")] += bytes_sent("all-reduce", total.numel(), total.element_size(),
                                                  dist.get_world_size(layout.pair_group))
        if in_place:
            ctx.mark_dirty(x)
            return x
        return total.to(x.device)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None


def _average_over_replicas(tensors: list[torch.Tensor], layout: ParallelLayout, traffic: Counter) -> None:
    """In place: each tensor averaged over the ranks of this column group (data parallelism)."""
    buffers = [t.to(_comm_device(layout, t)) for t in tensors]
    with guard("gradient all-reduce over the replicas", layout.timeout):
        works = [dist.all_reduce(b, group=layout.column_group, async_op=True) for b in buffers]
        for work in works:
            work.wait()
    for t, b in zip(tensors, buffers):
        t.copy_(b).div_(layout.replicas)  # gloo has no average op
        traffic[("gradients", "backward")] += bytes_sent("all-reduce", t.numel(), t.element_size(), layout.replicas)


def _broadcast_from_first_replica(tensors: list[torch.Tensor], layout: ParallelLayout) -> None:
    """In place: replica 0's values (global rank = column) on every rank of this column group."""
    buffers = [t.to(_comm_device(layout, t)) for t in tensors]
    with guard("parameter broadcast over the replicas", layout.timeout):
        for b in buffers:
            dist.broadcast(b, src=layout.column, group=layout.column_group)
    for t, b in zip(tensors, buffers):
        t.copy_(b)


# ======================================================================== the sharded model
class ShardedAlexNet(AlexNet):
    """Column `layout.column` of replica `layout.replica` of the two-rank AlexNet.

    Every rank of a pair feeds the same images and gets the same logits (B, 1000); each
    computes the same loss, calls backward, then `sync_gradients()` (a no-op with one
    replica) before the optimizer step. Seeded alike (torch.manual_seed), the pair starts
    from exactly the single-device model's weights, and replicas from replica 0's.
    `traffic` counts the bytes this rank sent per (point, direction).
    """

    def __init__(self, config: AlexNetConfig, layout: ParallelLayout):
        super().__init__(config, column=layout.column, replica=layout.replica)
        self.layout = layout
        self.traffic: Counter = Counter()
        self.to(layout.device)
        if layout.replicas > 1:
            _broadcast_from_first_replica([p.data for p in self.parameters()], layout)

    def reset_parameters(self) -> None:
        """This column's share of a paper-initialised full network (built on the CPU)."""
        full = AlexNet(replace(self.config, ops="reference", channels_last=False, dropout_seed=0))
        self.load_state_dict(shard_state_dict(full.state_dict(), self.column))

    def exchange(self, x: torch.Tensor, point: str) -> torch.Tensor:
        return _GatherColumns.apply(x, self.layout, point, self.traffic)

    def sum_columns(self, x: torch.Tensor) -> torch.Tensor:
        return _SumColumns.apply(x, self.layout, "fc8", self.traffic)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """fc7 activations of both columns (B, 4096), gathered (an exchange outside training)."""
        return self.exchange(self._hidden(x), "features")

    def sync_gradients(self) -> None:
        """Average the gradients over the replicas holding this column (after backward)."""
        if self.layout.replicas > 1:
            _average_over_replicas([p.grad for p in self.parameters() if p.grad is not None], self.layout, self.traffic)


# ======================================================================== checkpoints
# How each tensor divides between the columns: config.split_dim, from the layer table (dim 0,
# its output channels or features, unless listed; grouped convs put group g's kernels at
# [g*C, (g+1)*C), which is column g's share).


def shard_state_dict(full: dict, column: int, columns: int = 2) -> dict:
    """Column `column`'s share of a single-device (grouped) state dict."""
    out = {}
    for name, t in full.items():
        dim = split_dim(name)
        out[name] = t.clone() if dim is None else t.chunk(columns, dim)[column].clone()
    return out


def merge_state_dicts(shards: list[dict]) -> dict:
    """The single-device state dict from the columns' state dicts (rank order). Replicated
    tensors (fc8.bias) are identical on every rank; rank 0's copy is taken."""
    out = {}
    for name in shards[0]:
        dim = split_dim(name)
        out[name] = shards[0][name].clone() if dim is None else torch.cat([sd[name] for sd in shards], dim)
    return out


def full_state(tensors_by_name: dict, layout: ParallelLayout | None) -> dict:
    """`tensors_by_name` (this rank's share) in the single-device layout, on the CPU; every
    rank of a pair must call it. layout None: one process, already the single-device layout."""
    local = {k: v.detach().cpu() for k, v in tensors_by_name.items()}
    if layout is None:
        return local
    shards = [None, None]
    dist.all_gather_object(shards, local, group=layout.pair_group)
    return merge_state_dicts(shards)


def local_state(full: dict, layout: ParallelLayout | None) -> dict:
    """This rank's share of a single-device state dict (the dict itself for one process)."""
    return full if layout is None else shard_state_dict(full, layout.column)


# ======================================================================== bytes per step
@dataclass(frozen=True)
class Exchange:
    point: str                  # the layer before which the columns meet, or "gradients"
    collective: str             # forward / backward collectives
    shape: tuple[int, ...]      # the tensor each rank contributes
    forward_bytes: int          # sent by each rank (= received), per step
    backward_bytes: int


def exchange_plan(config: AlexNetConfig, batch_size: int, element_size: int = 4, replicas: int = 1,
                  grad_element_size: int = 4) -> list[Exchange]:
    """The bytes each rank sends per training step at each exchange, from the shapes alone.
    element_size: bytes per activation value; grad_element_size: per gradient value."""
    shares = {}  # what each rank contributes at each gather: its half of the layer's input
    for point in EXCHANGE_POINTS:  # conv3, fc6, fc7
        maps, *pixels = input_shape(config, point)
        shares[point] = (batch_size, maps // 2, *pixels)
    plan = [Exchange(point, "all-gather / reduce-scatter", shape,
                     bytes_sent("all-gather", math.prod(shape), element_size, 2),
                     bytes_sent("reduce-scatter", math.prod(shape), element_size, 2))
            for point, shape in shares.items()]
    logits = (batch_size, config.num_classes)
    plan.append(Exchange("fc8", "all-reduce / -", logits,
                         bytes_sent("all-reduce", math.prod(logits), element_size, 2), 0))
    if replicas > 1:
        with torch.device("meta"):
            column = AlexNet(replace(config, ops="reference", dropout_seed=0), column=0)
            params = sum(p.numel() for p in column.parameters())
        plan.append(Exchange("gradients", "- / all-reduce", (params,), 0,
                             bytes_sent("all-reduce", params, grad_element_size, replicas)))
    return plan


def format_plan(plan: list[Exchange], batch_size: int) -> str:
    """A table of `exchange_plan`'s rows with totals, for printing once at start."""
    rows = [f"bytes sent per rank per step (batch {batch_size}; each rank receives as much):",
            f"  {'point':<10}{'collective (fwd / bwd)':<30}{'shape':<22}{'forward':>12}{'backward':>12}"]
    for e in plan:
        rows.append(f"  {e.point:<10}{e.collective:<30}{str(e.shape):<22}{e.forward_bytes / 2**20:>9.2f} MiB"
                    f"{e.backward_bytes / 2**20:>9.2f} MiB")
    fwd, bwd = sum(e.forward_bytes for e in plan), sum(e.backward_bytes for e in plan)
    rows.append(f"  {'total':<62}{fwd / 2**20:>9.2f} MiB{bwd / 2**20:>9.2f} MiB")
    return "\n".join(rows)

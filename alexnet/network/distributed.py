"""Processes for the two-column model: torchrun's environment, the backend, the process groups.

With 2k processes there are k data-parallel replicas of the two-rank model:

    rank       0   1 | 2   3 | ... | 2k-2  2k-1
    replica    0   0 | 1   1 | ... | k-1   k-1       pair group: the two ranks of a replica
    column     0   1 | 0   1 | ... | 0     1         column group: all ranks of one column

The ranks of a pair exchange activations (`parallel.py`); after the backward, the ranks of a
column group average their gradients. Both ranks of a pair must see the same images: the
data loader shards by replica (`data_rank`, `data_world`), not by global rank, and seeds
its augmentation per replica.

Launch (nothing is spawned by hand):

    torchrun --nproc-per-node 2 SCRIPT                     # one machine, two GPUs
    torchrun --nnodes N --nproc-per-node G --rdzv-backend c10d \\
             --rdzv-endpoint HOST:29500 SCRIPT             # N*G ranks, N*G/2 replicas

A dead or stuck rank never hangs the others forever: every group carries a timeout (gloo
collectives raise when it passes; NCCL's watchdog aborts the process), and a failed
collective is re-raised as `ExchangeError` naming where it happened.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["ParallelLayout", "ExchangeError", "choose_backend", "init_distributed", "guard"]


class ExchangeError(RuntimeError):
    """A collective between ranks failed: a peer died, raised, or missed the timeout."""


@contextlib.contextmanager
def guard(what: str, timeout: timedelta):
    """Re-raise a failing collective's error as an ExchangeError that says where and why."""
    try:
        yield
    except RuntimeError as err:
        rank = dist.get_rank() if dist.is_initialized() else "?"
        raise ExchangeError(
            f"rank {rank}: {what} failed: another rank died, raised an error, or did not reach this "
            f"collective within the timeout ({timeout.total_seconds():g} s); see the other ranks' output. "
            f"Cause: {type(err).__name__}: {err}") from err


def choose_backend(local_world_size: int, cuda_devices: int | None = None) -> str:
    """NCCL when every process on this machine can have a GPU of its own; gloo otherwise
    (CPU, or several ranks sharing one GPU, which NCCL refuses)."""
    cuda_devices = torch.cuda.device_count() if cuda_devices is None else cuda_devices
    return "nccl" if 0 < local_world_size <= cuda_devices else "gloo"


@dataclass(frozen=True)
class ParallelLayout:
    """Who this process is in the k x 2 grid of ranks, and its groups (see module docstring)."""
    rank: int
    world_size: int
    device: torch.device
    backend: str
    timeout: timedelta
    pair_group: dist.ProcessGroup
    column_group: dist.ProcessGroup | None  # None with a single replica

    @property
    def column(self) -> int:
        return self.rank % 2

    @property
    def replica(self) -> int:
        return self.rank // 2

    @property
    def replicas(self) -> int:
        return self.world_size // 2

    @property
    def data_rank(self) -> int:
        """The data loader's rank: both ranks of a pair read the same images."""
        return self.replica

    @property
    def data_world(self) -> int:
        return self.replicas

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def print(self, *args, **kwargs) -> None:
        """print on rank 0 only."""
        if self.is_main:
            print(*args, **kwargs, flush=True)

    @classmethod
    def create(cls, device, timeout: timedelta) -> "ParallelLayout":
        """The groups of an initialised default process group (every rank must call this)."""
        rank, world = dist.get_rank(), dist.get_world_size()
        if world % 2:
            raise ValueError(f"the two-column model needs an even number of ranks (2 per replica), got {world}")
        # new_group must be called by every rank for every group, in the same order.
        pairs = [dist.new_group([2 * i, 2 * i + 1], timeout=timeout) for i in range(world // 2)]
        columns = [dist.new_group(list(range(c, world, 2)), timeout=timeout) for c in (0, 1)] if world > 2 else None
        return cls(rank, world, torch.device(device), dist.get_backend(), timeout,
                   pairs[rank // 2], columns[rank % 2] if columns else None)


def init_distributed(backend: str = "auto", timeout_s: float = 600.0, device: str | None = None) -> ParallelLayout:
    """Join the job torchrun started (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
    MASTER_ADDR/PORT in the environment) and build the groups.

    backend: "auto" (see choose_backend), "nccl" or "gloo". device: None for
    cuda:LOCAL_RANK when CUDA is available (modulo the GPU count: ranks may share a GPU
    under gloo), else the CPU; "cuda" or "cpu" to choose; or a full name ("cuda:1")."""
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} not set: launch with torchrun, e.g. "
                           "`torchrun --nproc-per-node 2 -m alexnet.train`")
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if backend == "auto":
        backend = choose_backend(local_world) if device.type == "cuda" else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend must be 'auto', 'nccl' or 'gloo', got {backend!r}")
    if backend == "nccl":
        if device.type != "cuda":
            raise ValueError("backend 'nccl' needs CUDA devices; use 'gloo' on the CPU")
        # A collective that passes the timeout aborts the communicator and the process
        # (instead of hanging), reporting which collective it was.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    timeout = timedelta(seconds=timeout_s)
    dist.init_process_group(backend, rank=int(os.environ["RANK"]), world_size=world, timeout=timeout)
    return ParallelLayout.create(device, timeout)

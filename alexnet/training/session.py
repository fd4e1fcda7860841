"""What a training run stands on before its loop starts: the process (`Session`: rank,
device, distributed layout), the prepared store it trains on (`resolve_store`: the demo's,
the one at --data, or one prepared from an image folder) and the model it builds
(`build_model`: TrainConfig's model fields into AlexNetConfig, one column pair per two
ranks under torchrun). Used by alexnet/training/loop.py.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from alexnet.base.errors import UsageError
from alexnet.data.store import Store
from alexnet.network.config import AlexNetConfig, triton_unsupported
from alexnet.network.model import AlexNet
from alexnet.training.checks import check_store_fits, check_store_source
from alexnet.training.recipe import MODEL_FIELDS, TrainConfig, store_size_for

__all__ = ["Session", "resolve_store", "build_model", "resolve_precision", "check_ops", "tf32_as"]


class Session:
    """Process-level facts: rank, device, distributed layout (None for one process)."""

    def __init__(self, config: TrainConfig):
        self.layout = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from alexnet.network.distributed import init_distributed

            self.layout = init_distributed(timeout_s=config.timeout_s)
            self.device = self.layout.device
        else:
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.is_main = self.layout is None or self.layout.is_main  # ParallelLayout.is_main decides with ranks
        self.data_rank = 0 if self.layout is None else self.layout.data_rank
        self.data_world = 1 if self.layout is None else self.layout.data_world

    def print(self, *args):
        """print on the main process only: the layout's rule when distributed, else always."""
        if self.layout is not None:
            self.layout.print(*args)
        else:
            print(*args, flush=True)

    def barrier(self):
        if self.layout is not None:
            torch.distributed.barrier()

    def close(self):
        if self.layout is not None and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def resolve_precision(precision: str, device: torch.device) -> str:
    """--precision made concrete for `device`: "auto" is bf16 where the device has it (CUDA,
    compute capability 8.0+), else fp32 (the CPU; a T4); an explicit precision the GPU lacks
    (bf16 or tf32 below 8.0) is refused with one line (UsageError) before anything is written."""
    from kernels import auto_precision, device_spec, precision_refusal

    spec = device_spec(device) if device.type == "cuda" else None
    if precision == "auto":
        return auto_precision(spec)
    refusal = precision_refusal(spec, precision, str(device))
    if refusal:
        raise UsageError(f"alexnet.train: {refusal}")
    return precision


def check_ops(ops: str, device: torch.device) -> str | None:
    """--ops on `device`: refuses "triton" (UsageError, one line) where the Triton kernels do not
    run (below compute capability 8.0); for "auto" there, the line saying the run uses the
    reference ops instead (None where nothing needs saying)."""
    why = triton_unsupported() if device.type == "cuda" else None
    if why is None:
        return None
    if ops == "triton":
        raise UsageError(f"alexnet.train: --ops triton: {why}; use --ops auto or reference")
    return f"alexnet.train: {why}: running the reference ops (cuDNN) instead" if ops == "auto" else None


def resolve_store(config: TrainConfig, session: Session) -> Store:
    """The prepared store: the demo's (generated once into the cache), the one at --data,
    or one prepared from the ImageNet-style folder at --data into OUT/store. Rank 0 builds."""
    from alexnet.data.store import is_store

    if config.data is None:
        from alexnet.data.demo import ensure_demo_store

        size = store_size_for(config.image_size)  # DEMO_STORE_SIZE for the demo's own crop
        if session.is_main:
            path = ensure_demo_store(image_size=size)
        session.barrier()
        path = ensure_demo_store(image_size=size)
    elif is_store(config.data):
        path = config.data
    else:
        from alexnet.data.prepare import prepare

        path = Path(config.out) / "store"
        size = store_size_for(config.image_size)  # 256 for the paper's 224 crops
        if is_store(path):
            check_store_source(Store(path), config.data)
        elif session.is_main:
            session.print(f"preparing {config.data} into {path} at {size} px for {config.image_size} px crops (once)")
            prepare(config.data, path, image_size=size)
        session.barrier()
    store = Store(path)
    check_store_fits(store, config.image_size, config.data)
    return store


def build_model(config: TrainConfig, store: Store, session: Session):
    init_std, init_bias = config.initial()
    model_config = AlexNetConfig(num_classes=store.num_classes, image_size=config.image_size, ops=config.ops,
                                 dropout_seed=config.seed, init_std=init_std, init_bias_one=init_bias,
                                 **{name: getattr(config, name) for name in MODEL_FIELDS}).resolved()
    torch.manual_seed(config.seed)  # the initial weights (the same on every rank)
    if session.layout is None:
        return AlexNet(model_config).to(session.device), model_config
    from alexnet.network.parallel import ShardedAlexNet

    if config.columns != 2:
        raise UsageError("alexnet.train: several ranks run the two-column model; --columns 1 needs one process")
    return ShardedAlexNet(model_config, session.layout), model_config


@contextlib.contextmanager
def tf32_as(precision: str):
    """torch's TF32 switches (cuBLAS matmuls, cuDNN's convolutions, and this project's conv tiles,
    which follow cudnn.allow_tf32) on for precision "tf32" and off otherwise, for the block;
    what was set before comes back after."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32 = cudnn.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved

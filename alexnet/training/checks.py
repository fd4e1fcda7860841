"""What a training run checks before it starts and says about itself as it goes: the store
fits the crop and comes from --data, a checkpoint resumes only on the store it was trained
on, the weights are finite, and an epoch's loss is diverging or stalled at chance (with the
command to restart from). Used by alexnet/training/loop.py.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from alexnet.base.errors import UsageError
from alexnet.data.store import Store
from alexnet.training.checkpoint import store_mismatch
from alexnet.training.recipe import INIT, TrainConfig, command_line, store_size_for

__all__ = ["check_store_fits", "check_store_source", "check_checkpoint_store", "weights_finite", "loss_remark",
           "at_chance", "stall_message"]


def check_store_fits(store: Store, crop: int, data: str | None) -> None:
    """Refuse crops that do not fit the store's images, or that see less than 3/4 of their side
    (a 64 px crop of a 256 px digit sees a sixteenth of it and learns nothing), saying how to fix it."""
    size = store.image_size
    if size * 3 / 4 <= crop <= size:
        return
    fix = (f"prepare the images at {store_size_for(crop)} px (`python -m alexnet.prepare SRC STORE --image-size "
           f"{store_size_for(crop)}`), or choose --image-size between {-(-size * 3 // 4)} and {size}")
    from alexnet.data.store import is_store

    if data is not None and not is_store(data):
        fix = (f"{store.path} was prepared by an earlier run with another --image-size: remove it or use another "
               f"--out, so this run prepares its own")
    raise SystemExit(f"alexnet.train: --image-size {crop} does not fit the {size} px images of {store.path}: {fix}")


def check_store_source(store: Store, data) -> None:
    """OUT/store must have been prepared from --data, not from an earlier run's folder."""
    source, wanted = store.source, str(Path(data).resolve())
    if source is not None and source != wanted:
        raise UsageError(f"alexnet.train: {store.path} was prepared from {source}, not from --data {wanted}: "
                         "choose another --out (or delete that store to prepare it again)")


def check_checkpoint_store(ckpt: dict, store: Store, path) -> None:
    """A checkpoint continues only on the store (classes, size, images) it was trained on."""
    why = store_mismatch(ckpt, store)
    if why is not None:
        raise UsageError(f"alexnet.train: cannot resume {path} on {store.path}: {why}")


def weights_finite(model) -> torch.Tensor:
    """A device bool: every parameter is finite (the largest |w| of each, NaN propagating)."""
    params = [p.detach() for p in model.parameters()]
    return torch.stack(torch._foreach_norm(params, float("inf"))).isfinite().all()


def loss_remark(loss: float, num_classes: int) -> str:
    """What an epoch's training loss says about the run: far above chance's log(C) is
    divergence, not a stall (a stall at chance is `at_chance`'s, judged over epochs)."""
    chance = math.log(num_classes)
    if loss > 1.5 * chance + 1.0:
        return (f"; DIVERGING: the loss is far above chance's {chance:.3f} (try a lower --lr, or --precision fp32)")
    return ""


def at_chance(record: dict, num_classes: int) -> bool:
    """An epoch that learnt nothing: training loss within 2% of ln(classes) and validation
    top-1 error no better than chance by more than 2 points."""
    return (record["train_loss"] > 0.98 * math.log(num_classes)
            and record["val_top1"] >= record["chance_top1"] - 0.02)


def stall_message(config: TrainConfig, epochs: int) -> str:
    demo = INIT["demo"]
    if config.init == "paper":
        why = (f"the paper's init (N(0, {config.initial()[0]}) weights, biases {config.initial()[1]}) can sit here "
               f"for many "
               f"epochs on a small dataset; restart from the demo's init (N(0, {demo['init_std']}), biases "
               f"{demo['init_bias']}) and a lower lr")
        lr = min(config.lr, 0.002)
    else:
        why = "restart with a lower lr"
        lr = config.lr / 5
    return (f"STALLED at chance for {epochs} epochs (training loss at ln(classes), validation error at chance): "
            f"{why}:\n  " + command_line(config, init="demo", init_std=None, init_bias=None, lr=lr, resume=None))

"""Atomic checkpoints: a crash while writing never leaves a truncated or half-written file.

Writes go to a temporary file in the same directory, are flushed and fsync'ed, then renamed
over the destination (rename is atomic on POSIX), and the directory entry is fsync'ed too.
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
import torch


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(obj, path: str | os.PathLike) -> None:
    """torch.save `obj` to `path` atomically."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load(path: str | os.PathLike, map_location="cpu"):
    """Load a checkpoint written by `save` (tensors to `map_location`, CPU by default)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location=map_location, weights_only=False)


def model_from_checkpoint(path, ops: str = "auto", device=None):
    """(model, checkpoint): the single-device model of a checkpoint written by alexnet.train
    (whatever layout trained it: checkpoints hold the single-device layout), in eval mode."""
    from dataclasses import fields

    from .config import AlexNetConfig
    from .model import AlexNet

    ckpt = load(path)
    if "model_config" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{path} is not a checkpoint written by alexnet.train")
    known = {f.name for f in fields(AlexNetConfig)}
    saved = {k: v for k, v in ckpt["model_config"].items() if k in known}
    config = AlexNetConfig(**{**saved, "ops": ops, "channels_last": None, "dropout_seed": 0})
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = AlexNet(config).to(device)
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def inference_info(store, image_size: int) -> dict:
    """What a checkpoint needs to classify an image file without its store
    (`python -m alexnet.predict`): the class names, the network's input size, the side the
    store's images were prepared at and their mean image. Tensors, lists, strings and numbers
    only, so `torch.load(..., weights_only=True)` reads it."""
    return {"classes": [str(c) for c in store.classes], "image_size": int(image_size),
            "store_image_size": int(store.image_size),
            "mean_image": torch.from_numpy(np.ascontiguousarray(store.mean, dtype=np.float32))}

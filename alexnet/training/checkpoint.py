"""Atomic checkpoints: a crash while writing never leaves a truncated or half-written file
(the writing itself is alexnet/base/files.py's; `remove_stale_temps` is re-exported from there).

Loading never runs code from the file: `torch.load(weights_only=True)` unpickles only
tensors, dicts, lists, tuples, strings, numbers and None (what `alexnet.train` writes), and
refuses any other object, so a crafted .pt cannot execute anything; the structure is
checked after loading (`check_structure`).
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from alexnet.base.files import atomic_write_bytes
from alexnet.base.files import remove_stale_temps as remove_stale_temps  # the trainer's and the tests' name

# What a checkpoint written by alexnet.train holds, by key, as (type, what it is).
TRAINING_KEYS = {"format": int, "model": dict, "velocity": dict, "schedule": dict, "loader": dict, "step": int,
                 "best_top1": float, "rng": list, "config": dict, "model_config": dict, "classes": list}


class CheckpointError(ValueError):
    """A file that is not a loadable checkpoint of this project (corrupt, foreign, unsafe)."""


def save(obj, path: str | os.PathLike) -> None:
    """torch.save `obj` to `path` atomically."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load(path: str | os.PathLike, map_location="cpu"):
    """Load a checkpoint written by `save` (tensors to `map_location`, CPU by default).
    Only plain data is unpickled (weights_only=True); anything else raises CheckpointError
    before any of it is built."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a folder, or a FIFO that would block torch.load forever
        raise CheckpointError(f"{path} is not a regular file (a folder, FIFO or device), not a checkpoint")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refused an object: never build it
        raise CheckpointError(f"{path} holds objects a checkpoint never has; refused without running them "
                              f"({_unpickler_reason(err)})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as err:  # truncated, not a zip, ...
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err})") from None


def _unpickler_reason(err: Exception) -> str:
    """The weights-only unpickler's own reason, without torch's advice to load the file
    with weights_only=False (which would run whatever the file holds)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error" in line:
            rest = line.split("WeightsUnpickler error:", 1)[1].strip() or (lines[i + 1] if i + 1 < len(lines) else "")
            return rest or "an object outside the allow-list"
        if "unsupported GLOBAL" in line or "Unsupported global" in line:
            return line
    return "an object outside the allow-list"


def check_structure(ckpt, path, keys=TRAINING_KEYS) -> dict:
    """Raise CheckpointError unless `ckpt` is a dict with `keys` of the expected types and
    its weights are tensors by name; returns ckpt."""
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not a checkpoint written by alexnet.train (a {type(ckpt).__name__})")
    missing = [k for k in keys if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a checkpoint written by alexnet.train (no {', '.join(missing)})")
    for key, kind in keys.items():
        value = ckpt[key]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else \
            isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            raise CheckpointError(f"{path}: {key!r} is a {type(value).__name__}, expected {kind.__name__}")
    for key in ("model", "velocity"):
        if key in keys and not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt[key].items()):
            raise CheckpointError(f"{path}: {key!r} must map parameter names to tensors")
    if "classes" in keys and not all(isinstance(c, str) for c in ckpt["classes"]):
        raise CheckpointError(f"{path}: 'classes' must be a list of class names")
    return ckpt


def inference_device(device=None) -> torch.device:
    """`--device` as a torch.device (default: cuda if available, else cpu); ValueError, one
    line, for a string that is not a device or a CUDA device this process cannot use."""
    try:
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"--device {device!r} is not a device: use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device!r}: only cpu and cuda devices are supported")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: this torch sees no CUDA device (a CPU build, or no GPU visible): "
                         "use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return dev


def model_from_checkpoint(path, ops: str = "auto", device=None):
    """(model, checkpoint): the single-device model of a checkpoint written by alexnet.train
    (whatever layout trained it: checkpoints hold the single-device layout; alexnet/network/parallel.py
    full_state/local_state is the one place that converts between it and the columns' shares), in eval mode."""
    from dataclasses import fields

    from alexnet.network.config import AlexNetConfig
    from alexnet.network.model import AlexNet

    device = inference_device(device)
    ckpt = check_structure(load(path), path, {k: TRAINING_KEYS[k] for k in ("model", "model_config", "config",
                                                                           "classes", "step")})
    known = {f.name for f in fields(AlexNetConfig)}
    saved = {k: v for k, v in ckpt["model_config"].items() if k in known}
    try:
        config = AlexNetConfig(**{**saved, "ops": ops, "channels_last": None, "dropout_seed": 0})
        with torch.device("meta"):  # the shapes the config asks for, nothing allocated
            expected = {k: tuple(v.shape) for k, v in AlexNet(config).state_dict().items()}
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as err:  # an edited model_config
        raise CheckpointError(f"{path}: its model_config is not one alexnet.train writes ({type(err).__name__}: "
                              f"{err})") from None
    got = {k: tuple(v.shape) for k, v in ckpt["model"].items()}
    if got != expected:  # checked before building: a crafted config must not make us allocate its model
        missing, extra = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
        wrong = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra else
                  f"{wrong[0]} is {got[wrong[0]]}, its model_config asks for {expected[wrong[0]]}")
        raise CheckpointError(f"{path}: its weights do not fit its model_config ({detail}); not a checkpoint "
                              "alexnet.train wrote, or edited")
    model = AlexNet(config).to(device)
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def store_mismatch(ckpt: dict, store) -> str | None:
    """What makes `store` another store than the one the checkpoint was trained on, or None:
    other classes (its labels would name the wrong classes), another image size (the crops
    would be of other pixels), or, where the checkpoint recorded it, another fingerprint
    (other source or counts)."""
    if list(store.classes) != list(ckpt["classes"]):
        return (f"it has other classes than the checkpoint was trained on ({store.num_classes} vs "
                f"{len(ckpt['classes'])}; e.g. {store.classes[:2]} vs {ckpt['classes'][:2]})")
    size = ckpt.get("store_image_size")
    if size is not None and int(size) != store.image_size:
        return f"it holds {store.image_size} px images, the checkpoint was trained on a store of {int(size)} px"
    saved = ckpt.get("store")
    if saved is not None and saved != store.fingerprint:
        return (f"it is another store than the checkpoint was trained on (fingerprint {store.fingerprint}, the "
                f"checkpoint's {saved}: other source or image counts)")
    return None


def matching_store(ckpt: dict, data):
    """Open the store at `data`, refusing with one clear ValueError line a store that is not
    the one the checkpoint was trained on (`store_mismatch`)."""
    from alexnet.data.store import Store

    store = Store(data)
    why = store_mismatch(ckpt, store)
    if why is not None:
        raise ValueError(f"{data}: {why}: pass the store it was trained on")
    return store


def recorded_store(ckpt: dict) -> str | None:
    """The store a checkpoint was trained on, as recorded: the absolute path (checkpoints
    written since it was kept), else --data as given (relative to wherever training ran)."""
    path = ckpt.get("store_path")
    if path is not None and os.path.isdir(path):
        return path
    return None


def inference_info(store, image_size: int) -> dict:
    """What a checkpoint needs to classify an image file without its store
    (`python -m alexnet.predict`): the class names, the network's input size, the side the
    store's images were prepared at and their mean image. Tensors, lists, strings and numbers
    only, so `torch.load(..., weights_only=True)` reads it."""
    return {"classes": [str(c) for c in store.classes], "image_size": int(image_size),
            "store_image_size": int(store.image_size),
            "mean_image": torch.from_numpy(np.ascontiguousarray(store.mean, dtype=np.float32))}

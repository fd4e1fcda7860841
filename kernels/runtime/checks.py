"""Argument checks every launcher in `kernels/` shares, and the plain-PyTorch references too
(kernels/reference.py checks what the kernels check, minus the device). No Triton import here:
the references must load where Triton does not.

The kernels run on CUDA tensors, or on CPU tensors when Triton's interpreter is on
(``TRITON_INTERPRET=1``, which the test suite sets on machines without a GPU).
"""
from __future__ import annotations

import os

import torch

__all__ = ["FLOAT_DTYPES", "MAX_PIXELS", "interpreting", "check_tensor", "check_same_device", "pair",
           "check_pixel_count", "check_augment_args"]

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_tensor(x, name: str, *, ndim: int | None = None, dtypes=FLOAT_DTYPES, kernel_device: bool = True) -> None:
    """Raise a clear TypeError/ValueError unless `x` is a tensor a kernel can take. With
    kernel_device=False any CUDA or CPU tensor passes (the custom ops in ops.py pick the
    implementation by device)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    if dtypes is not None and x.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} has dtype {x.dtype}; supported: {allowed}")
    if not kernel_device:
        if x.device.type not in ("cuda", "cpu"):
            raise ValueError(f"{name} is on {x.device}: the ops run on CUDA or CPU tensors")
    elif interpreting():
        if x.device.type != "cpu":
            raise ValueError(f"{name} is on {x.device}, but TRITON_INTERPRET=1 runs kernels on the CPU")
    elif x.device.type != "cuda":
        raise ValueError(
            f"{name} is on {x.device}: the Triton kernels need a CUDA tensor "
            "(use kernels.reference for CPU tensors, or set TRITON_INTERPRET=1)"
        )


def check_same_device(*named) -> None:
    """Raise unless all (name, tensor) pairs live on one device."""
    (first_name, first), *rest = named
    for name, t in rest:
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}")


def pair(v, name: str) -> tuple[int, int]:
    """An int or a pair of ints as a (height, width) pair of positive ints."""
    if isinstance(v, int):
        v = (v, v)
    if len(v) != 2 or not all(isinstance(i, int) and i > 0 for i in v):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {v!r}")
    return int(v[0]), int(v[1])


# Pixel indices (N*H*W) are int32 in the kernels (cheap in the loops), and a block may run up to
# one block (at most 2**16 pixels) past the last pixel before its mask: leave room for one. The one
# bound for every kernel (the convolution's check_pixel_count in kernels/conv/common.py included).
MAX_PIXELS = 2**31 - 2**16


def check_pixel_count(x: torch.Tensor, name: str) -> None:
    """Refuse a 4-D (N, C, H, W) tensor of more than MAX_PIXELS pixels: int32 pixel indices
    would wrap and address memory outside it. (Checked from the shape: nothing is allocated.)"""
    n, _, h, w = x.shape
    if n * h * w > MAX_PIXELS:
        raise ValueError(f"{name} has {n} x {h} x {w} = {n * h * w:,} pixels; these kernels index pixels in int32 "
                         f"(at most {MAX_PIXELS:,}): split the batch")


def check_augment_args(images, offsets, flips, shift, mean, size: int, check_values: bool) -> None:
    """The checks the kernel and the reference share: shapes, dtypes, one device, and if
    check_values the offsets' range (a host sync for device tensors)."""
    if images.dim() != 4 or images.shape[3] != 3:
        raise ValueError(f"images must be (B, H, W, 3) uint8 NHWC, got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype}")
    batch, height, width, _ = images.shape
    if not isinstance(size, int) or not 0 < size <= min(height, width):
        raise ValueError(f"crop size must be an int in 1..{min(height, width)}, got {size!r}")
    expected = {"offsets": (offsets, (batch, 2)), "flips": (flips, (batch,)), "shift": (shift, (batch, 3)),
                "mean": (mean, (height, width, 3))}
    for name, (t, shape) in expected.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} for images of shape {tuple(images.shape)}, "
                             f"got {tuple(t.shape)}")
    if offsets.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"offsets must be int32 or int64 (top, left) pairs, got {offsets.dtype}")
    if flips.dtype not in (torch.bool, torch.uint8):
        raise TypeError(f"flips must be bool or uint8, got {flips.dtype}")
    if shift.dtype != torch.float32 or mean.dtype != torch.float32:
        raise TypeError(f"shift and mean must be float32, got {shift.dtype} and {mean.dtype}")
    check_same_device(("images", images), ("offsets", offsets), ("flips", flips), ("shift", shift), ("mean", mean))
    if check_values and batch > 0:
        top, left = offsets[:, 0], offsets[:, 1]
        if top.min() < 0 or left.min() < 0 or top.max() > height - size or left.max() > width - size:
            raise ValueError(f"crop offsets must lie in [0, {height - size}] x [0, {width - size}] for "
                             f"{size}x{size} crops of {height}x{width} images")

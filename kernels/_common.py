"""What every launcher in `kernels/` shares: input checks, memory formats, launch helpers.

The kernels run on CUDA tensors, or on CPU tensors when Triton's interpreter is on
(``TRITON_INTERPRET=1``, which the test suite sets on machines without a GPU).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

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


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format an output of a 4-D op on `x` should use: channels_last if `x`
    is laid out that way (and not also plain contiguous), else contiguous NCHW."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def empty_4d(shape, like: torch.Tensor, fmt: torch.memory_format, dtype=None) -> torch.Tensor:
    return torch.empty(shape, device=like.device, dtype=dtype or like.dtype, memory_format=fmt)


def as_format(t: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """`t` in memory format `fmt`, copying only when it is not already."""
    return t if t.is_contiguous(memory_format=fmt) else t.contiguous(memory_format=fmt)


def pair(v, name: str) -> tuple[int, int]:
    """An int or a pair of ints as a (height, width) pair of positive ints."""
    if isinstance(v, int):
        v = (v, v)
    if len(v) != 2 or not all(isinstance(i, int) and i > 0 for i in v):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {v!r}")
    return int(v[0]), int(v[1])


MAX_PIXELS = 2**31 - 1  # the kernels index pixels (N*H*W) in int32


def check_pixel_count(x: torch.Tensor, name: str) -> None:
    """Refuse a 4-D (N, C, H, W) tensor of 2**31 or more pixels: int32 pixel indices would
    wrap and address memory outside it. (Checked from the shape: nothing is allocated.)"""
    n, _, h, w = x.shape
    if n * h * w > MAX_PIXELS:
        raise ValueError(f"{name} has {n} x {h} x {w} = {n * h * w:,} pixels; these kernels index pixels in int32 "
                         f"(at most {MAX_PIXELS:,}): split the batch")


# --------------------------------------------------------------------------- launch helpers
def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@triton.jit
def pixel_offsets(pix, height, width, stride_n, stride_h, stride_w):
    """Element offsets (int64) of flattened pixel indices pix = (n * height + h) * width + w
    in a 4-D tensor with the given strides; works for NCHW, NHWC and any other strides."""
    n = pix // (height * width)
    rem = pix - n * (height * width)
    h = rem // width
    w = rem - h * width
    return n.to(tl.int64) * stride_n + h.to(tl.int64) * stride_h + w.to(tl.int64) * stride_w

"""Memory layouts and launch-grid arithmetic, with no Triton import: the public home of the
helpers that kernels/ and alexnet/ (parallel.py's collectives, optim.py's flat buffers) share.
"""
from __future__ import annotations

import torch

__all__ = ["memory_format", "as_format", "empty_4d", "is_dense", "cdiv"]


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format an output of a 4-D op on `x` should use: channels_last if `x`
    is laid out that way (and not also plain contiguous), else contiguous NCHW."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def channels_last_block(x: torch.Tensor) -> bool:
    """True if x is 4-D, channels_last or a block of a channels_last tensor: strides in NHWC
    order, channels adjacent, rows and images apart by at least their extent (gaps allowed).
    conv1's input as the augmentation hands it (kernels/conv/input_layout.py padded_view: the
    3-channel image inside a zero-padded 4-channel buffer) is one; its conv writes
    channels_last as for a dense channels_last input (`conv_out_format`)."""
    if x.dim() != 4 or x.shape[1] < 2:
        return memory_format(x) == torch.channels_last
    (_, c, h, w), (sn, sc, sh, sw) = x.shape, x.stride()
    return sc == 1 and sw >= c and sh >= sw * w and sn >= sh * h and not x.is_contiguous()


def conv_out_format(x: torch.Tensor) -> torch.memory_format:
    """`memory_format(x)`, and channels_last also for a block of a channels_last tensor."""
    return torch.channels_last if channels_last_block(x) else memory_format(x)


def empty_4d(shape, like: torch.Tensor, fmt: torch.memory_format = torch.contiguous_format, dtype=None) -> torch.Tensor:
    """An uninitialised tensor of `shape` on like's device, in like's dtype (or `dtype`) and format `fmt`."""
    return torch.empty(shape, device=like.device, dtype=dtype or like.dtype, memory_format=fmt)


def as_format(t: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """`t` in memory format `fmt`, copying only when it is not already."""
    return t if t.is_contiguous(memory_format=fmt) else t.contiguous(memory_format=fmt)


def is_dense(t: torch.Tensor) -> bool:
    """True if t's elements fill its storage span exactly (contiguous in some order)."""
    return t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last) or (
        t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d))


def cdiv(a: int, b: int) -> int:
    return -(-a // b)

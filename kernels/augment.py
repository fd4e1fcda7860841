"""Training-time augmentation in one pass: crop, flip, mean subtraction and PCA lighting
(paper sections 2 and 4.1), from uint8 images to the model's input.

    y[n, c, h, w] = x[n, top + h, col, c] - mean[top + h, col, c] + shift[n, c]
    col = left + (size - 1 - w if flip[n] else w),   (top, left) = offsets[n]

x is a uint8 batch (B, H, W, 3), NHWC as the store holds it (256x256 images in the paper);
mean is the float32 (H, W, 3) mean image, subtracted at the pixels the crop reads (the
paper subtracts it from the whole image, then crops); shift is the per-image RGB offset of
PCA lighting (B, 3), zero for evaluation. y is (B, 3, size, size) in the requested dtype,
contiguous NCHW or channels_last. The random draws are made elsewhere
(`alexnet.augment.draw`), so the kernel and its reference `kernels.reference.augment` can
be fed the same ones.

Each program writes BLOCK consecutive elements of one image's output in storage order
(coalesced stores, either layout) and reads the matching input bytes, which are contiguous
runs of the input row (reversed runs when flipped). Offsets outside [0, H - size] x
[0, W - size] raise when they are on the CPU; on the GPU checking them would cost a host
sync, so the kernel clamps them instead and can never read outside the image.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import check_augment_args
from ._common import FLOAT_DTYPES, cdiv, check_tensor
from .launch import augment_launch

__all__ = ["augment", "launch_augment"]


@triton.jit
def _augment_kernel(
    x_ptr, mean_ptr, offsets_ptr, flips_ptr, shift_ptr, y_ptr,
    height, width, max_top, max_left,
    SIZE: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr,
):
    """x (B, height, width, 3) uint8 and mean (height, width, 3) fp32, contiguous;
    offsets (B, 2) int32; flips (B,) uint8; shift (B, 3) fp32; y (B, 3, SIZE, SIZE) dense
    in NCHW or (CHANNELS_LAST) NHWC storage order. Grid: (cdiv(3 * SIZE * SIZE, BLOCK), B)."""
    n = tl.program_id(1)
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # element index in the image's output storage
    mask = e < 3 * SIZE * SIZE
    if CHANNELS_LAST:
        c = e % 3
        w = (e // 3) % SIZE
        h = e // (3 * SIZE)
    else:
        w = e % SIZE
        h = (e // SIZE) % SIZE
        c = e // (SIZE * SIZE)

    top = tl.minimum(tl.maximum(tl.load(offsets_ptr + 2 * n), 0), max_top)
    left = tl.minimum(tl.maximum(tl.load(offsets_ptr + 2 * n + 1), 0), max_left)
    flip = tl.load(flips_ptr + n) != 0
    col = left + tl.where(flip, SIZE - 1 - w, w)
    pix = ((top + h) * width + col) * 3 + c  # offset within one image (and in the mean image)

    x = tl.load(x_ptr + n.to(tl.int64) * (height * width * 3) + pix, mask=mask, other=0).to(tl.float32)
    m = tl.load(mean_ptr + pix, mask=mask, other=0.0)
    s = tl.load(shift_ptr + 3 * n + c, mask=mask, other=0.0)
    y = x - m + s
    tl.store(y_ptr + n.to(tl.int64) * (3 * SIZE * SIZE) + e, y.to(y_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------ launcher
def augment(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, shift: torch.Tensor,
            mean: torch.Tensor, size: int = 224, dtype: torch.dtype = torch.float32,
            channels_last: bool = False) -> torch.Tensor:
    """(B, 3, size, size) crops of uint8 NHWC `images` at per-image (top, left) `offsets`,
    horizontally flipped where `flips`, minus `mean` at the same pixels, plus `shift[n]`
    per image (see the module docstring). Output in `dtype`, channels_last if asked.
    Op alexnet_triton::augment (kernels/ops.py: the device picks Triton or the reference)."""
    _check(images, offsets, flips, shift, mean, size, dtype, kernel_device=False)
    return torch.ops.alexnet_triton.augment(images, offsets, flips, shift, mean, size, dtype, channels_last)


def _check(images, offsets, flips, shift, mean, size, dtype, kernel_device: bool) -> None:
    check_tensor(images, "images", ndim=4, dtypes=(torch.uint8,), kernel_device=kernel_device)
    check_augment_args(images, offsets, flips, shift, mean, size, check_values=offsets.device.type == "cpu")
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"output dtype must be one of {FLOAT_DTYPES}, got {dtype}")


def launch_augment(images, offsets, flips, shift, mean, size: int, dtype: torch.dtype,
                   channels_last: bool) -> torch.Tensor:
    """The Triton implementation of `augment`."""
    _check(images, offsets, flips, shift, mean, size, dtype, kernel_device=True)
    batch, height, width, _ = images.shape
    if batch > 65535:
        raise ValueError(f"batch {batch} is larger than the 65535 images one launch handles")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = torch.empty((batch, 3, size, size), dtype=dtype, device=images.device, memory_format=fmt)
    if batch == 0:
        return y
    images, mean, shift = images.contiguous(), mean.contiguous(), shift.contiguous()
    offsets = offsets.to(torch.int32).contiguous()
    flips = flips.contiguous().view(torch.uint8) if flips.dtype == torch.bool else flips.contiguous()
    launch = augment_launch()
    grid = (cdiv(3 * size * size, launch.block), batch)
    _augment_kernel[grid](images, mean, offsets, flips, shift, y, height, width, height - size, width - size,
                          SIZE=size, CHANNELS_LAST=channels_last, BLOCK=launch.block, num_warps=launch.num_warps)
    return y

"""Training-time augmentation in one pass: crop, flip, mean subtraction and PCA lighting
(paper sections 2 and 4.1), from uint8 images to the model's input.

    y[n, c, h, w] = x[n, top + h, col, c] - mean[top + h, col, c] + shift[n, c]
    col = left + (size - 1 - w if flip[n] else w),   (top, left) = offsets[n]

x is a uint8 batch (B, H, W, 3), NHWC as the store holds it (256x256 images in the paper);
mean is the float32 (H, W, 3) mean image, subtracted at the pixels the crop reads (the
paper subtracts it from the whole image, then crops); shift is the per-image RGB offset of
PCA lighting (B, 3), zero for evaluation. y is (B, 3, size, size) in the requested dtype,
contiguous NCHW or channels_last. The random draws are made elsewhere
(`alexnet.data.augment.draw`), so the kernel and its reference `kernels.reference.augment` can
be fed the same ones.

`augment_padded` writes the same crops, channels_last, into a zero-padded buffer instead:
conv1's input as kernels/conv/input_layout.py lays it out (224x224x3 inside 228x228x4 for the
paper's 11x11 stride-4 padding-2 conv1), the padding ring and the 4th channel written as zeros
by the same launch, so conv1 reads the buffer with no padding copy of its own
(alexnet/data/augment.py crop_batch hands the model `padded_view` of it).

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

from ._common import FLOAT_DTYPES, cdiv, check_tensor
from .runtime.checks import check_augment_args
from .runtime.fastlaunch import launch as fast_launch
from .runtime.launch_params import augment_launch

__all__ = ["augment", "augment_padded", "launch_augment", "launch_augment_padded"]


@triton.jit
def _augment_kernel(
    x_ptr, mean_ptr, offsets_ptr, flips_ptr, shift_ptr, y_ptr,
    height, width, max_top, max_left,
    SIZE: tl.constexpr, CHANNELS: tl.constexpr, OUT_H: tl.constexpr, OUT_W: tl.constexpr,
    PAD_H: tl.constexpr, PAD_W: tl.constexpr, PADDED: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr,
):
    """x (B, height, width, 3) uint8 and mean (height, width, 3) fp32, contiguous;
    offsets (B, 2) int32; flips (B,) uint8; shift (B, 3) fp32; y (B, CHANNELS, OUT_H, OUT_W)
    dense in NCHW or (CHANNELS_LAST) NHWC storage order. Not PADDED: CHANNELS = 3 and
    OUT_H = OUT_W = SIZE, y is the crop. PADDED: the crop at rows PAD_H.., columns PAD_W..,
    channels 0..2, and zeros everywhere else (conv1's padded image, written in this one
    pass). Grid: (cdiv(CHANNELS * OUT_H * OUT_W, BLOCK), B)."""
    n = tl.program_id(1)
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # element index in the image's output storage
    mask = e < CHANNELS * OUT_H * OUT_W
    if CHANNELS_LAST:
        c = e % CHANNELS
        w = (e // CHANNELS) % OUT_W
        h = e // (CHANNELS * OUT_W)
    else:
        w = e % OUT_W
        h = (e // OUT_W) % OUT_H
        c = e // (OUT_H * OUT_W)
    inside = mask
    if PADDED:  # the padding ring and channels past 3 read nothing: x, mean and shift load as 0
        h = h - PAD_H
        w = w - PAD_W
        inside = mask & (c < 3) & (h >= 0) & (h < SIZE) & (w >= 0) & (w < SIZE)

    top = tl.minimum(tl.maximum(tl.load(offsets_ptr + 2 * n), 0), max_top)
    left = tl.minimum(tl.maximum(tl.load(offsets_ptr + 2 * n + 1), 0), max_left)
    flip = tl.load(flips_ptr + n) != 0
    col = left + tl.where(flip, SIZE - 1 - w, w)
    pix = ((top + h) * width + col) * 3 + c  # offset within one image (and in the mean image)

    x = tl.load(x_ptr + n.to(tl.int64) * (height * width * 3) + pix, mask=inside, other=0).to(tl.float32)
    m = tl.load(mean_ptr + pix, mask=inside, other=0.0)
    s = tl.load(shift_ptr + 3 * n + c, mask=inside, other=0.0)
    y = x - m + s  # exactly 0 outside the crop
    tl.store(y_ptr + n.to(tl.int64) * (CHANNELS * OUT_H * OUT_W) + e, y.to(y_ptr.dtype.element_ty), mask=mask)


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


def augment_padded(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, shift: torch.Tensor,
                   mean: torch.Tensor, size: int, dtype: torch.dtype, pad: tuple[int, int],
                   padded_size: tuple[int, int], channels: int) -> torch.Tensor:
    """`augment`'s crops (channels_last) written into a new zero-padded buffer: a dense
    channels_last (B, channels, *padded_size) tensor holding the crop at [:, :3, pad_h:pad_h +
    size, pad_w:pad_w + size] and zeros everywhere else, made by the one launch (conv1's input
    as kernels/conv/input_layout.py `padded_image` lays it out; `padded_view` of it is the crop).
    Op alexnet_triton::augment_padded."""
    _check(images, offsets, flips, shift, mean, size, dtype, kernel_device=False)
    _check_padding(size, pad, padded_size, channels)
    return torch.ops.alexnet_triton.augment_padded(images, offsets, flips, shift, mean, size, dtype, list(pad),
                                                   list(padded_size), channels)


def _check(images, offsets, flips, shift, mean, size, dtype, kernel_device: bool) -> None:
    check_tensor(images, "images", ndim=4, dtypes=(torch.uint8,), kernel_device=kernel_device)
    check_augment_args(images, offsets, flips, shift, mean, size, check_values=offsets.device.type == "cpu")
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"output dtype must be one of {FLOAT_DTYPES}, got {dtype}")


def _check_padding(size, pad, padded_size, channels) -> None:
    """The crop must lie whole inside the buffer, with at least its 3 channels."""
    if len(pad) != 2 or len(padded_size) != 2 or not all(isinstance(v, int) for v in (*pad, *padded_size)):
        raise TypeError(f"pad and padded_size must be two ints each, got {pad!r} and {padded_size!r}")
    if not isinstance(channels, int) or channels < 3:
        raise ValueError(f"channels must be an int >= 3, got {channels!r}")
    for p, extent, name in zip(pad, padded_size, ("height", "width")):
        if p < 0 or p + size > extent:
            raise ValueError(f"a {size}-pixel crop at padding {p} does not fit the padded {name} {extent}")


def launch_augment(images, offsets, flips, shift, mean, size: int, dtype: torch.dtype,
                   channels_last: bool) -> torch.Tensor:
    """The Triton implementation of `augment`."""
    _check(images, offsets, flips, shift, mean, size, dtype, kernel_device=True)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = torch.empty((images.shape[0], 3, size, size), dtype=dtype, device=images.device, memory_format=fmt)
    return _launch(images, offsets, flips, shift, mean, size, y, (0, 0), padded=False, channels_last=channels_last)


def launch_augment_padded(images, offsets, flips, shift, mean, size: int, dtype: torch.dtype, pad, padded_size,
                          channels: int) -> torch.Tensor:
    """The Triton implementation of `augment_padded`: the padding and extra channels are
    zeros written by the same launch (no separate fill)."""
    _check(images, offsets, flips, shift, mean, size, dtype, kernel_device=True)
    _check_padding(size, pad, padded_size, channels)
    y = torch.empty((images.shape[0], channels, *padded_size), dtype=dtype, device=images.device,
                    memory_format=torch.channels_last)
    return _launch(images, offsets, flips, shift, mean, size, y, tuple(pad), padded=True, channels_last=True)


def _launch(images, offsets, flips, shift, mean, size, y, pad, padded: bool, channels_last: bool) -> torch.Tensor:
    """Run the kernel writing y (B, C, H', W'), dense NCHW or channels_last."""
    batch, height, width, _ = images.shape
    if batch > 65535:
        raise ValueError(f"batch {batch} is larger than the 65535 images one launch handles")
    if batch == 0:
        return y
    images, mean, shift = images.contiguous(), mean.contiguous(), shift.contiguous()
    offsets = offsets.to(torch.int32).contiguous()
    flips = flips.contiguous().view(torch.uint8) if flips.dtype == torch.bool else flips.contiguous()
    _, channels, out_h, out_w = y.shape
    launch = augment_launch()
    grid = (cdiv(channels * out_h * out_w, launch.block), batch)
    fast_launch(_augment_kernel, grid,
                (images, mean, offsets, flips, shift, y, height, width, height - size, width - size),
                dict(SIZE=size, CHANNELS=channels, OUT_H=out_h, OUT_W=out_w, PAD_H=pad[0], PAD_W=pad[1],
                     PADDED=padded, CHANNELS_LAST=channels_last, BLOCK=launch.block, num_warps=launch.num_warps))
    return y

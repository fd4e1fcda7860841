"""The paper's data augmentation (section 4.1) as random draws plus one kernel call.

Per training image, every time it is used:
  - a random 224x224 patch of the 256x256 image: (top, left) uniform in 0..32 each;
  - its horizontal reflection with probability 1/2;
  - PCA lighting: alpha_i ~ N(0, 0.1) and the RGB shift [p1 p2 p3] [alpha_1 s_1, alpha_2 s_2,
    alpha_3 s_3]^T added to every pixel, p_i the eigenvectors of the training set's RGB
    covariance. The paper writes s_i = lambda_i (the eigenvalue); with pixel values in 0..255
    that shift would be ~1400 levels for ImageNet (lambda_1 ~ 1.4e4), so we read it as
    s_i = sqrt(lambda_i), the standard deviation along p_i, as the authors' released
    cuda-convnet code does (its `color_stdevs`); 0.1 sigma is then ~12 levels.
The mean image is subtracted at the same time (section 2).

`draw` makes the random choices with torch's generator (pass one, or torch's default for
the device is used), so seeded runs repeat exactly, and the kernel never sees an RNG: tests
feed the same draws to the kernel and the reference. `crop_batch` calls the `augment` of the
ops the run chose (`ops`, the model's config.ops: the one rule, alexnet/network/layers.py load_ops):
"triton" the alexnet_triton op (the Triton kernel on CUDA tensors, the reference inside it on
CPU ones), "reference" the plain-PyTorch reference on any device. Given the model's conv1
(config.convs[0]) with "triton" ops and channels_last, the kernel writes conv1's zero-padded
input buffer and crop_batch returns the (B, 3, size, size) view of it: the same values, and
conv1 reads the buffer without padding a copy (`padded_input`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from alexnet.network.config import ConvSpec, uses_kernels
from alexnet.network.layers import load_ops
from kernels import ConvGeometry, augment_padded, padded_geometry, padded_view, takes_padded_image


@dataclass
class AugmentConfig:
    crop_size: int = 224       # section 4.1: 224x224 patches of the 256x256 images
    flip: bool = True          # and their horizontal reflections
    lighting_std: float = 0.1  # alpha_i ~ N(0, 0.1) (section 4.1); 0 turns PCA lighting off


@dataclass
class Draws:
    """One batch's random choices, all on one device."""
    offsets: torch.Tensor  # int32 (B, 2): (top, left) of each crop
    flips: torch.Tensor    # bool (B,)
    alphas: torch.Tensor   # float32 (B, 3): PCA lighting coefficients


def draw(batch: int, image_size: tuple[int, int], config: AugmentConfig = AugmentConfig(), device=None,
         generator: torch.Generator | None = None) -> Draws:
    """Random crop offsets (uniform over every valid position, 0..32 for 224 of 256), flips
    (p = 1/2 if config.flip) and lighting alphas (N(0, lighting_std)) for `batch` images,
    drawn from `generator` (default: torch's generator for `device`) and returned on `device`."""
    height, width = image_size
    size = config.crop_size
    if not 0 < size <= min(height, width):
        raise ValueError(f"crop size {size} does not fit {height}x{width} images")
    on = generator.device if generator is not None else torch.device(device or "cpu")
    device = torch.device(device) if device is not None else on
    top = torch.randint(0, height - size + 1, (batch,), device=on, generator=generator)
    left = torch.randint(0, width - size + 1, (batch,), device=on, generator=generator)
    flips = torch.rand(batch, device=on, generator=generator) < 0.5
    alphas = torch.randn(batch, 3, device=on, generator=generator) * config.lighting_std
    if not config.flip:
        flips = torch.zeros_like(flips)
    offsets = torch.stack([top, left], dim=1).to(torch.int32)
    return Draws(offsets.to(device, non_blocking=True), flips.to(device, non_blocking=True),
                 alphas.to(device, non_blocking=True))


def lighting_shift(alphas: torch.Tensor, eigenvalues: torch.Tensor, eigenvectors: torch.Tensor) -> torch.Tensor:
    """(B, 3) RGB shifts sum_i p_i * alpha_i * sqrt(lambda_i) (see the module docstring);
    eigenvectors (3, 3) hold p_i in column i."""
    return (alphas * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def crop_batch(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, shift: torch.Tensor,
               mean: torch.Tensor, size: int = 224, dtype: torch.dtype = torch.float32,
               channels_last: bool = False, ops: str = "auto", conv1: ConvSpec | None = None) -> torch.Tensor:
    """`load_ops(ops).augment`: kernels.augment for "triton", kernels.reference.augment for
    "reference" (see there for what it computes); "auto" as AlexNetConfig resolves it.

    With `conv1` (the model's first conv, config.convs[0]), "triton" ops and channels_last,
    where conv1 reads a zero-padded image (few input channels: kernels/conv/input_layout.py),
    the kernel writes its crops straight into that padded buffer (`padded_input`) and the
    result is the registered view of it: the same values and shape, and conv1's forward and
    weight gradient read the buffer with no copy of their own."""
    if conv1 is not None and channels_last and uses_kernels(ops):
        x = padded_input(images, offsets, flips, shift, mean, size, dtype, conv1)
        if x is not None:
            return x
    return load_ops(ops).augment(images, offsets, flips, shift, mean, size, dtype, channels_last)


def conv_input_geometry(conv: ConvSpec, batch: int, size: int, in_channels: int = 3) -> ConvGeometry:
    """The geometry of `conv` on a batch of (in_channels, size, size) images."""
    k, s, p = conv.kernel_size, conv.stride, conv.padding
    return ConvGeometry(batch, in_channels, size, size, conv.out_channels, k, k, s, s, p, p, conv.groups)


def padded_layout(conv1: ConvSpec, batch: int, size: int, dtype: torch.dtype):
    """(pad, padded_size, channels) of conv1's zero-padded input buffer for a batch of
    (3, size, size) crops in `dtype` (kernels/conv/input_layout.py padded_geometry), or None
    where conv1 does not read a padded image or the buffer would not hold the whole crop."""
    geom = conv_input_geometry(conv1, batch, size)
    if geom.out_h < 1 or geom.out_w < 1 or not takes_padded_image(geom):
        return None
    g = padded_geometry(geom, dtype.itemsize)
    pad = (geom.pad_h, geom.pad_w)
    if g.height < pad[0] + size or g.width < pad[1] + size:  # columns no window reaches are cut off
        return None
    return pad, (g.height, g.width), g.in_chan


def padded_input(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, shift: torch.Tensor,
                 mean: torch.Tensor, size: int, dtype: torch.dtype, conv1: ConvSpec) -> torch.Tensor | None:
    """The channels_last crops (B, 3, size, size) as the registered view of conv1's zero-padded
    input buffer (`padded_layout`, written whole by kernels.augment.augment_padded), or None
    where there is no such buffer (the caller then makes today's plain output)."""
    layout = padded_layout(conv1, images.shape[0], size, dtype)
    if layout is None:
        return None
    pad, padded_size, channels = layout
    buf = augment_padded(images, offsets, flips, shift, mean, size, dtype, pad, padded_size, channels)
    return padded_view(buf, 3, pad, (size, size))

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
ops the run chose (`ops`, the model's config.ops: the one rule, alexnet/layers.py load_ops):
"triton" the alexnet_triton op (the Triton kernel on CUDA tensors, the reference inside it on
CPU ones), "reference" the plain-PyTorch reference on any device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .layers import load_ops


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
               channels_last: bool = False, ops: str = "auto") -> torch.Tensor:
    """`load_ops(ops).augment`: kernels.augment for "triton", kernels.reference.augment for
    "reference" (see there for what it computes); "auto" as AlexNetConfig resolves it."""
    return load_ops(ops).augment(images, offsets, flips, shift, mean, size, dtype, channels_last)

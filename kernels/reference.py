"""Plain-PyTorch references for every kernel in this package.

Same names and arguments as the Triton ops in `kernels`. Tests use them (in float64) as the
oracle, benchmarks as the baseline's definition, and the model runs them on the CPU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_augment_args  # the checks the kernel makes, minus the device

__all__ = ["relu_lrn", "local_response_norm", "max_pool2d", "dropout", "conv2d", "sgd_step_", "augment"]


def local_response_norm(x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0,
                        groups: int = 1):
    """The paper's local response normalisation across channels, without the ReLU;
    see `relu_lrn`. groups > 1 normalises each block of C / groups channels on its own."""
    if groups > 1:
        return torch.cat([local_response_norm(part, size, alpha, beta, k)
                          for part in x.chunk(groups, dim=1)], dim=1)
    sq = x.square()
    n_chan = x.shape[1]
    # Zero-pad the channel dim so every window has `size` terms; out-of-range terms are 0.
    padded = F.pad(sq, (0, 0, 0, 0, size // 2, (size - 1) // 2))
    window = sum(padded[:, d : d + n_chan] for d in range(size))
    return x / (k + alpha * window).pow(beta)


def relu_lrn(x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0,
             groups: int = 1):
    """ReLU followed by the paper's local response normalisation (section 3.3):

        a = max(x, 0);  b[c] = a[c] / (k + alpha * sum_{j in window(c)} a[j]^2) ** beta

    window(c) = channels c - size//2 .. c + (size-1)//2 clipped to [0, C) (for the paper's
    odd n = 5 that is c-2..c+2). alpha multiplies the plain sum: PyTorch's
    F.local_response_norm and Caffe divide alpha by `size`, so the same function there is
    F.local_response_norm(F.relu(x), size, alpha=alpha * size, beta=beta, k=k).
    groups > 1 normalises each block of C / groups channels on its own (one GPU column's maps).
    """
    return local_response_norm(torch.relu(x), size, alpha, beta, k, groups)


def max_pool2d(x: torch.Tensor, kernel_size=3, stride=2, *, input_relu: bool = False):
    """Max-pooling without padding; the paper's overlapping pooling is 3x3 windows, stride 2.
    `input_relu` (where the Triton op applies a ReLU's gradient mask) changes nothing here."""
    return F.max_pool2d(x, kernel_size, stride)


def dropout(x: torch.Tensor, p: float = 0.5, training: bool = True, generator: torch.Generator | None = None):
    """Inverted dropout: keep each element with probability 1-p and scale it by 1/(1-p).

    Equivalent to the paper's "multiply outputs by 0.5 at test time" for p = 0.5. The mask
    comes from `generator` (default: torch's generator for x's device).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability p must be in [0, 1], got {p!r}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= p
    return x * keep / (1.0 - p)


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias=None, stride=1, padding=0, groups: int = 1, relu: bool = False,
           *, input_relu: bool = False, dy_masked: bool = False):
    """2-D convolution (cross-correlation), optionally followed by ReLU; dilation 1.
    `input_relu` / `dy_masked` (where the Triton op applies a ReLU's gradient mask, see
    kernels/ops.py) do not change the function or the gradients of a chain of convs: ignored."""
    y = F.conv2d(x, weight, bias, stride, padding, 1, groups)
    return torch.relu(y) if relu else y


def sgd_step_(weights, velocity, grads, lr, momentum: float = 0.9, weight_decay: float = 5e-4,
              n_decay: int | None = None, low_precision_out=None) -> None:
    """The paper's update in place (section 5): v <- m v - wd lr w - lr g; w <- w + v, with
    weight decay on elements [0, n_decay) only; optionally writes a low-precision copy of w."""
    n_decay = weights.numel() if n_decay is None else n_decay
    decay = torch.zeros_like(weights)
    decay[:n_decay] = weight_decay
    lr = lr.to(weights.dtype)
    velocity.mul_(momentum).sub_(decay * lr * weights).sub_(lr * grads.to(weights.dtype))
    weights.add_(velocity)
    if low_precision_out is not None:
        low_precision_out.copy_(weights)


def augment(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, shift: torch.Tensor,
            mean: torch.Tensor, size: int = 224, dtype: torch.dtype = torch.float32,
            channels_last: bool = False) -> torch.Tensor:
    """Crop, flip, subtract the mean image, add the lighting shift (kernels/augment.py):

        y[n, c, h, w] = x[n, top + h, col, c] - mean[top + h, col, c] + shift[n, c]
        col = left + (size - 1 - w if flip[n] else w),   (top, left) = offsets[n]

    images uint8 (B, H, W, 3); offsets (B, 2); flips (B,); shift (B, 3); mean (H, W, 3).
    Returns (B, 3, size, size) in `dtype` (float64 computes in float64, else float32),
    channels_last if asked. Offsets outside the image raise (on any device: this syncs)."""
    check_augment_args(images, offsets, flips, shift, mean, size, check_values=True)
    batch = images.shape[0]
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    steps = torch.arange(size, device=images.device)
    rows = offsets[:, 0, None].long() + steps                                         # (B, size)
    cols = offsets[:, 1, None].long() + torch.where(flips.bool()[:, None], size - 1 - steps, steps)
    r, c = rows[:, :, None], cols[:, None, :]                                         # (B, size, size)
    crop = images[torch.arange(batch, device=images.device)[:, None, None], r, c].to(compute)
    y = crop - mean.to(compute)[r, c] + shift.to(compute)[:, None, None, :]          # (B, size, size, 3)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return y.permute(0, 3, 1, 2).to(dtype).contiguous(memory_format=fmt)

"""Plain-PyTorch references for every kernel in this package.

Same names and arguments as the Triton ops in `kernels`. Tests use them (in float64) as the
oracle, benchmarks as the baseline's definition, and the model runs them on the CPU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .runtime.checks import check_augment_args  # the checks the kernel makes, minus the device

__all__ = ["relu_lrn", "local_response_norm", "max_pool2d", "dropout", "column_dropout", "softmax_cross_entropy",
           "conv2d", "sgd_step_", "augment"]


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


def max_pool2d(x: torch.Tensor, kernel_size=3, stride=2, *, input_relu: bool = False, contiguous_out: bool = False):
    """Max-pooling without padding; the paper's overlapping pooling is 3x3 windows, stride 2.
    `input_relu` (where the Triton op applies a ReLU's gradient mask) changes nothing here;
    `contiguous_out` asks for the output in NCHW order."""
    y = F.max_pool2d(x, kernel_size, stride)
    return y.contiguous() if contiguous_out else y


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


# Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", 2011), as Triton's
# tl.philox: uint32 words held in int64 tensors, so the arithmetic never overflows.
_ROUND_A, _ROUND_B, _KEY_A, _KEY_B, _U32 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85, 0xFFFFFFFF


def _mul_hi_lo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of a * b for a 32-bit constant a and uint32 words b, in int64:
    a is split in 16-bit halves so each partial product stays below 2**48."""
    low_part, high_part = (a & 0xFFFF) * b, (a >> 16) * b
    hi = (high_part + (low_part >> 16)) >> 16
    lo = ((high_part & 0xFFFF) * 65536 + low_part) & _U32
    return hi, lo


def philox(key: torch.Tensor, c0, c1, c2, c3, rounds: int = 10):
    """Four uint32 words (as int64) of Philox4x32 for counters (c0, c1, c2, c3) and the
    int64 key (low word, high word), bit-identical to Triton's tl.philox(key, c0, c1, c2, c3)."""
    k0, k1 = key & _U32, (key >> 32) & _U32
    for _ in range(rounds):
        hi_b, lo_b = _mul_hi_lo(_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _U32, (k1 + _KEY_B) & _U32
    return c0, c1, c2, c3


def column_dropout(x: torch.Tensor, seeds: torch.Tensor, call: torch.Tensor, p: float, relu: bool = False):
    """Dropout of x (B, columns * F), column c's (B, F) block drawn from its own stream, and the
    next call index: (y, call + 1). The mask is kernels/dropout.py's, bit for bit: element i
    of a column's block (row-major) is kept when 16-bit draw i % 8 of Philox(key seeds[c],
    counter (i // 8, call)) is at least round(p * 2**16) (the draws in the kernel's order:
    low halves of words 0, 2, 1, 3, then their high halves). A pure function of (seeds,
    call, shape, p) with no host read, so torch.compile traces it. `relu`: of relu(x)."""
    if relu:
        x = torch.relu(x)
    n_rows, columns = x.shape[0], seeds.numel()
    width = x.shape[1] // columns
    groups = -(-n_rows * width // 8)
    counter = torch.arange(groups, device=x.device, dtype=torch.int64)
    words = philox(seeds.view(columns, 1), counter & _U32, counter >> 32, call & _U32, (call >> 32) & _U32)
    w0, w1, w2, w3 = (w.expand(columns, groups) for w in words)
    ordered = torch.stack([w0, w2, w1, w3], dim=-1)                                     # (columns, groups, 4)
    draws = torch.cat([ordered & 0xFFFF, ordered >> 16], dim=-1).flatten(1)[:, :n_rows * width]
    keep = (draws >= round(p * 2**16)).view(columns, n_rows, width).permute(1, 0, 2).reshape(x.shape)
    scale = torch.where(keep, 1.0 / (1.0 - p), 0.0)  # float32, as the kernel's; x * 0 keeps NaN/inf NaN
    return (x.to(torch.promote_types(x.dtype, torch.float32)) * scale).to(x.dtype), call + 1


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, finite: torch.Tensor | None = None):
    """(loss, dlogits, wrong) as kernels.cross_entropy computes them: the mean of
    F.cross_entropy in (at least) fp32, its gradient (softmax - onehot) / B in the logits' dtype,
    the count of rows whose argmax is not the label; `finite` and-ed in place with
    isfinite(loss). A label outside [0, C) makes its row's loss and gradient NaN."""
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    n_rows, n_classes = x.shape
    ok = (labels >= 0) & (labels < n_classes)
    safe = torch.where(ok, labels, 0)
    logp = torch.log_softmax(x, 1)
    rows = torch.where(ok, -logp.gather(1, safe[:, None]).squeeze(1), float("nan"))
    loss = rows.mean()
    grad = (logp.exp() - F.one_hot(safe, n_classes).to(x.dtype)) / n_rows
    grad = torch.where(ok[:, None], grad, float("nan")).to(logits.dtype)
    wrong = (x.argmax(1) != labels).sum() if n_rows else torch.zeros((), dtype=torch.int64, device=x.device)
    if finite is not None:
        finite &= torch.isfinite(loss)
    return loss, grad, wrong


def relu_mask(grad: torch.Tensor, relu_out: torch.Tensor) -> torch.Tensor:
    """grad where relu_out > 0, else 0: torch's threshold_backward (a NaN relu_out passes grad)."""
    return torch.where(relu_out <= 0, 0, grad)


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias=None, stride=1, padding=0, groups: int = 1, relu: bool = False,
           *, input_relu: bool = False, dy_masked: bool = False):
    """2-D convolution (cross-correlation), optionally followed by ReLU; dilation 1.
    `input_relu` / `dy_masked` (where the Triton op applies a ReLU's gradient mask, see
    kernels/conv/op.py) do not change the function or the gradients of a chain of convs: ignored."""
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


def augment_padded(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, shift: torch.Tensor,
                   mean: torch.Tensor, size: int, dtype: torch.dtype, pad, padded_size, channels: int) -> torch.Tensor:
    """`augment`'s crops in a new zero-filled channels_last (B, channels, *padded_size)
    buffer at [:, :3, pad_h:pad_h + size, pad_w:pad_w + size] (kernels/augment.py
    augment_padded: conv1's padded input)."""
    (ph, pw), (height, width) = pad, padded_size
    y = augment(images, offsets, flips, shift, mean, size, dtype, channels_last=True)
    buf = torch.zeros((images.shape[0], height, width, channels), dtype=dtype, device=images.device)
    buf = buf.permute(0, 3, 1, 2)  # channels_last storage
    buf[:, :3, ph:ph + size, pw:pw + size] = y
    return buf

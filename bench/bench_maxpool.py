"""Overlapping 3x3/2 max-pool vs F.max_pool2d (cuDNN) at the AlexNet shapes, batch 128.
Memory floor: forward reads x and writes y; backward reads dy and writes dx. Ours also
writes/reads a one-byte window index per output (PyTorch keeps an int64 index)."""
import pytest
import torch
import torch.nn.functional as F

from bench.harness import compare
from kernels.maxpool import max_pool2d_backward, max_pool2d_forward

SHAPES = {"layer1": (128, 96, 55, 55), "layer2": (128, 256, 27, 27), "layer5": (128, 256, 13, 13)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
FORMATS = {"nhwc": torch.channels_last, "nchw": torch.contiguous_format}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer", SHAPES)
@pytest.mark.parametrize("pass_", ["fwd", "bwd"])
def test_max_pool(benchmark, copy_bandwidth, layer, dtype, fmt, pass_):
    dt, mf = DTYPES[dtype], FORMATS[fmt]
    x = torch.randn(SHAPES[layer], device="cuda").to(dt).contiguous(memory_format=mf)
    y, idx = max_pool2d_forward(x)
    nbytes = (x.numel() + y.numel()) * x.element_size()
    name = f"max_pool {pass_} {layer} {dtype} {fmt}"
    if pass_ == "fwd":
        xg = x.detach().requires_grad_()  # PyTorch computes indices when a grad is needed
        compare(benchmark, name, lambda: max_pool2d_forward(x), lambda: F.max_pool2d(xg, 3, 2),
                nbytes=nbytes, bandwidth=copy_bandwidth)
    else:
        dy = torch.randn_like(y)
        xg = x.detach().requires_grad_()
        yg = F.max_pool2d(xg, 3, 2)
        fmt_x = torch.channels_last if mf == torch.channels_last else torch.contiguous_format
        compare(benchmark, name, lambda: max_pool2d_backward(dy, idx, x.shape, fmt_x),
                lambda: torch.autograd.grad(yg, xg, dy, retain_graph=True), nbytes=nbytes, bandwidth=copy_bandwidth)

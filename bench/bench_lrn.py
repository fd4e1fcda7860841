"""Fused ReLU + LRN vs eager PyTorch (F.relu + F.local_response_norm with alpha*n) at the
AlexNet shapes, batch 128. Memory floor: forward reads x and writes y; backward reads x and
dy and writes dx (each once), over the copy bandwidth measured in the same run. Our
training forward also writes u = y/s for the backward, and our backward reads it.
Our backward is timed through its launcher; PyTorch's through autograd.grad."""
import pytest
import torch
import torch.nn.functional as F

from bench.harness import compare
from kernels.lrn import relu_lrn_backward, relu_lrn_forward

SHAPES = {"layer1": (128, 96, 55, 55), "layer2": (128, 256, 27, 27)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
FORMATS = {"nhwc": torch.channels_last, "nchw": torch.contiguous_format}


def _eager(x):
    return F.local_response_norm(F.relu(x), 5, alpha=5e-4, beta=0.75, k=2.0)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer", SHAPES)
@pytest.mark.parametrize("pass_", ["fwd", "fwd_train", "bwd"])
def test_relu_lrn(benchmark, copy_bandwidth, layer, dtype, fmt, pass_):
    shape, dt, mf = SHAPES[layer], DTYPES[dtype], FORMATS[fmt]
    x = (torch.randn(shape, device="cuda") * 20).to(dt).contiguous(memory_format=mf)
    tensor_bytes = x.numel() * x.element_size()
    name = f"relu_lrn {pass_} {layer} {dtype} {fmt}"
    if pass_ in ("fwd", "fwd_train"):
        save_u = pass_ == "fwd_train"
        xg = x.detach().requires_grad_(save_u)
        ours = lambda: relu_lrn_forward(x, save_u=save_u)  # noqa: E731
        base = lambda: _eager(xg)  # noqa: E731
        compare(benchmark, name, ours, base, nbytes=2 * tensor_bytes, bandwidth=copy_bandwidth)
    else:
        _, u = relu_lrn_forward(x, save_u=True)
        dy = torch.randn_like(x)
        xg = x.detach().requires_grad_()
        y = _eager(xg)
        ours = lambda: relu_lrn_backward(dy, x, u)  # noqa: E731
        base = lambda: torch.autograd.grad(y, xg, dy, retain_graph=True)  # noqa: E731
        compare(benchmark, name, ours, base, nbytes=3 * tensor_bytes, bandwidth=copy_bandwidth)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer1_relu_lrn_pool_fwd_bwd(benchmark, copy_bandwidth, dtype):
    """ReLU + LRN + max-pool of layer 1, forward and backward, the way training runs them."""
    import kernels
    dt = DTYPES[dtype]
    x = (torch.randn(SHAPES["layer1"], device="cuda") * 20).to(dt).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    dy = torch.randn(128, 96, 27, 27, device="cuda", dtype=dt).contiguous(memory_format=torch.channels_last)

    def ours():
        return torch.autograd.grad(kernels.max_pool2d(kernels.relu_lrn(x)), x, dy)

    def base():
        return torch.autograd.grad(F.max_pool2d(_eager(x), 3, 2), x, dy)

    # floor: read x, write pooled y (fwd); read x and dy, write dx (bwd)
    nbytes = (3 * x.numel() + 2 * dy.numel()) * x.element_size()
    compare(benchmark, f"relu_lrn+pool fwd+bwd layer1 {dtype} nhwc", ours, base, nbytes=nbytes,
            bandwidth=copy_bandwidth)

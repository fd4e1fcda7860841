"""Convolution forward, dgrad and wgrad vs cuDNN at every AlexNet layer, batch 128, channels_last.

Ours: the autotuned Triton kernels (kernels/conv_*.py), called through their launchers (no
autograd). cuDNN: F.conv2d and torch.ops.aten.convolution_backward with the pass's
output_mask (dgrad: [True, False, False]; wgrad: [False, True, True], bias grad included as
ours), cudnn.benchmark on. bf16, and fp32 with tf32 tensor cores (cudnn.allow_tf32) for both.
FLOPs = 2 * N*OH*OW * K * (C/g)*KH*KW per pass. Layer shapes: bench/conv_layers.py.
"""
import pytest
import torch

from bench.conv_layers import DTYPES, LAYERS, ConvProblem, passes_for
from bench.harness import compare

CASES = [(shapes, layer, dtype, pass_) for shapes in LAYERS for layer in LAYERS[shapes] for dtype in DTYPES
         for pass_ in passes_for(layer)]


@pytest.fixture(autouse=True)
def _cudnn_settings():
    old = torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.benchmark = torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = old


_PROBLEMS = {}


def _problem(shapes, layer, dtype):
    """One set of inputs per (shapes, layer, dtype), kept for its three passes."""
    key = (shapes, layer, dtype)
    if key not in _PROBLEMS:
        _PROBLEMS.clear()  # conv1 at batch 128 holds ~0.5 GB: keep one problem alive
        _PROBLEMS[key] = ConvProblem(LAYERS[shapes][layer], DTYPES[dtype])
    return _PROBLEMS[key]


@pytest.mark.parametrize("shapes, layer, dtype, pass_", CASES, ids=["-".join(c) for c in CASES])
def test_conv(benchmark, shapes, layer, dtype, pass_):
    p = _problem(shapes, layer, dtype)
    compare(benchmark, f"conv {pass_} {layer} {shapes} {dtype}", p.ours(pass_), p.cudnn(pass_),
            flops=p.flops, baseline_name="cudnn")

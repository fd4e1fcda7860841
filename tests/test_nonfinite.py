"""The convolution follows PyTorch (float64, explicit zero padding) on non-finite values in
every operand and at every position, the windows that cover padding included (issue 26):
NaN and inf land on the same outputs, with the same signs, and the finite ones agree.

Known deviation, kept as a strict xfail: with a non-finite *weight*, dgrad gives NaN where a
window of the transposed convolution covers dy's padding (the masked zeros times inf), where
PyTorch's input gradient has no term at all. Matching it needs the GEMM to skip masked taps
(or a host sync to find non-finite weights); a run with non-finite weights has already been
stopped by the training guard (README, Reliability)."""
import pytest
import torch
import torch.nn.functional as F
from compare import assert_close_verbose
from helpers import DEVICE, EXAMPLES, TOLERANCES
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels

OPS = torch.ops.alexnet_triton
SPECIAL = st.sampled_from([float("nan"), float("inf"), float("-inf")])


@st.composite
def problems(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return dict(n=draw(st.integers(1, 2)), c=draw(st.integers(1, 4)), k=draw(st.integers(1, 4)), kh=kh, kw=kw,
                h=draw(st.integers(kh, 6)), w=draw(st.integers(kw, 6)),
                stride=(draw(st.integers(1, 2)), draw(st.integers(1, 2))),
                padding=(draw(st.integers(0, kh // 2 + 1)), draw(st.integers(0, kw // 2 + 1))))


def _close(actual, expected):
    atol, rtol = TOLERANCES[torch.float32]
    finite = expected[expected.isfinite()]
    scale = float(finite.abs().max()) if finite.numel() else 1.0
    assert_close_verbose(actual, expected, atol=atol * max(scale, 1.0), rtol=rtol, equal_nan=True,
                         reason="fp32 conv vs float64: NaN and inf at the same places, finite values close")


def _tensors(p, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(p["n"], p["c"], p["h"], p["w"], generator=g)
    weight = torch.randn(p["k"], p["c"], p["kh"], p["kw"], generator=g)
    bias = torch.randn(p["k"], generator=g)
    oh = (p["h"] + 2 * p["padding"][0] - p["kh"]) // p["stride"][0] + 1
    ow = (p["w"] + 2 * p["padding"][1] - p["kw"]) // p["stride"][1] + 1
    dy = torch.randn(p["n"], p["k"], oh, ow, generator=g)
    return dict(x=x, weight=weight, bias=bias, dy=dy)


def _poke(t, where, value):
    flat = t.view(-1)
    flat[where % flat.numel()] = value


@settings(max_examples=2 * EXAMPLES)
@given(p=problems(), operand=st.sampled_from(["x", "bias", "dy"]), value=SPECIAL,
       where=st.integers(0, 10_000), corner=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_forward_and_gradients_follow_torch(p, operand, value, where, corner, seed):
    t = _tensors(p, seed)
    _poke(t[operand], 0 if corner else where, value)  # index 0: the top-left corner, next to the padding
    x, weight, bias, dy = (t[k].to(DEVICE) for k in ("x", "weight", "bias", "dy"))
    stride, padding = p["stride"], p["padding"]
    y = kernels.conv2d(x, weight, bias, stride, padding)
    _close(y, F.conv2d(x.double(), weight.double(), bias.double(), stride, padding))
    dx = OPS.conv2d_input_grad(dy, weight, None, list(x.shape), list(stride), list(padding), 1, False)
    dw, db = OPS.conv2d_weight_grad(dy, x, weight, None, list(stride), list(padding), 1, True, True)
    edx, edw, edb = torch.ops.aten.convolution_backward(dy.double(), x.double(), weight.double(), [p["k"]],
                                                        list(stride), list(padding), [1, 1], False, [0, 0], 1,
                                                        [True, True, True])
    _close(dx, edx)
    _close(dw, edw)
    _close(db, edb)


@settings(max_examples=EXAMPLES)
@given(p=problems(), value=SPECIAL, where=st.integers(0, 10_000), seed=st.integers(0, 2**31 - 1))
def test_forward_with_a_non_finite_weight_follows_torch(p, value, where, seed):
    t = _tensors(p, seed)
    _poke(t["weight"], where, value)
    x, weight, bias = (t[k].to(DEVICE) for k in ("x", "weight", "bias"))
    y = kernels.conv2d(x, weight, bias, p["stride"], p["padding"])
    _close(y, F.conv2d(x.double(), weight.double(), bias.double(), p["stride"], p["padding"]))


@pytest.mark.xfail(strict=True, reason="dgrad with a non-finite weight: NaN where PyTorch has no term (module doc)")
def test_dgrad_with_a_non_finite_weight_follows_torch():
    p = dict(n=1, c=2, k=2, kh=3, kw=3, h=5, w=5, stride=(1, 1), padding=(1, 1))
    t = _tensors(p, 0)
    t["weight"][1, 0, 0, 0] = float("inf")
    dy, weight = t["dy"].to(DEVICE), t["weight"].to(DEVICE)
    dx = OPS.conv2d_input_grad(dy, weight, None, [1, 2, 5, 5], [1, 1], [1, 1], 1, False)
    edx = torch.nn.grad.conv2d_input((1, 2, 5, 5), weight.double(), dy.double(), 1, 1)
    _close(dx, edx)

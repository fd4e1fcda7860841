"""conv1's space-to-depth rewrite (kernels/conv/input_layout.py): a strided conv with few input
channels as a stride-1 conv of a map of SHxSW pixel blocks. The regrouping itself in float64
(pure PyTorch, any geometry the rewrite takes), then the kernels on conv1's shape scaled down,
including the non-finite inputs that the weight's zero-padded taps must not turn into NaN."""
import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICE, EXAMPLES, TOLERANCES
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels
from kernels import reference
from kernels.conv.common import ConvGeometry, conv_geometry
from kernels.conv.input_layout import (
    pad_input,
    space_to_depth_geometry,
    space_to_depth_input,
    space_to_depth_weight,
    space_to_depth_weight_grad,
    unpad_weight_grad,
)

CONV1 = ConvGeometry(128, 3, 224, 224, 96, 11, 11, 4, 4, 2, 2, 1)


def test_conv1_becomes_a_3x3_conv_of_a_64_channel_map():
    s2d = space_to_depth_geometry(CONV1)
    assert (s2d.in_chan, s2d.height, s2d.width, s2d.kernel_h, s2d.kernel_w) == (64, 57, 57, 3, 3)
    assert (s2d.stride_h, s2d.pad_h, s2d.out_h, s2d.out_w) == (1, 0, 55, 55)
    assert s2d.s2d_edge == (4, 4, 4, 3, 3)  # last tap row/column: 3 of 4 sub-rows/columns are real
    # stride 1, many channels or groups keep their geometry
    for geom in (ConvGeometry(2, 3, 9, 9, 4, 3, 3, 1, 1, 1, 1, 1), ConvGeometry(2, 32, 9, 9, 4, 3, 3, 2, 2, 1, 1, 1),
                 ConvGeometry(2, 4, 9, 9, 4, 3, 3, 2, 2, 1, 1, 2)):
        assert space_to_depth_geometry(geom) is None


@st.composite
def strided_problems(draw):
    chan = draw(st.integers(1, 8))
    sh, sw = draw(st.integers(1, 4)), draw(st.integers(2, 4))
    kh, kw = draw(st.integers(1, 11)), draw(st.integers(1, 11))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    h = draw(st.integers(max(1, kh - 2 * ph), kh - 2 * ph + 9))
    w = draw(st.integers(max(1, kw - 2 * pw), kw - 2 * pw + 9))
    return ConvGeometry(draw(st.integers(1, 2)), chan, h, w, draw(st.integers(1, 4)), kh, kw, sh, sw, ph, pw, 1)


@settings(max_examples=4 * EXAMPLES, deadline=None)
@given(geom=strided_problems(), seed=st.integers(0, 2**31 - 1))
def test_regrouping_is_exact(geom, seed):
    """conv(map, regrouped weight) == the strided conv, and folding back a map-weight gradient
    is the adjoint of the weight's regrouping (float64, PyTorch's conv)."""
    s2d = space_to_depth_geometry(geom)
    if s2d is None:
        return
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(geom.input_shape, generator=g, dtype=torch.float64)
    w = torch.randn(geom.weight_shape, generator=g, dtype=torch.float64, requires_grad=True)
    xm, wm = space_to_depth_input(x, geom, s2d), space_to_depth_weight(w, geom, s2d)
    assert tuple(xm.shape) == s2d.input_shape and xm.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(F.conv2d(xm, wm), F.conv2d(x, w, None, (geom.stride_h, geom.stride_w),
                                                          (geom.pad_h, geom.pad_w)))
    dwm = torch.randn(wm.shape, generator=g, dtype=torch.float64)
    (wm * dwm).sum().backward()
    torch.testing.assert_close(space_to_depth_weight_grad(dwm, geom), w.grad)


SMALL_CONV1 = (2, 3, 27, 23, 5, 11, 11, 4, 2)  # n, C, H, W, K, kernel, kernel, stride, padding


def _small_conv1(seed):
    n, c, h, w, k, kh, kw, stride, pad = SMALL_CONV1
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    weight = torch.randn(k, c, kh, kw, generator=g) / (c * kh * kw) ** 0.5
    return x, weight, torch.randn(k, generator=g), stride, pad


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_conv1_shape_through_the_map(fmt):
    """kernels.conv2d forward, weight and bias gradients on conv1's geometry (11x11, stride 4,
    padding 2, 3 channels) against float64: the map path, folded back to the caller's weight."""
    x, weight, b, stride, pad = _small_conv1(3)
    x = x.to(DEVICE).contiguous(memory_format=fmt)
    geom = conv_geometry(x, weight, b, stride, pad)
    assert pad_input(x, weight, geom)[2].s2d_edge  # the map path is the one under test
    w_, b_ = weight.clone().to(DEVICE).requires_grad_(), b.clone().to(DEVICE).requires_grad_()
    y = kernels.conv2d(x, w_, b_, stride, pad, relu=True)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    y.backward(dy)
    w64, b64 = weight.double().requires_grad_(), b.double().requires_grad_()
    y64 = reference.conv2d(x.double().cpu(), w64, b64, stride, pad, relu=True)
    y64.backward(dy.double().cpu())
    atol, rtol = TOLERANCES[torch.float32]
    for ours, ref in [(y, y64.detach()), (w_.grad, w64.grad), (b_.grad, b64.grad)]:
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours.double().cpu(), ref, atol=atol * float(ref.abs().max()), rtol=rtol)
    assert unpad_weight_grad(w_.grad, geom, torch.contiguous_format) is w_.grad  # already the caller's shape


@pytest.mark.parametrize("row, col", [(0, 0), (6, 9), (26, 22), (13, 1)])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite_pixels_reach_the_outputs_pytorch_reaches(row, col, value):
    """A non-finite pixel spreads to exactly the outputs whose 11x11 window holds it: the
    map's 12x12 windows also cover it with zero weights, which the forward masks (0 * inf
    would be NaN one output row or column further)."""
    x, weight, b, stride, pad = _small_conv1(5)
    x[1, 2, row, col] = value
    y = kernels.conv2d(x.to(DEVICE), weight.to(DEVICE), b.to(DEVICE), stride, pad).double().cpu()
    ref = reference.conv2d(x.double(), weight.double(), b.double(), stride, pad)
    assert torch.equal(y.isnan(), ref.isnan()) and torch.equal(y.isinf(), ref.isinf())
    assert not ref.isfinite().all()
    finite = ref.isfinite()
    torch.testing.assert_close(y[finite], ref[finite], atol=1e-5 * float(ref[finite].abs().max()), rtol=1e-5)

"""conv1's input layout (kernels/conv/input_layout.py): few-channel images read from a
zero-padded buffer (channels to a whole 8-byte word, the spatial padding written in), the
weight gradient reading that buffer as SW-pixel column blocks, and buffers the caller
registers (`padded_view`) read without a copy. The regrouping in float64 (pure PyTorch, any
geometry), then the kernels on conv1's shape scaled down."""
import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICE, EXAMPLES, TOLERANCES, assert_close_verbose
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels
from kernels import reference
from kernels.conv.common import ConvGeometry, conv_geometry
from kernels.conv.input_layout import (
    clone_padded,
    fold_wgrad_view,
    folded_wgrad_buffer,
    pad_input,
    padded_image,
    padded_view,
    refill_padded,
    unpad_weight_grad,
    wgrad_view,
)

CONV1 = ConvGeometry(2, 3, 224, 224, 96, 11, 11, 4, 4, 2, 2, 1)


def test_conv1_runs_unpadded_on_a_228x228x4_image():
    x, w = torch.randn(CONV1.input_shape, dtype=torch.bfloat16), torch.randn(CONV1.weight_shape, dtype=torch.bfloat16)
    x_k, w_k, g = pad_input(x, w, CONV1)
    assert tuple(x_k.shape) == (2, 4, 228, 228) and x_k.is_contiguous(memory_format=torch.channels_last)
    assert (g.pad_h, g.pad_w, g.out_h, g.out_w, tuple(w_k.shape)) == (0, 0, 55, 55, (96, 4, 11, 11))
    x_w, g_w = wgrad_view(x_k, g)
    assert x_w.data_ptr() == x_k.data_ptr() and tuple(x_w.shape) == (2, 16, 228, 57)  # a view, no copy
    assert (g_w.kernel_h, g_w.kernel_w, g_w.stride_h, g_w.stride_w, g_w.out_w) == (11, 3, 4, 1, 55)


@st.composite
def few_channel_problems(draw):
    kh, kw = draw(st.integers(1, 11)), draw(st.integers(1, 11))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    h = draw(st.integers(max(1, kh - 2 * ph), kh - 2 * ph + 9))
    w = draw(st.integers(max(1, kw - 2 * pw), kw - 2 * pw + 9))
    return ConvGeometry(draw(st.integers(1, 2)), draw(st.integers(1, 8)), h, w, draw(st.integers(1, 4)), kh, kw,
                        draw(st.integers(1, 4)), draw(st.integers(1, 4)), ph, pw, 1)


@settings(max_examples=4 * EXAMPLES, deadline=None)
@given(geom=few_channel_problems(), seed=st.integers(0, 2**31 - 1),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_regrouping_is_exact(geom, seed, dtype):
    """conv(padded image, padded weight) == the padded conv, and the weight gradient through
    `wgrad_view` folded back == PyTorch's (the layouts of fp32, 2 channels per 8-byte word, and
    bf16, 4; the convolutions themselves in float64)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(geom.input_shape, generator=g).to(dtype)
    w = torch.randn(geom.weight_shape, generator=g).to(dtype)
    stride, padding = (geom.stride_h, geom.stride_w), (geom.pad_h, geom.pad_w)
    x_k, w_k, g_k = pad_input(x, w, geom)
    assert (g_k.pad_h, g_k.pad_w, g_k.out_h, g_k.out_w) == (0, 0, geom.out_h, geom.out_w)
    assert (x_k.shape[1] * x.element_size()) % 8 == 0 and x_k.is_contiguous(memory_format=torch.channels_last)
    x64, w64 = x.double(), w.double()
    assert_close_verbose(F.conv2d(x_k.double(), w_k.double(), None, stride), F.conv2d(x64, w64, None, stride, padding),
                         rtol=1e-7, atol=1e-7, check_dtype=True,
                         reason="float64 convolutions of the same values, the zeros in other places (torch's defaults)")
    view = wgrad_view(x_k, g_k)
    if view is None:
        assert geom.stride_w == 1
        return
    x_v, g_v = view
    assert x_v.data_ptr() == x_k.data_ptr()
    dy = torch.randn(geom.output_shape, generator=g, dtype=torch.float64)
    dw_v = torch.nn.grad.conv2d_weight(x_v.double(), (geom.out_chan, g_v.in_chan, g_v.kernel_h, g_v.kernel_w), dy,
                                       (g_v.stride_h, g_v.stride_w))
    dw = unpad_weight_grad(fold_wgrad_view(dw_v, g_k), geom, torch.contiguous_format)
    assert_close_verbose(dw, torch.nn.grad.conv2d_weight(x64, w.shape, dy, stride, padding), rtol=1e-7, atol=1e-7,
                         check_dtype=True, reason="float64 weight gradients summed in other orders (torch's defaults)")
    # the buffer the kernel writes the view's gradient into folds it by its strides: the same map
    folded, into = folded_wgrad_buffer(g_k, g_v, dw_v)
    into.copy_(dw_v)
    assert into.data_ptr() == folded.data_ptr() and folded.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(folded[..., :g_k.kernel_w], fold_wgrad_view(dw_v, g_k))


SMALL_CONV1 = (2, 3, 27, 23, 5, 11, 11, 4, 2)  # n, C, H, W, K, kernel, kernel, stride, padding


def _small_conv1(seed):
    n, c, h, w, k, kh, kw, stride, pad = SMALL_CONV1
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    weight = torch.randn(k, c, kh, kw, generator=g) / (c * kh * kw) ** 0.5
    return x, weight, torch.randn(k, generator=g), stride, pad


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_conv1_shape_through_the_kernels(fmt):
    """kernels.conv2d forward, weight and bias gradients on conv1's geometry (11x11, stride 4,
    padding 2, 3 channels) against float64: the padded image, the column-block wgrad."""
    x, weight, b, stride, pad = _small_conv1(3)
    x = x.to(DEVICE).contiguous(memory_format=fmt)
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
        assert_close_verbose(ours.double().cpu(), ref, atol=atol * float(ref.abs().max()), rtol=rtol, check_dtype=True,
                             reason="TOLERANCES[float32], atol relative to the reference's magnitude")


@pytest.mark.parametrize("row, col", [(0, 0), (6, 9), (26, 22)])
def test_non_finite_pixels_reach_the_outputs_pytorch_reaches(row, col):
    """An inf pixel spreads to exactly the outputs whose window holds it (the reduction's tail
    past 11*11*4 reads the next window row, masked: 0 * inf would be NaN)."""
    x, weight, b, stride, pad = _small_conv1(5)
    x[1, 2, row, col] = float("inf")
    y = kernels.conv2d(x.to(DEVICE), weight.to(DEVICE), b.to(DEVICE), stride, pad).double().cpu()
    ref = reference.conv2d(x.double(), weight.double(), b.double(), stride, pad)
    assert torch.equal(y.isnan(), ref.isnan()) and torch.equal(y.isinf(), ref.isinf())
    assert not ref.isfinite().all()


def test_a_registered_padded_buffer_is_read_without_a_copy():
    """`padded_view` of a buffer: pad_input reads the buffer itself (no copy) while its version
    is unchanged, and copies again after an in-place write; the results are the same."""
    x, weight, b, stride, pad = _small_conv1(7)
    x = x.to(DEVICE)
    geom = conv_geometry(x, weight.to(DEVICE), b.to(DEVICE), stride, pad)
    buf = padded_image(x, geom)
    view = padded_view(buf, 3, (pad, pad), tuple(x.shape[2:]))
    assert torch.equal(view, x)
    assert pad_input(view, weight, geom)[0].data_ptr() == buf.data_ptr()
    y_view = kernels.conv2d(view, weight.to(DEVICE), b.to(DEVICE), stride, pad)
    y_copy = kernels.conv2d(x, weight.to(DEVICE), b.to(DEVICE), stride, pad)
    assert_close_verbose(y_view, y_copy, rtol=1.3e-6, atol=1e-5, check_dtype=True,
                         reason="the same fp32 kernel on the same values (torch's fp32 defaults)")
    buf[0, 3, 0, 0] = 1.0  # the padding is no longer zero: the view is not trusted any more
    assert pad_input(view, weight, geom)[0].data_ptr() != buf.data_ptr()
    with pytest.raises(ValueError, match="channels_last"):
        padded_view(torch.zeros(1, 4, 8, 8), 3, (2, 2), (4, 4))


def test_a_cuda_graphs_static_input_keeps_the_padded_buffer():
    """alexnet/training/step_graph.py's static input: `clone_padded` of a padded view is read without a
    copy as well; `refill_padded` copies the next batch's whole buffer into it and keeps it
    trusted (every replay's conv1 reads it directly); a plain tensor is no such pair."""
    x, weight, b, stride, pad = _small_conv1(8)
    x = x.to(DEVICE)
    geom = conv_geometry(x, weight.to(DEVICE), b.to(DEVICE), stride, pad)
    view = padded_view(padded_image(x, geom), 3, (pad, pad), tuple(x.shape[2:]))
    static = clone_padded(view)
    assert torch.equal(static, x) and static._base.data_ptr() != view._base.data_ptr()
    assert pad_input(static, weight, geom)[0].data_ptr() == static._base.data_ptr()
    x2 = x.flip(0)
    view2 = padded_view(padded_image(x2, geom), 3, (pad, pad), tuple(x.shape[2:]))
    assert refill_padded(static, view2) and torch.equal(static, x2)
    assert pad_input(static, weight, geom)[0].data_ptr() == static._base.data_ptr()
    assert clone_padded(x) is None and not refill_padded(static, x)

"""The ReLU's gradient mask moved out of the producing conv (kernels/conv/op.py `input_relu` /
`dy_masked`, max_pool2d's `input_relu`, alexnet/network/model.py `relu_mask_moves`): chains wired as
the model wires conv3 -> conv4 -> conv5 -> pool5, against float64 autograd, and the model's
flags pairing up. On the CPU the kernels run through the interpreter in fp32."""
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICE, MEMORY_FORMATS, assert_close
from hypothesis import given
from hypothesis import strategies as st

import kernels
from alexnet.network.config import CONV_LAYERS, AlexNetConfig
from alexnet.network.layers import Conv2d
from alexnet.network.model import AlexNet, relu_mask_moves
from kernels.conv.common import ConvGeometry
from kernels.conv.dgrad import conv2d_input_grad


@st.composite
def chains(draw):
    """Two convs (the second reads the first's ReLU output), optionally a max-pool after the
    second: odd sizes, batch 1, groups, a strided second conv, 1-channel groups (FLAT loops)."""
    groups = draw(st.sampled_from([1, 2]))
    c1 = groups * draw(st.sampled_from([1, 3, 16]))
    c2 = groups * draw(st.sampled_from([2, 5, 16]))
    c3 = groups * draw(st.sampled_from([1, 4, 16]))
    k1, k2 = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    p1, p2 = draw(st.integers(0, k1 // 2)), draw(st.integers(0, k2 // 2))
    s2 = draw(st.integers(1, 2))
    h, w = draw(st.integers(k1 + k2 - 1, 8)), draw(st.integers(k1 + k2 - 1, 8))
    pool = draw(st.sampled_from([None, (2, 2), (3, 2)]))
    return draw(st.integers(1, 2)), (c1, c2, c3), (k1, k2), (p1, p2), s2, (h, w), groups, pool


def _randn(shape, g, scale=1.0):
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale)


@pytest.mark.parametrize("fmt", MEMORY_FORMATS)
@given(chain=chains(), seed=st.integers(0, 2**31 - 1))
def test_moved_masks_give_autograds_gradients(fmt, chain, seed):
    """y1 = relu(conv(x)) [dy_masked], y2 = relu(conv(y1)) [input_relu (+ dy_masked with a
    pool)], p = maxpool(y2) [input_relu]: every gradient as float64 autograd through the same
    ReLU masks (taken from our forward, so a value within rounding of 0 cannot disagree)."""
    n, (c1, c2, c3), (k1, k2), (p1, p2), s2, (h, w), groups, pool = chain
    g = torch.Generator().manual_seed(seed)
    x64 = _randn((n, c1, h, w), g)
    w1, b1 = _randn((c2, c1 // groups, k1, k1), g, (c1 // groups * k1 * k1) ** -0.5), _randn((c2,), g, 0.3)
    # conv2's bias mostly negative: many pooling windows are all zeros after the ReLU, where the
    # pool's mask (y > 0) is what stops the gradient
    w2, b2 = _randn((c3, c2 // groups, k2, k2), g, (c2 // groups * k2 * k2) ** -0.5), _randn((c3,), g, 0.3) - 0.7
    out2 = ((h + 2 * p1 - k1 + 1) + 2 * p2 - k2) // s2 + 1, ((w + 2 * p1 - k1 + 1) + 2 * p2 - k2) // s2 + 1
    pool = pool if pool is not None and min(out2) >= pool[0] else None

    leaves = [t.float().to(DEVICE).requires_grad_() for t in (x64, w1, b1, w2, b2)]
    x, *params = leaves
    x = x.contiguous(memory_format=fmt)
    y1 = kernels.conv2d(x, params[0], params[1], 1, p1, groups, relu=True, dy_masked=True)
    y2 = kernels.conv2d(y1, params[2], params[3], s2, p2, groups, relu=True, input_relu=True,
                        dy_masked=pool is not None)
    out = kernels.max_pool2d(y2, *pool, input_relu=True) if pool else y2
    dout = _randn(out.shape, g)
    out.backward(dout.float().to(DEVICE))

    ref = [t.clone().requires_grad_() for t in (x64, w1, b1, w2, b2)]
    m1, m2 = (y1.detach().cpu() > 0).double(), (y2.detach().cpu() > 0).double()
    r1 = F.conv2d(ref[0], ref[1], ref[2], 1, p1, 1, groups) * m1
    r2 = F.conv2d(r1, ref[3], ref[4], s2, p2, 1, groups) * m2
    (F.max_pool2d(r2, *pool) if pool else r2).backward(dout)
    for ours, theirs in zip(leaves, ref):
        assert_close(ours.grad.cpu(), theirs.grad, torch.float32)


def test_pool_mask_stops_the_gradient_of_all_zero_windows():
    """max_pool2d(input_relu=True) on a ReLU output: a window of zeros routes nothing (its
    ReLU's gradient is 0), a positive maximum routes dy, a NaN passes (torch's threshold_backward)."""
    z = torch.tensor([[[[-1.0, -2.0, 3.0, 1.0], [-0.5, -1.0, 2.0, 0.0],
                        [float("nan"), 1.0, -1.0, -1.0], [0.0, 0.0, -3.0, -1.0]]]], device=DEVICE)
    y = torch.relu(z).requires_grad_()
    out = kernels.max_pool2d(y, 2, 2, input_relu=True)
    out.backward(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], device=DEVICE))
    z64 = z.double().cpu().requires_grad_()
    F.max_pool2d(torch.relu(z64), 2, 2).backward(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64))
    assert torch.equal(y.grad.double().cpu(), z64.grad)  # 1 -> nowhere, 2 -> the 3, 3 -> the NaN, 4 -> nowhere
    assert y.grad.sum() == 5.0


def test_dgrad_epilogue_mask_is_relus_gradient_with_nan():
    """dx * (x > 0) as torch's ReLU gradient (threshold_backward): 0 where x <= 0, passed where x
    is NaN or positive; relu_input read through its own strides (NCHW here, dx NHWC)."""
    g = torch.Generator().manual_seed(3)
    geom = ConvGeometry(2, 4, 5, 6, 6, 3, 3, 1, 1, 1, 1, 2)
    dy = torch.randn(geom.output_shape, generator=g).to(DEVICE).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(geom.weight_shape, generator=g).to(DEVICE)
    x = torch.relu(torch.randn(geom.input_shape, generator=g)).to(DEVICE)
    x[0, 1, 2, 3], x[1, 3, 0, 0] = float("nan"), float("nan")
    dx = conv2d_input_grad(dy, weight, geom, relu_input=x)
    plain = conv2d_input_grad(dy, weight, geom)
    expected = torch.ops.aten.threshold_backward(plain, x, 0.0)
    assert torch.equal(dx, expected)
    assert (dx[x == 0] == 0).all() and (dx[x.isnan()] == plain[x.isnan()]).all() and (dx[x > 0] != 0).any()
    with pytest.raises(ValueError, match="relu_input has shape"):
        conv2d_input_grad(dy, weight, geom, relu_input=x[:1])


def test_dy_masked_needs_relu():
    with pytest.raises(ValueError, match="dy_masked=True needs relu=True"):
        kernels.conv2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 1, 1), dy_masked=True)
    with pytest.raises(ValueError, match="dy_masked=True needs relu=True"):
        Conv2d(kernels.conv2d, 1, 1, 1, dy_masked=True)


@pytest.mark.parametrize("changes", [{}, {"lrn": False}, {"activation": "tanh"}, {"columns": 1}])
@pytest.mark.parametrize("column", [None, 0])
def test_model_sets_the_flags_in_pairs(changes, column):
    """Every conv that skips its mask (dy_masked) feeds exactly the consumer that applies it:
    the next conv (input_relu) or the pool after it; nothing else carries the flags."""
    config = replace(AlexNetConfig(ops="triton", channels_last=False), **changes)
    if column is not None and config.columns != 2:
        pytest.skip("only the two-column net splits by column")
    model = AlexNet(config, column=column)
    convs = [getattr(model, layer.name) for layer in CONV_LAYERS]
    moves = relu_mask_moves(config)
    for i, (layer, conv) in enumerate(zip(CONV_LAYERS, convs)):
        flags = conv.mask_flags
        next_reads = i + 1 < len(convs) and convs[i + 1].mask_flags.get("input_relu", False)
        pool_reads = model.pool_input_relu[i]
        assert flags.get("dy_masked", False) == (next_reads or pool_reads) == (moves[i] is not None)
        assert not (next_reads and pool_reads)
        if flags.get("dy_masked"):
            assert conv.relu and not (layer.lrn and config.lrn)
        if pool_reads:
            assert layer.pool
        if next_reads:
            assert not layer.pool and not CONV_LAYERS[i + 1].exchange_before
    if config.activation == "relu":  # the paper's wiring: conv3 -> conv4 -> conv5 -> pool5
        assert moves[2:] == ["conv", "conv", "pool"]

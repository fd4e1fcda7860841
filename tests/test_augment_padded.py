"""The augmentation writing conv1's zero-padded input (kernels/augment.py augment_padded,
alexnet/data/augment.py crop_batch with the model's conv1): the model sees today's crop bit for
bit, the buffer holds zeros in its padding ring and extra channels, and conv1's forward and
weight gradient read the buffer with no copy (kernels/conv/input_layout.py padded_view)."""
import pytest
import torch
from helpers import DEVICE, assert_close, requires_gpu
from hypothesis import given
from hypothesis import strategies as st
from test_augment import _inputs  # the same random batches as the plain augmentation's tests

import kernels
import kernels.conv.input_layout as input_layout
from alexnet.data.augment import conv_input_geometry, crop_batch
from alexnet.network.config import AlexNetConfig, ConvSpec
from alexnet.network.model import AlexNet
from kernels import reference
from kernels.augment import augment_padded
from kernels.conv.input_layout import padded_geometry, padded_image

# bf16 only on a GPU: the Triton interpreter computes bf16 wrongly (conftest.requires_gpu).
TEST_DTYPES = [torch.float32, torch.bfloat16] if DEVICE == "cuda" else [torch.float32]


def _outside(buf, pad, size):
    """buf's elements outside the crop: the padding ring and the channels past 3."""
    inside = torch.zeros(buf.shape, dtype=torch.bool, device=buf.device)
    inside[:, :3, pad[0]:pad[0] + size, pad[1]:pad[1] + size] = True
    return buf[~inside]


@given(batch=st.integers(1, 3), height=st.integers(7, 19), width=st.integers(7, 19), size=st.sampled_from([1, 4, 7]),
       pad=st.tuples(st.integers(0, 3), st.integers(0, 3)), extra=st.tuples(st.integers(0, 3), st.integers(0, 3)),
       channels=st.integers(3, 5), dtype=st.sampled_from(TEST_DTYPES),
       seed=st.integers(0, 2**31 - 1))
def test_padded_buffer_is_the_crop_in_zeros(batch, height, width, size, pad, extra, channels, dtype, seed):
    args = _inputs(batch, height, width, size, torch.Generator().manual_seed(seed))
    padded_size = (pad[0] + size + extra[0], pad[1] + size + extra[1])
    buf = augment_padded(*args, size, dtype, pad, padded_size, channels)
    assert buf.shape == (batch, channels, *padded_size) and buf.dtype == dtype
    assert buf.is_contiguous(memory_format=torch.channels_last)
    crop = buf[:, :3, pad[0]:pad[0] + size, pad[1]:pad[1] + size]
    assert torch.equal(crop, kernels.augment(*args, size=size, dtype=dtype, channels_last=True))  # bit for bit
    assert (_outside(buf, pad, size) == 0).all()
    expected = reference.augment_padded(*args, size, torch.float64, pad, padded_size, channels)
    assert_close(buf, expected, dtype)


def test_refuses_a_buffer_the_crop_does_not_fit():
    args = _inputs(1, 9, 9, 4, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="does not fit"):
        augment_padded(*args, 4, torch.float32, (2, 2), (5, 8), 4)
    with pytest.raises(ValueError, match="channels"):
        augment_padded(*args, 4, torch.float32, (0, 0), (4, 4), 2)


# conv1's shape scaled down: 11x11 stride 4 padding 2 on 31x31 crops (7x7 outputs), 8 kernels.
CONV1 = ConvSpec(8, 11, stride=4, padding=2)


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=requires_gpu)])
def test_crop_batch_hands_conv1_the_padded_buffer(monkeypatch, dtype):
    """The view equals today's crop bit for bit; its buffer is `padded_image` of it (zeros
    included); conv1's forward and weight gradient on it make no padded copy and give the
    same output (channels_last) and gradient as on the plain crop."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    size = 31
    args = _inputs(2, 40, 37, size, torch.Generator().manual_seed(3))
    plain = crop_batch(*args, size, dtype, True, "triton")
    x = crop_batch(*args, size, dtype, True, "triton", conv1=CONV1)
    assert plain._base is None and x._base is not None and not x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, plain) and x.shape == plain.shape and x.dtype == dtype
    geom = conv_input_geometry(CONV1, 2, size)
    buf = x._base
    assert buf.shape == padded_geometry(geom, dtype.itemsize).input_shape
    assert torch.equal(buf, padded_image(plain, geom)) and (_outside(buf, (2, 2), size) == 0).all()

    copies = []
    real = input_layout.padded_image
    monkeypatch.setattr(input_layout, "padded_image", lambda *a: copies.append(1) or real(*a))
    gen = torch.Generator().manual_seed(4)
    weight = (torch.randn(8, 3, 11, 11, generator=gen) * 0.01).to(DEVICE, dtype)
    bias = torch.randn(8, generator=gen).to(DEVICE, dtype)
    w1, w2 = weight.clone().requires_grad_(), weight.clone().requires_grad_()
    y = kernels.conv2d(x, w1, bias, 4, 2)
    y.float().square().sum().backward()
    assert copies == []  # neither the forward nor the weight gradient padded a copy
    y_plain = kernels.conv2d(plain, w2, bias, 4, 2)
    y_plain.float().square().sum().backward()
    # the plain crop: one padded copy (the spy counts), made by the forward and kept for the weight
    # gradient on the eager fast path (kernels/conv/op.py _keep_padded)
    assert len(copies) == 1
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, y_plain) and torch.equal(w1.grad, w2.grad)


@pytest.mark.parametrize("where", ["reference ops", "nchw", "no conv1", "grouped conv1", "too narrow"])
def test_everywhere_else_the_output_is_unchanged(monkeypatch, where):
    """Only "triton" ops, channels_last and a conv1 that reads a padded image holding the
    whole crop get the padded buffer; every other call gets today's dense output."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    size = 15
    args = _inputs(2, 17, 18, size, torch.Generator().manual_seed(5))
    ops, channels_last, conv1 = "triton", True, ConvSpec(4, 5, stride=2, padding=2)
    if where == "reference ops":
        ops = "reference"
    elif where == "nchw":
        channels_last = False
    elif where == "no conv1":
        conv1 = None
    elif where == "grouped conv1":
        conv1 = ConvSpec(3, 5, stride=2, padding=2, groups=3)
    else:  # 4x4 windows at stride 4 on 15 columns reach 12: the padded image would cut the crop
        conv1 = ConvSpec(4, 4, stride=4, padding=0)
    x = crop_batch(*args, size, torch.float32, channels_last, ops, conv1=conv1)
    expected = crop_batch(*args, size, torch.float32, channels_last, ops)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert x.is_contiguous(memory_format=fmt) and torch.equal(x, expected)
    assert x.untyped_storage().nbytes() == x.numel() * x.element_size()  # no buffer around it


def test_the_model_reads_the_view_without_a_copy(monkeypatch):
    """AlexNet (channels_last, triton ops; its conv1 scaled down) takes the view as it is:
    no channels_last copy of the input, no padded copy in conv1, the same logits."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    config = AlexNetConfig(num_classes=4, image_size=63, fc_features=16, dropout=0.0, dropout_seed=0,
                           channels_last=True, ops="triton", conv_width=1 / 16, columns=1)
    torch.manual_seed(0)
    model = AlexNet(config).to(DEVICE).eval()
    args = _inputs(1, 70, 66, 63, torch.Generator().manual_seed(6))
    x = crop_batch(*args, 63, torch.float32, True, "triton", conv1=config.convs[0])
    plain = crop_batch(*args, 63, torch.float32, True, "triton")
    copies = []  # the image sizes of the padded copies (the mini-model's later convs have few channels too)
    real = input_layout.padded_image
    monkeypatch.setattr(input_layout, "padded_image", lambda x, g: copies.append(g.height) or real(x, g))
    with torch.no_grad():
        logits = model(x)
        assert 63 not in copies
        assert torch.equal(logits, model(plain)) and copies.count(63) == 1

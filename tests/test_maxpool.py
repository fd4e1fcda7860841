"""kernels.max_pool2d against PyTorch's max_pool2d in float64 (kernels/maxpool.py)."""
import pytest
import torch
from compare import assert_close_verbose
from helpers import DEVICE, DTYPES, MEMORY_FORMATS, assert_close
from hypothesis import given
from hypothesis import strategies as st

import kernels
from kernels import reference


@st.composite
def pool_problems(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(kh, 11)), draw(st.integers(kw, 11)))
    return shape, (kh, kw), (sh, sw)


def _values(seed, shape, dtype, fmt, ties):
    g = torch.Generator().manual_seed(seed)
    if ties:  # few distinct values: many windows hold several equal maxima
        x = torch.randint(-2, 3, shape, generator=g).double()
    else:
        x = torch.randn(shape, generator=g, dtype=torch.float64) * 10
    return x.to(dtype).to(DEVICE).contiguous(memory_format=fmt)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", MEMORY_FORMATS)
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@given(problem=pool_problems(), seed=st.integers(0, 2**31 - 1))
def test_forward_and_backward_match_pytorch(dtype, fmt, ties, problem, seed):
    shape, kernel_size, stride = problem
    x = _values(seed, shape, dtype, fmt, ties).requires_grad_()
    y = kernels.max_pool2d(x, kernel_size, stride)
    assert y.dtype == dtype and y.is_contiguous(memory_format=fmt)
    dy = _values(seed + 1, y.shape, dtype, fmt, ties=False)
    y.backward(dy)

    x64 = x.detach().double().cpu().requires_grad_()
    y64 = reference.max_pool2d(x64, kernel_size, stride)
    y64.backward(dy.double().cpu())
    assert_close_verbose(y, y64, atol=0, rtol=0, reason="a max selects one input: exact")
    # Ties must pick the same element as PyTorch: the gradient lands on the same positions.
    assert_close(x.grad, x64.grad, dtype, scale=float(dy.abs().max()))
    assert x.grad.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("fmt", MEMORY_FORMATS)
def test_backward_reads_dy_through_its_own_strides(fmt):
    """The gradient may arrive in another layout than the pooled output (pool5: flatten's
    backward hands a channels_last map an NCHW-ordered dy); no copy, the same dx."""
    x = _values(3, (2, 5, 9, 7), torch.float32, fmt, ties=False).requires_grad_()
    y = kernels.max_pool2d(x)
    other = torch.channels_last if fmt == torch.contiguous_format else torch.contiguous_format
    dy = _values(4, y.shape, torch.float32, other, ties=False)
    assert dy.stride() != y.stride()
    y.backward(dy)
    x64 = x.detach().double().cpu().requires_grad_()
    reference.max_pool2d(x64).backward(dy.double().cpu())
    assert_close(x.grad, x64.grad, torch.float32, scale=float(dy.abs().max()))  # sums of a few dy in fp32
    assert x.grad.is_contiguous(memory_format=fmt)


def test_paper_default_is_overlapping_3x3_stride_2():
    x = torch.randn(2, 96, 55, 55, device=DEVICE)
    assert kernels.max_pool2d(x).shape == (2, 96, 27, 27)


def test_nan_propagates_like_pytorch():
    x = torch.tensor([[[[1.0, float("nan"), 2.0], [float("nan"), 0.0, 5.0], [0.0, 0.0, 0.0]]]], device=DEVICE)
    x.requires_grad_()
    y = kernels.max_pool2d(x, 3, 2)
    y.backward(torch.ones_like(y))
    x64 = x.detach().double().cpu().requires_grad_()
    ref = reference.max_pool2d(x64, 3, 2)
    ref.backward(torch.ones_like(ref))
    assert torch.isnan(y).all() and torch.isnan(ref).all()
    assert torch.equal(x.grad.double().cpu(), x64.grad)


def test_saved_index_is_one_byte():
    from kernels.maxpool import max_pool2d_forward
    _, idx = max_pool2d_forward(torch.randn(2, 4, 13, 13, device=DEVICE))
    assert idx.dtype == torch.int8


def test_empty_batch():
    x = torch.randn(0, 4, 7, 7, device=DEVICE, requires_grad=True)
    y = kernels.max_pool2d(x)
    assert y.shape == (0, 4, 3, 3)
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("bad, error, match", [
    (lambda: kernels.max_pool2d(torch.randn(1, 3, 2, 5, device=DEVICE)), ValueError, "smaller than"),
    (lambda: kernels.max_pool2d(torch.randn(3, 5, 5, device=DEVICE)), ValueError, "4-D"),
    (lambda: kernels.max_pool2d(torch.ones(1, 3, 5, 5, dtype=torch.int64, device=DEVICE)), TypeError, "dtype"),
    (lambda: kernels.max_pool2d(torch.randn(1, 3, 5, 5, device=DEVICE), 0, 2), ValueError, "kernel_size"),
    (lambda: kernels.max_pool2d(torch.randn(1, 3, 5, 5, device=DEVICE), 3, (2, 0)), ValueError, "stride"),
    (lambda: kernels.max_pool2d(torch.empty(1, 3, 5, 5, device="meta")), ValueError, "is on meta"),
])
def test_bad_input_raises_clear_error(bad, error, match):
    with pytest.raises(error, match=match):
        bad()

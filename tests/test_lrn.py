"""kernels.relu_lrn / local_response_norm against the float64 reference (kernels/lrn.py)."""
import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICE, DTYPES, MEMORY_FORMATS, assert_close
from hypothesis import given
from hypothesis import strategies as st

import kernels
from kernels import reference


def _input(seed, shape, scale, dtype, fmt):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    return x.to(dtype).to(DEVICE).contiguous(memory_format=fmt)


shapes = st.tuples(st.integers(1, 3), st.integers(1, 19), st.integers(1, 7), st.integers(1, 6))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", MEMORY_FORMATS)
@pytest.mark.parametrize("relu", [True, False], ids=["relu_lrn", "lrn"])
@given(shape=shapes, size=st.sampled_from([1, 2, 3, 5, 6, 17]), scale=st.sampled_from([0.5, 10.0, 100.0]),
       groups=st.sampled_from([1, 1, 2, 3]), seed=st.integers(0, 2**31 - 1))
def test_forward_and_backward_match_reference(dtype, fmt, relu, shape, size, scale, groups, seed):
    shape = (shape[0], shape[1] * groups, shape[2], shape[3])
    x = _input(seed, shape, scale, dtype, fmt).requires_grad_()
    params = dict(size=size, alpha=1e-4, beta=0.75, k=2.0, groups=groups)
    op, ref_op = ((kernels.relu_lrn, reference.relu_lrn) if relu
                  else (kernels.local_response_norm, reference.local_response_norm))
    y = op(x, **params)
    assert y.dtype == dtype and y.shape == x.shape and y.is_contiguous(memory_format=fmt)
    dy = _input(seed + 1, shape, 1.0, dtype, fmt)
    y.backward(dy)

    x64 = x.detach().double().cpu().requires_grad_()
    y64 = ref_op(x64, **params)
    y64.backward(dy.double().cpu())
    assert_close(y, y64, dtype)
    assert_close(x.grad, x64.grad, dtype)
    assert x.grad.is_contiguous(memory_format=fmt)


def test_paper_constants_are_defaults_and_alpha_is_not_divided_by_n():
    x = _input(1, (2, 12, 5, 4), 50.0, torch.float32, torch.contiguous_format)
    y = kernels.relu_lrn(x)
    # PyTorch's local_response_norm divides alpha by size: the paper's alpha=1e-4 is its 5e-4.
    expected = F.local_response_norm(F.relu(x.cpu().double()), 5, alpha=5e-4, beta=0.75, k=2.0)
    assert_close(y, expected, torch.float32)
    wrong = F.local_response_norm(F.relu(x.cpu().double()), 5, alpha=1e-4, beta=0.75, k=2.0)
    assert (y.double().cpu() - wrong).abs().max() > 1e-3 * wrong.abs().max()


def test_groups_normalise_each_block_on_its_own():
    x = _input(5, (2, 16, 3, 3), 40.0, torch.float32, torch.channels_last)
    y = kernels.relu_lrn(x, groups=2)
    halves = [reference.relu_lrn(part.double().cpu()) for part in x.chunk(2, dim=1)]
    assert_close(y, torch.cat(halves, dim=1), torch.float32)
    # a window crossing the boundary would differ: the grouped and ungrouped ops disagree there
    assert (y - kernels.relu_lrn(x)).abs()[:, 6:10].max() > 0


def test_non_contiguous_input_and_gradient():
    base = _input(2, (2, 6, 8, 10), 20.0, torch.float32, torch.contiguous_format)
    x = base[:, :, ::2, 1:].requires_grad_()  # strided view: neither NCHW- nor NHWC-contiguous
    y = kernels.relu_lrn(x)
    dy = _input(3, (2, 6, 4, 9), 1.0, torch.float32, torch.contiguous_format)
    dy = dy.transpose(2, 3).contiguous().transpose(2, 3)
    y.backward(dy)
    x64 = x.detach().double().cpu().requires_grad_()
    reference.relu_lrn(x64).backward(dy.double().cpu())
    assert_close(y, reference.relu_lrn(x64.detach()), torch.float32)
    assert_close(x.grad, x64.grad, torch.float32)


def test_no_grad_needed_saves_nothing_and_matches():
    x = _input(4, (1, 7, 3, 3), 30.0, torch.float32, torch.channels_last)
    with torch.no_grad():
        y = kernels.relu_lrn(x)
    assert y.grad_fn is None
    assert_close(y, reference.relu_lrn(x.double().cpu()), torch.float32)


def test_empty_batch():
    x = torch.randn(0, 8, 5, 5, device=DEVICE, requires_grad=True)
    y = kernels.relu_lrn(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("bad, error, match", [
    (lambda: kernels.relu_lrn(torch.randn(2, 3, 4, device=DEVICE)), ValueError, "4-D"),
    (lambda: kernels.relu_lrn(torch.ones(1, 3, 4, 4, dtype=torch.int32, device=DEVICE)), TypeError, "dtype"),
    (lambda: kernels.relu_lrn(torch.randn(1, 3, 4, 4, device=DEVICE), size=0), ValueError, "size"),
    (lambda: kernels.relu_lrn(torch.randn(1, 3, 4, 4, device=DEVICE), size=18), ValueError, "size"),
    (lambda: kernels.relu_lrn(torch.randn(1, 3, 4, 4, device=DEVICE), groups=2), ValueError, "groups"),
    (lambda: kernels.relu_lrn(torch.randn(1, 3, 4, 4, device=DEVICE), k=0.0), ValueError, "k must be"),
    (lambda: kernels.relu_lrn([1.0, 2.0]), TypeError, "torch.Tensor"),
])
def test_bad_input_raises_clear_error(bad, error, match):
    with pytest.raises(error, match=match):
        bad()


def test_wrong_device_raises():
    # A meta tensor is on neither the GPU nor (under the interpreter) the CPU.
    with pytest.raises(ValueError, match="is on meta"):
        kernels.relu_lrn(torch.empty(1, 3, 4, 4, device="meta"))

"""Edge cases of the LRN, max-pool and dropout kernels that PyTorch defines and a fused
kernel easily gets wrong: NaN and inf, fp32 overflow inside the op, very wide pooling
windows, tensors past int32 pixel indices, and double backward."""
import pytest
import torch
import torch.nn.functional as F
from compare import assert_close_verbose
from helpers import DEVICE
from hypothesis import given
from hypothesis import strategies as st

import kernels
from kernels import reference
from kernels.maxpool import argmax_dtype, max_pool2d_backward

SPECIALS = [float("nan"), float("inf"), float("-inf")]


def _poisoned(seed, shape, n_special, specials, scale=10.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    flat = x.view(-1)
    where = torch.randperm(flat.numel(), generator=g)[:n_special]
    choice = torch.randint(len(specials), (n_special,), generator=g)
    for i, c in zip(where.tolist(), choice.tolist()):
        flat[i] = specials[c]
    return x


def _assert_same_nonfinite_and_close(actual, expected, atol=1e-5):
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert torch.equal(actual.isnan(), expected.isnan()), (actual, expected)
    assert torch.equal(actual.isinf(), expected.isinf())
    assert torch.equal(actual[actual.isinf()], expected[expected.isinf()])
    finite = expected.isfinite()
    scale = max(float(expected[finite].abs().max()) if finite.any() else 1.0, 1e-30)
    assert_close_verbose(actual[finite], expected[finite], atol=atol * scale, rtol=1e-5,
                         reason="fp32 LRN/pooling on finite elements: TOLERANCES[float32], atol relative to the "
                                "largest finite reference value")


@pytest.mark.parametrize("relu", [True, False], ids=["relu_lrn", "lrn"])
@given(shape=st.tuples(st.integers(1, 2), st.integers(1, 12), st.integers(1, 4), st.integers(1, 4)),
       n_special=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_lrn_keeps_nan_and_inf_as_the_reference(relu, shape, n_special, seed):
    """relu_lrn = LRN(torch.relu(x)): NaN stays NaN (a fused max(x, 0) would make it 0), inf
    gives what the plain composition gives; forward and backward."""
    x64 = _poisoned(seed, shape, n_special, SPECIALS)
    op, ref_op = (kernels.relu_lrn, reference.relu_lrn) if relu else (kernels.local_response_norm,
                                                                     reference.local_response_norm)
    x = x64.float().to(DEVICE)
    _assert_same_nonfinite_and_close(op(x), ref_op(x64))


@given(shape=st.tuples(st.integers(1, 2), st.integers(1, 12), st.integers(1, 4), st.integers(1, 4)),
       n_special=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_relu_lrn_gradient_with_nan_inputs_matches_autograd(shape, n_special, seed):
    x64 = _poisoned(seed, shape, n_special, [float("nan")]).requires_grad_()
    x = x64.detach().float().to(DEVICE).requires_grad_()
    dy = torch.randn(shape, dtype=torch.float64)
    kernels.relu_lrn(x).backward(dy.float().to(DEVICE))
    reference.relu_lrn(x64).backward(dy)
    _assert_same_nonfinite_and_close(x.grad, x64.grad, atol=1e-4)


def test_relu_lrn_of_an_activation_whose_square_overflows_is_zero_like_torch():
    """a = 2e19: a^2 overflows fp32, s = inf, b = a / inf = 0 in the plain composition (the
    kernel used to form u * s = 0 * inf = NaN)."""
    x = torch.randn(1, 7, 2, 3) * 5
    x[0, 3, 1, 2] = 2e19
    y = kernels.relu_lrn(x.to(DEVICE))
    expected = reference.relu_lrn(x)  # fp32, as the kernel computes
    assert torch.isfinite(y).all()
    _assert_same_nonfinite_and_close(y, expected)
    assert y[0, 3, 1, 2] == 0 and y[0, 1:6, 1, 2].abs().max() == 0


@given(numel=st.integers(1, 600), n_special=st.integers(1, 20), p=st.sampled_from([0.3, 0.5, 0.9]),
       seed=st.integers(0, 2**31 - 1))
def test_dropout_multiplies_like_torch_so_nan_and_inf_become_nan_where_dropped(numel, n_special, p, seed):
    """torch's dropout is x * mask / (1 - p): a dropped NaN or inf is NaN, not 0."""
    x = _poisoned(seed, (numel,), min(n_special, numel), SPECIALS, scale=1.0).float().abs().add(0.5)
    x[x.isnan()] = float("nan")
    x = x.to(DEVICE).requires_grad_()
    torch.manual_seed(seed)
    y = kernels.dropout(x, p)
    torch.manual_seed(seed)
    kept = kernels.dropout(torch.ones_like(x), p) != 0  # the same mask, read off ones
    expected = x.detach() * torch.where(kept, 1.0 / (1.0 - p), 0.0)
    assert torch.equal(y.isnan(), expected.isnan()) and torch.equal(y[~y.isnan()], expected[~expected.isnan()])
    assert y[~kept & ~x.detach().isfinite()].isnan().all()
    dy = torch.full_like(x, float("nan"))
    y.backward(dy)
    assert x.grad.isnan().all()  # NaN * 0 is NaN, as torch's gradient


def test_dropout_takes_a_one_element_tensor_p():
    x = torch.rand(1000, device=DEVICE) + 0.5
    torch.manual_seed(3)
    a = kernels.dropout(x, torch.tensor(0.5))
    torch.manual_seed(3)
    b = kernels.dropout(x, 0.5)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="p must be in"):
        kernels.dropout(x, torch.tensor([0.5, 0.5]))


@given(shape=st.tuples(st.integers(1, 2), st.integers(1, 5), st.integers(3, 8), st.integers(3, 8)),
       n_special=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_max_pool_propagates_nan_and_inf_and_routes_their_gradient_as_torch(shape, n_special, seed):
    x64 = _poisoned(seed, shape, n_special, SPECIALS).requires_grad_()
    x = x64.detach().float().to(DEVICE).requires_grad_()
    y, y64 = kernels.max_pool2d(x), F.max_pool2d(x64, 3, 2)
    _assert_same_nonfinite_and_close(y, y64)
    dy = torch.randn(y64.shape, dtype=torch.float64)
    y.backward(dy.float().to(DEVICE))
    y64.backward(dy)
    _assert_same_nonfinite_and_close(x.grad, x64.grad)


def test_max_pool_argmax_is_wide_enough_for_any_window():
    """Window positions past 32767 need int32 (int16 wrapped: global pooling over a 182x182
    map lost its gradient). The backward with such an argmax puts the gradient at the right
    place (the forward's 32k-step unrolled window is too slow for the interpreter)."""
    assert argmax_dtype(9) == torch.int8 and argmax_dtype(129) == torch.int16
    assert argmax_dtype(32768) == torch.int16 and argmax_dtype(182 * 182) == torch.int32
    n = 182
    x = torch.randn(1, 2, n, n, dtype=torch.float64)
    x[0, 0, n - 1, n - 1], x[0, 1, n - 1, 5] = 1e3, 1e3  # positions 33123 and 32947: past int16
    _, torch_idx = F.max_pool2d(x, n, n, return_indices=True)
    idx = torch_idx.to(argmax_dtype(n * n))  # the window-local position (one window covers the map)
    assert idx.flatten().tolist() == [n * n - 1, (n - 1) * n + 5]
    blocks = (8192, 2, 4) if DEVICE == "cpu" else None  # big tiles: quick on the interpreter
    dx = max_pool2d_backward(torch.ones(1, 2, 1, 1, device=DEVICE), idx.to(DEVICE), (1, 2, n, n),
                             torch.contiguous_format, (n, n), (n, n), blocks=blocks)
    assert dx[0, 0, n - 1, n - 1] == 1 and dx[0, 1, n - 1, 5] == 1 and dx.sum() == 2


@pytest.mark.parametrize("shape", [(33, 3, 8192, 8192), (1, 3, 65535, 32768)], ids=["past_2e31", "within_a_block"])
@pytest.mark.parametrize("op", [kernels.relu_lrn, kernels.max_pool2d], ids=["relu_lrn", "max_pool2d"])
def test_past_int32_pixel_indices_is_refused_before_any_allocation(op, shape):
    """(33, 3, 8192, 8192) has 2.2e9 pixels: int32 pixel indices would wrap. (1, 3, 65535,
    32768) has 2**31 - 2**15: fewer, but the last block's indices would run past 2**31 before
    its mask (the one bound, MAX_PIXELS, leaves a block of room, as the convolution's does). A
    zero-stride view of that shape costs no memory; the launcher refuses it from its shape."""
    x = torch.zeros(1, 1, 1, 1, device=DEVICE).expand(*shape)
    with pytest.raises(ValueError, match="pixels.*int32"):
        op(x)


@pytest.mark.parametrize("op", [kernels.relu_lrn, kernels.max_pool2d], ids=["relu_lrn", "max_pool2d"])
def test_double_backward_raises_instead_of_dropping_terms(op):
    x = (torch.rand(1, 8, 5, 5, device=DEVICE) + 0.5).requires_grad_()
    (grad,) = torch.autograd.grad(op(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|differentiate twice|no autograd formula"):
        grad.sum().backward()


def test_dropout_double_backward_is_exact():
    """Dropout is linear and its backward is the same op with the same seed, so second-order
    terms survive: y = D x with D = mask / (1 - p); d/dx sum((D x)^2) = 2 D D x, whose
    gradient summed is 2 D D 1 = 2 * 4 on kept elements (p = 0.5), 0 on dropped ones."""
    x = (torch.rand(1, 8, 5, 5, device=DEVICE) + 0.5).requires_grad_()
    y = kernels.dropout(x, 0.5)
    (grad,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    grad.sum().backward()
    kept = (y != 0).to(x.dtype)
    assert 0 < kept.sum() < kept.numel()
    assert_close_verbose(x.grad, 8.0 * kept, rtol=1.3e-6, atol=1e-5, check_dtype=True,
                         reason="torch.testing's fp32 defaults: (1 / (1 - p))**2 * 2 = 8 is exact in fp32")

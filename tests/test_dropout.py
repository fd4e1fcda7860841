"""kernels.dropout: seeded, reproducible, the right rate, exact scaling, mask-following gradient."""
import math

import pytest
import torch
from conftest import DEVICE, DTYPES
from hypothesis import given
from hypothesis import strategies as st

import kernels


def _x(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) + 0.5).to(dtype).to(DEVICE)  # never zero: zeros mark drops


@pytest.mark.parametrize("dtype", DTYPES)
@given(numel=st.integers(1, 5000), p=st.sampled_from([0.1, 0.5, 0.9]), seed=st.integers(0, 2**31 - 1))
def test_kept_values_scaled_exactly_and_gradient_follows_mask(dtype, numel, p, seed):
    x = _x((numel,), dtype, seed).requires_grad_()
    torch.manual_seed(seed)
    y = kernels.dropout(x, p)
    kept = y != 0
    scale = 1.0 / (1.0 - p)
    expected = torch.where(kept, (x.detach().float() * scale).to(dtype), torch.zeros_like(x))
    assert torch.equal(y, expected)
    dy = _x((numel,), dtype, seed + 1)
    y.backward(dy)
    assert torch.equal(x.grad, torch.where(kept, (dy.float() * scale).to(dtype), torch.zeros_like(dy)))


@pytest.mark.parametrize("p", [0.2, 0.5, 0.75])
def test_kept_fraction_within_binomial_bound(p):
    n = 1 << 17
    kept = (kernels.dropout(_x((n,)), p) != 0).double().mean().item()
    bound = 5 * math.sqrt(p * (1 - p) / n) + 2**-16  # 5 sigma, plus p's 16-bit resolution
    assert abs(kept - (1 - p)) < bound, (kept, 1 - p, bound)


def test_same_seed_same_mask_different_seed_different_mask():
    x = _x((3, 1000))
    torch.manual_seed(123)
    a = kernels.dropout(x)
    torch.manual_seed(123)
    b = kernels.dropout(x)
    c = kernels.dropout(x)  # next draw from the generator: a new seed
    assert torch.equal(a, b)
    assert not torch.equal(a != 0, c != 0)


def test_explicit_generator():
    x = _x((2048,))
    gen_device = DEVICE
    a = kernels.dropout(x, generator=torch.Generator(gen_device).manual_seed(7))
    b = kernels.dropout(x, generator=torch.Generator(gen_device).manual_seed(7))
    c = kernels.dropout(x, generator=torch.Generator(gen_device).manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_mask_chunks_are_independent():
    # Each Philox call feeds four chunks of a block: no two 256-element chunks may repeat.
    mask = (kernels.dropout(_x((1 << 14,))) != 0).view(-1, 256)
    assert len({tuple(row.tolist()) for row in mask}) == mask.shape[0]


def test_channels_last_layout_kept_and_gradient_matches():
    x = _x((2, 5, 3, 4)).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = kernels.dropout(x, 0.3)
    assert y.is_contiguous(memory_format=torch.channels_last)
    y.backward(torch.ones(2, 5, 3, 4, device=DEVICE))  # contiguous NCHW gradient
    assert torch.equal(x.grad != 0, y != 0)


def test_eval_mode_and_p0_are_identity_p1_drops_all():
    x = _x((100,)).requires_grad_()
    assert kernels.dropout(x, 0.5, training=False) is x
    assert kernels.dropout(x, 0.0) is x
    y = kernels.dropout(x, 1.0)
    assert torch.equal(y, torch.zeros_like(y))
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_backward_stores_nothing_mask_sized():
    x = _x((4096,)).requires_grad_()
    y = kernels.dropout(x)
    saved = [t for t in y.grad_fn.saved_tensors]
    assert all(t.numel() == 1 for t in saved), [t.shape for t in saved]


def test_empty():
    assert kernels.dropout(_x((0, 5))).shape == (0, 5)


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_bad_p(p):
    with pytest.raises(ValueError, match="p must be in"):
        kernels.dropout(_x((4,)), p)


def test_bad_dtype_and_device():
    with pytest.raises(TypeError, match="dtype"):
        kernels.dropout(torch.ones(4, dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match="is on meta"):
        kernels.dropout(torch.empty(4, device="meta"))

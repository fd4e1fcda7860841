"""kernels.sgd.sgd_step_ (the fused paper SGD step) against the reference and a hand computation."""
import pytest
import torch
from compare import assert_close_verbose
from helpers import DEVICE
from hypothesis import given
from hypothesis import strategies as st

from kernels import reference
from kernels.sgd import sgd_step_


def _buffers(n, seed):
    g = torch.Generator().manual_seed(seed)
    w, v, grad = (torch.randn(n, generator=g) for _ in range(3))
    return w.to(DEVICE), v.to(DEVICE), grad.to(DEVICE)


@given(n=st.integers(1, 5000), frac=st.floats(0, 1), lr=st.sampled_from([0.01, 0.001]),
       seed=st.integers(0, 2**31 - 1), low=st.sampled_from([None, torch.float16]))
def test_matches_reference(n, frac, lr, seed, low):
    w, v, grad = _buffers(n, seed)
    n_decay = int(frac * n)
    lr_t = torch.tensor([lr], device=DEVICE)
    w_ref, v_ref = w.double().cpu(), v.double().cpu()
    out = torch.empty(n, dtype=low, device=DEVICE) if low else None
    sgd_step_(w, v, grad, lr_t, 0.9, 5e-4, n_decay, out)
    reference.sgd_step_(w_ref, v_ref, grad.double().cpu(), lr_t.double().cpu(), 0.9, 5e-4, n_decay)
    # fp32 update of O(1) values: a few roundings (u = 6e-8) per element and no sum.
    why = "fp32 momentum/decay update, a few roundings per element, no reduction"
    assert_close_verbose(v, v_ref, atol=1e-6, rtol=1e-5, reason=why)
    assert_close_verbose(w, w_ref, atol=1e-6, rtol=1e-5, reason=why)
    if low:
        assert torch.equal(out, w.to(low))


def test_hand_computation_weight_vs_bias():
    w = torch.tensor([1.0, 2.0], device=DEVICE)
    v = torch.tensor([0.1, 0.1], device=DEVICE)
    g = torch.tensor([0.5, 0.5], device=DEVICE)
    sgd_step_(w, v, g, torch.tensor([0.01], device=DEVICE), 0.9, 5e-4, n_decay=1)
    v_expected = [0.9 * 0.1 - 5e-4 * 0.01 * 1.0 - 0.01 * 0.5, 0.9 * 0.1 - 0.01 * 0.5]
    why = "torch.testing's fp32 defaults: the hand values are rounded to fp32 like the kernel's"
    assert_close_verbose(v.cpu(), torch.tensor(v_expected), rtol=1.3e-6, atol=1e-5, check_dtype=True, reason=why)
    assert_close_verbose(w.cpu(), torch.tensor([1.0 + v_expected[0], 2.0 + v_expected[1]]), rtol=1.3e-6, atol=1e-5,
                         check_dtype=True, reason=why)


def test_bad_input():
    w, v, g = _buffers(8, 0)
    lr = torch.tensor([0.01], device=DEVICE)
    with pytest.raises(ValueError, match="elements"):
        sgd_step_(w, v[:4], g, lr)
    with pytest.raises(TypeError, match="dtype"):
        sgd_step_(w.double(), v, g, lr)
    with pytest.raises(ValueError, match="n_decay"):
        sgd_step_(w, v, g, lr, n_decay=9)
    with pytest.raises(ValueError, match="one-element"):
        sgd_step_(w, v, g, torch.tensor([0.1, 0.2], device=DEVICE))

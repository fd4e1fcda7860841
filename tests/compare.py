"""One tensor comparison for every test: on a mismatch it says how many elements differ,
where, and the worst ones (in the style of Liger-Kernel's `assert_verbose_allclose`), and
every call states why its tolerance is what it is.

    assert_close_verbose(actual, expected, rtol=1e-5, atol=1e-6, reason="fp32 update, one rounding per term")

An element passes when |actual - expected| <= atol + rtol * |expected| (torch.testing's rule);
NaNs must sit at the same places (equal_nan=True) or fail. Both sides are compared in float64
on the CPU, so a float32 kernel output meets its float64 reference.
"""
from __future__ import annotations

import math

import torch

__all__ = ["assert_close_verbose", "unit_roundoff", "sum_atol"]


def unit_roundoff(dtype: torch.dtype) -> float:
    """Half the spacing of `dtype`'s numbers at 1: the relative error of one rounding."""
    return torch.finfo(dtype).eps / 2


def sum_atol(dtype: torch.dtype, length: int, magnitude: float) -> float:
    """An absolute tolerance for a sum of `length` terms of size up to `magnitude` computed in
    `dtype`: the probabilistic rounding-error bound sqrt(length) * u * sum|terms| (Higham & Mary,
    SIAM J. Sci. Comput. 2019; the worst case has length for sqrt(length)) with
    sum|terms| <= length * magnitude. So the tolerance grows with the reduction length instead
    of being one number for every shape."""
    return math.sqrt(length) * unit_roundoff(dtype) * length * magnitude


def assert_close_verbose(actual, expected, *, rtol: float, atol: float, reason: str, equal_nan: bool = False,
                         check_dtype: bool = False, max_print: int = 5) -> None:
    """Raise AssertionError unless `actual` matches `expected` element-wise within
    atol + rtol * |expected|. `reason` says where the tolerance comes from (it is printed
    with a failure). check_dtype: the two dtypes must also be equal."""
    actual = torch.as_tensor(actual)
    expected = torch.as_tensor(expected)
    if check_dtype and actual.dtype != expected.dtype:
        raise AssertionError(f"dtype {actual.dtype} != expected {expected.dtype}")
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    a = actual.detach().cpu().double()
    e = expected.detach().cpu().double()
    if a.numel() == 0:
        return
    diff = (a - e).abs()
    bound = atol + rtol * e.abs()
    both_nan = a.isnan() & e.isnan()
    same_inf = a.isinf() & e.isinf() & (a == e)
    ok = (diff <= bound) | same_inf | (both_nan if equal_nan else torch.zeros_like(both_nan))
    if bool(ok.all()):
        return
    bad = (~ok).nonzero()
    excess = torch.where(ok, torch.zeros_like(diff), (diff - bound).nan_to_num(nan=math.inf))
    worst = excess.flatten().argsort(descending=True)[: min(max_print, bad.shape[0])]
    lines = [f"{bad.shape[0]} of {a.numel()} elements ({100 * bad.shape[0] / a.numel():.3g}%) differ beyond "
             f"atol={atol:.3g} + rtol={rtol:.3g} * |expected| (tolerance: {reason})",
             f"greatest absolute difference {float(diff.nan_to_num(nan=math.inf).max()):.4g}; "
             f"first mismatch at index {tuple(bad[0].tolist())}; the worst:"]
    for flat in worst.tolist():
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape))
        lines.append(f"  at {index}: actual {float(a[index]):.8g}, expected {float(e[index]):.8g}, "
                     f"difference {float(diff[index]):.3g} (allowed {float(bound[index]):.3g})")
    raise AssertionError("\n".join(lines))

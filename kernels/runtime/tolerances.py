"""How a kernel's output is compared with its reference's (kernels/runtime/verify.py's checks;
the measure and the reasons for each tolerance are in verify.py's docstring and README's
"Correctness on your GPU"): non-finite values exactly where the reference has them, then an
elementwise bound relative to the output's scale and a norm-relative bound.
"""
from __future__ import annotations

import math

import torch

__all__ = ["compare", "conv_tolerance", "op_tolerance"]

U_OUT = {torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}
U_ACC = 2.0 ** -24


def conv_tolerance(dtype: torch.dtype, precision: str, reduction: int) -> tuple[float, float, float]:
    """(rtol, atol relative to rms(reference), ntol) for a convolution pass (module docstring)."""
    u_out = U_OUT.get(dtype, 2.0 ** -24)
    u_in = 2.0 ** -11 if dtype == torch.float32 and precision == "tf32" else 0.0
    acc = math.sqrt(max(reduction, 1)) * U_ACC
    return 4 * u_out, 4 * u_out + 16 * u_in + 8 * acc, 2 * u_out + 4 * u_in + 4 * acc


def op_tolerance(dtype: torch.dtype) -> tuple[float, float, float]:
    """(rtol, atol relative to rms(reference), ntol) for a memory-bound op's output."""
    u = {torch.float32: 2.0 ** -17, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}.get(dtype, 2.0 ** -17)
    return 8 * u, 8 * u, 4 * u


def compare(actual: torch.Tensor, expected: torch.Tensor, tol) -> str | None:
    """None if `actual` matches `expected` (same shape) within tol = (rtol, atol, ntol), else what is
    wrong, in one phrase. Integer and boolean tensors must be equal."""
    if tuple(actual.shape) != tuple(expected.shape):
        return f"shape {tuple(actual.shape)} instead of {tuple(expected.shape)}"
    if not (actual.is_floating_point() or expected.is_floating_point()):
        bad = int((actual != expected).sum())
        return f"{bad} of {actual.numel()} elements differ" if bad else None
    a, r = actual.detach().double(), expected.detach().to(actual.device).double()  # on the device: conv1's 37M
    n = r.numel()
    nan_a, nan_r = torch.isnan(a), torch.isnan(r)
    if not torch.equal(nan_a, nan_r):
        extra, missing = int((nan_a & ~nan_r).sum()), int((nan_r & ~nan_a).sum())
        return f"NaN in {extra} elements where the reference has none" + (
            f" (and {missing} missing)" if missing else "") + f", of {n}"
    inf_a, inf_r = torch.isinf(a), torch.isinf(r)
    if not torch.equal(inf_a, inf_r) or not torch.equal(a[inf_a], r[inf_r]):
        return f"inf in {int((inf_a != inf_r).sum())} elements where the reference differs, of {n}"
    fin = torch.isfinite(r)
    a, r = a[fin], r[fin]
    if not r.numel():
        return None
    rtol, atol, ntol = tol
    err = (a - r).abs()
    rms = float(r.square().mean().sqrt())
    bound = rtol * r.abs() + atol * rms
    bad = err > bound
    if bad.any():
        return (f"{int(bad.sum())} of {n} elements off by up to {float(err.max()):.3g} "
                f"(allowed {rtol:.2g} x |ref| + {atol * rms:.3g}; reference rms {rms:.3g})")
    norm_r = float(r.norm())
    if float(err.norm()) > ntol * norm_r:
        return f"norm-relative error {float(err.norm()) / max(norm_r, 1e-300):.3g} > {ntol:.2g}"
    return None

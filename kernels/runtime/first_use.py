"""Checked first use (issue 23): the first call of every Triton op but the convolution's, per
signature (op, shapes, dtypes, strides, scalar arguments), runs the kernel and the reference and
compares them (kernels/runtime/tolerances.py); a mismatch sends that signature to the reference
for the rest of the process, with one warning line. kernels/runtime/dispatch.py calls it; what
it found goes into kernels/runtime/verify.py's record (`STATE.ops`).
"""
from __future__ import annotations

import math
import sys
import time

import torch

from . import verify
from .tolerances import compare, op_tolerance

__all__ = ["signature", "first_use"]

def signature(name: str, args) -> tuple:
    """(op, per argument: a tensor's (shape, dtype, strides), a list as a tuple, anything else as
    itself). On every call of a checked op: kept to a few microseconds."""
    key = [name]
    for a in args:
        if isinstance(a, torch.Tensor):
            key.append((a.shape, a.dtype, a.stride()))
        elif isinstance(a, list):
            key.append(tuple(a))
        else:
            key.append(a)
    return tuple(key)


def _outputs(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (tuple, list)) else [value]


def _dropout_expected(x, y, p):
    """Dropout's output given the kernel's own mask (y != 0 where x != 0): x / (1 - p) where
    kept, else 0; and the kept fraction (None when too few elements to judge)."""
    keep = (y != 0) | torch.isnan(y)
    expected = torch.where(keep, x / (1.0 - p), torch.zeros((), dtype=x.dtype, device=x.device)).to(x.dtype)
    live = x != 0
    n = int(live.sum())
    return expected, (float((keep & live).sum()) / n if n >= 4096 else None)


def first_use(name: str, sig: tuple, triton_impl, reference_impl, args, kwargs, mutates=()):
    """The first call of `sig`: run the kernel and the reference, compare, decide for the rest of
    the process (verify.STATE.ops); returns the result the caller gets (the reference's on a mismatch).
    `mutates`: indices of arguments the op writes in place (SGD, the loss's flag)."""
    start = time.perf_counter()
    try:
        return _first_use(name, sig, triton_impl, reference_impl, args, kwargs, mutates)
    finally:
        verify.STATE.seconds += time.perf_counter() - start


_LOW = (torch.bfloat16, torch.float16)


def _first_use(name, sig, triton_impl, reference_impl, args, kwargs, mutates):
    """The check itself. The reference runs on copies: of the arguments the op writes, and of
    16-bit inputs upcast to fp32 (exact), so the kernel, which computes in fp32 from the same
    values, is held to its one rounding to the output dtype, not to a 16-bit reference's own
    roundings. On a mismatch the written arguments get their values back and the reference runs
    on the real arguments."""
    pristine = {i: args[i].clone() for i in mutates if isinstance(args[i], torch.Tensor)}
    result = triton_impl(*args, **kwargs)
    ref_args = [pristine[i].clone() if i in pristine else
                a.float() if isinstance(a, torch.Tensor) and a.dtype in _LOW else a for i, a in enumerate(args)]
    verify.STATE.op_checks += 1
    try:
        why = None
        if name == "dropout":  # another RNG than the reference's: compare given the kernel's mask, and its rate
            x, p = args[0], float(args[2])
            want, rate = _dropout_expected(x, result, p)
            got, want = [result], [want]
            n = int((x != 0).sum())
            if rate is not None and 0 < p < 1 and abs(rate - (1 - p)) > 6 * math.sqrt(p * (1 - p) / n):
                why = f"kept fraction {rate:.4f}, expected {1 - p:.4f}"
        else:
            expected = reference_impl(*ref_args, **kwargs)
            got, want = _outputs(result), _outputs(expected)
            got += [args[i] for i in pristine]
            want += [ref_args[i] for i in pristine]
        if why is None:
            for a, e in zip(got, want):
                if isinstance(a, torch.Tensor) and isinstance(e, torch.Tensor):
                    why = compare(a, e.to(a.dtype) if a.dtype != e.dtype and not a.is_floating_point() else e,
                                  op_tolerance(a.dtype))
                    if why:
                        break
        if len(got) != len(want):
            why = why or f"{len(got)} outputs instead of {len(want)}"
    except Exception as err:  # a reference that cannot run this case: nothing to compare with, the kernel stays
        why = None
        print(f"[verify] {name}: the reference could not run for the check ({type(err).__name__}: {err})",
              file=sys.stderr)
    if why is None:
        verify.STATE.ops[sig] = True
        verify.note_ran(name, "triton")
        return result
    verify.STATE.ops[sig] = False
    verify.note_ran(name, "reference")
    shape = ", ".join(str(tuple(a.shape)) for a in args if isinstance(a, torch.Tensor))
    dtype = next((str(a.dtype).replace("torch.", "") for a in args if isinstance(a, torch.Tensor)), "")
    verify.record("op-mismatch", f"{name} ({shape}, {dtype}) does not match its reference ({why}): it runs the "
                  "reference from now on in this process", op=name, shape=shape, error=why)
    for i, t in pristine.items():  # the kernel already wrote the real buffers: their values before it
        args[i].copy_(t)
    return reference_impl(*args, **kwargs)

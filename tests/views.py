"""Every tensor argument of every op as the kernels may meet it: dense, a strided view (every
other element of a larger buffer, at a storage offset, the gaps filled with poison) or an
expanded view (stride 0 along one dimension). tests/test_strides.py draws one of these for
each tensor argument of each op and compares the kernel with its reference on the same views.

    view(t, "strided")     same values, strides doubled, storage offset 1 (gaps: NaN, or 77 for ints)
    view(t, "expanded", 0) t's first slice along dim 0 broadcast with stride 0 (values change)
    layouts()              the hypothesis strategy drawing one of LAYOUTS
"""
from __future__ import annotations

import torch
from hypothesis import strategies as st

__all__ = ["LAYOUTS", "layouts", "view", "views"]

LAYOUTS = ("dense", "strided", "expanded")


def layouts():
    return st.sampled_from(LAYOUTS)


def _poison(dtype: torch.dtype):
    """What the gaps of a strided view hold: a value that shows when a kernel reads them."""
    if dtype.is_floating_point:
        return float("nan")
    if dtype == torch.bool:
        return True
    return 77  # out of range for labels, offsets and seeds of the tests' small shapes


def view(t: torch.Tensor, layout: str, dim: int = 0) -> torch.Tensor:
    """`t` as a dense, strided or expanded view (see the module docstring); 0-d and empty
    tensors come back as they are."""
    if layout == "dense" or t.dim() == 0 or t.numel() == 0:
        return t
    if layout == "strided":
        buf = torch.full([2 * s + 1 for s in t.shape], _poison(t.dtype), dtype=t.dtype, device=t.device)
        out = buf[tuple(slice(1, 1 + 2 * s, 2) for s in t.shape)]
        return out.copy_(t)
    if layout == "expanded":
        return t.narrow(dim, 0, 1).expand(t.shape)
    raise ValueError(f"unknown layout {layout!r}")


def views(layout_of: dict, **tensors) -> dict:
    """{name: view(tensor, layout_of[name])} for the named tensors (dense where not named)."""
    return {name: view(t, layout_of.get(name, "dense")) for name, t in tensors.items()}

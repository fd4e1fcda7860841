"""What every launcher in `kernels/` shares: the checks (kernels/runtime/checks.py) and layout helpers
(kernels/runtime/layout.py), gathered here for the launchers, and the jit helpers of the kernels.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .runtime.checks import (
    FLOAT_DTYPES,
    MAX_PIXELS,
    check_pixel_count,
    check_same_device,
    check_tensor,
    interpreting,
    pair,
)
from .runtime.layout import as_format, cdiv, empty_4d, is_dense, memory_format

__all__ = ["FLOAT_DTYPES", "MAX_PIXELS", "check_pixel_count", "check_same_device", "check_tensor", "interpreting",
           "pair", "as_format", "cdiv", "empty_4d", "is_dense", "memory_format", "pixel_coords", "pixel_offsets"]


# --------------------------------------------------------------------------- jit helpers
@triton.jit
def pixel_coords(pix, height, width):
    """(n, h, w) of flattened pixel indices pix = (n * height + h) * width + w."""
    n = pix // (height * width)
    rem = pix - n * (height * width)
    h = rem // width
    w = rem - h * width
    return n, h, w


@triton.jit
def pixel_offsets(pix, height, width, stride_n, stride_h, stride_w):
    """Element offsets (int64) of flattened pixel indices pix = (n * height + h) * width + w
    in a 4-D tensor with the given strides; works for NCHW, NHWC and any other strides."""
    n, h, w = pixel_coords(pix, height, width)
    return n.to(tl.int64) * stride_n + h.to(tl.int64) * stride_h + w.to(tl.int64) * stride_w

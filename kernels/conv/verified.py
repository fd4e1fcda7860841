"""What the verified tuning of a conv pass compares against (kernels/runtime/verify.py): for each
pass, a `ConvCheck` built from the launcher's own arguments, its reference PyTorch's
convolution in the same dtype (cuDNN on a GPU; tf32 as torch.backends.cudnn.allow_tf32 says).
The launchers hand `launch` a closure making one (kernels/conv/common.py), built only when a
plan is made or a pass runs the reference, so the steady state pays nothing for it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..runtime.verify import ConvCheck
from .common import ConvGeometry, dot_precision


def describe(geom: ConvGeometry, dtype: torch.dtype) -> str:
    """A problem in one phrase: x shape, weight shape, stride, padding, groups, dtype."""
    return (f"x {tuple(geom.input_shape)} w {tuple(geom.weight_shape)} stride {geom.stride_h},{geom.stride_w} "
            f"pad {geom.pad_h},{geom.pad_w} groups {geom.groups} {str(dtype).replace('torch.', '')}")


def _once(fn):
    value = []

    def get():
        if not value:
            value.append(fn())
        return value[0]
    return get


def _channels(weight, c_per_g: int):
    """The weight with zero input channels up to `c_per_g` (conv1's padded image: 3 -> 4; the
    forward kernel pads its weight matrix the same way)."""
    if weight.shape[1] == c_per_g:
        return weight
    return F.pad(weight, (0, 0, 0, 0, 0, c_per_g - weight.shape[1]))


def fwd_check(x, weight, bias, geom: ConvGeometry, relu: bool, y) -> ConvCheck:
    def reference():
        z = F.conv2d(x, _channels(weight, geom.c_per_g), bias, (geom.stride_h, geom.stride_w),
                     (geom.pad_h, geom.pad_w), 1, geom.groups)
        return (torch.relu(z) if relu else z,)
    reference = _once(reference)
    return ConvCheck("fwd", describe(geom, x.dtype), (y,), lambda: (y,), reference,
                     lambda: y.copy_(reference()[0]), x.dtype, dot_precision(x.dtype),
                     geom.c_per_g * geom.kernel_h * geom.kernel_w)


def dgrad_check(dy, weight, geom: ConvGeometry, relu_input, dx) -> ConvCheck:
    """dy already masked by the conv's own ReLU; `relu_input`: the epilogue's mask (x > 0)."""
    def reference():
        g = torch.nn.grad.conv2d_input(geom.input_shape, weight, dy, (geom.stride_h, geom.stride_w),
                                       (geom.pad_h, geom.pad_w), 1, geom.groups)
        if relu_input is not None:  # threshold_backward: NaN x passes
            g = torch.where(relu_input <= 0, torch.zeros((), dtype=g.dtype, device=g.device), g)
        return (g,)
    reference = _once(reference)
    return ConvCheck("dgrad", describe(geom, dy.dtype), (dx,), lambda: (dx,), reference,
                     lambda: dx.copy_(reference()[0]), dy.dtype, dot_precision(dy.dtype),
                     geom.k_per_g * geom.kernel_h * geom.kernel_w)


def wgrad_check(dy, x, geom: ConvGeometry, dw, db, partials: tuple, finish) -> ConvCheck:
    """dw / db: the pass's outputs (either None where not asked); `partials`: the buffers the
    kernel writes (dw and db themselves with one split); `finish()` sums the splits into them."""
    def reference():
        w = None
        if dw is not None:
            w = torch.nn.grad.conv2d_weight(x, geom.weight_shape, dy, (geom.stride_h, geom.stride_w),
                                            (geom.pad_h, geom.pad_w), 1, geom.groups)
        b = dy.sum((0, 2, 3), dtype=torch.float32).to(dy.dtype) if db is not None else None
        return w, b
    reference = _once(reference)

    def result():
        finish()
        return dw, db

    def fallback():
        w, b = reference()
        if dw is not None:
            dw.copy_(w)
        if db is not None:
            db.copy_(b)

    return ConvCheck("wgrad", describe(geom, dy.dtype), partials, result, reference, fallback, dy.dtype,
                     dot_precision(dy.dtype), geom.n_out_pix)

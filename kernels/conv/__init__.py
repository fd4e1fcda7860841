"""2-D convolution in Triton (the paper's five conv layers, section 3.5): implicit-GEMM forward
with fused bias + ReLU, input gradient and weight/bias gradients.

    y = kernels.conv2d(x, weight, bias=None, stride=1, padding=0, groups=1, relu=False)

x (N, C, H, W), weight (K, C/groups, KH, KW), bias (K,); fp32 (tf32 tensor cores when
torch.backends.cudnn.allow_tf32, as cuDNN; true fp32 otherwise), bf16 or fp16, always fp32
accumulation; output in x's dtype and memory format. Dilation 1 only.

Package kernels/conv/: fwd.py, dgrad.py, wgrad.py (one kernel each, with its launcher),
common.py (geometry, checks, index helpers, the ReLU-gradient mask, launch), input_layout.py
(few-channel inputs: conv1's padded image), configs.py (tile configs, autotuning, the
wgrad split model), verified.py (what a pass's tile candidates are checked against, issue 23).
This file holds the autograd Function.

Layout: the kernels are fast on channels_last (C contiguous), the layout to use. A contiguous
NCHW x (or dy) is converted to channels_last once per call (a copy); outputs are written
straight into the caller's format. Few input channels (conv1's 3) are read from a
zero-padded image (`pad_input`: channels padded to a whole 8-byte word per pixel, 3 -> 4, and
the spatial padding written into the buffer, so the loops test no image side). With
relu=True the forward saves its output y and the backward masks dy by y > 0 once
(`common.relu_grad`, one elementwise pass) for both GEMMs: inside their loops the mask would
cost a third load stream and push wgmma's A operand through registers. The fused ReLU keeps
NaN, as torch.relu. Double backward (create_graph=True) is not supported: it raises.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .._common import as_format, memory_format
from .common import ConvGeometry, conv_arguments, conv_geometry, relu_grad
from .dgrad import conv2d_input_grad
from .fwd import conv2d_forward
from .input_layout import pad_input, unpad_weight_grad
from .wgrad import conv2d_weight_grad

__all__ = [
    "Conv2dFunction",
    "ConvGeometry",
    "conv2d",
    "conv_arguments",
    "conv2d_forward",
    "conv2d_input_grad",
    "conv2d_weight_grad",
    "conv_geometry",
]


class Conv2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, groups, relu, dilation):
        geom = conv_geometry(x, weight, bias, stride, padding, groups, dilation)
        fmt = memory_format(x)
        x_k, w_k, geom_k = pad_input(x, weight, geom)  # channels_last; conv1: its zero-padded 4-channel image
        y = conv2d_forward(x_k, w_k, bias, geom_k, relu=relu, out_format=fmt)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        ctx.save_for_backward(x_k if need_w else None, weight if need_x else None,
                              y if relu and (need_x or need_w or need_b) else None)
        ctx.geom, ctx.geom_k, ctx.fmt, ctx.weight_fmt = geom, geom_k, fmt, memory_format(weight)
        return y

    @staticmethod
    @once_differentiable  # the backward's own kernels have no backward: create_graph=True raises
    def backward(ctx, dy):
        x_k, weight, y = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dy = as_format(dy, torch.channels_last)
        if y is not None:  # the fused ReLU's gradient, once for both GEMMs
            dy = relu_grad(dy, y)
        dx = dw = db = None
        if need_x:  # skipped for conv1, whose input is the image
            dx = conv2d_input_grad(dy, weight, ctx.geom, out_format=ctx.fmt)
        if need_w or need_b:
            dw, db = conv2d_weight_grad(dy, x_k, ctx.geom_k, weight_grad=need_w, bias_grad=need_b,
                                        weight_format=ctx.weight_fmt)
            if need_w:
                dw = unpad_weight_grad(dw, ctx.geom, ctx.weight_fmt)
        return dx, dw, db, None, None, None, None, None


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0,
           groups: int = 1, relu: bool = False, *, dilation=1) -> torch.Tensor:
    """2-D convolution (cross-correlation) with zero padding, optionally followed by ReLU,
    as F.conv2d (+ F.relu). `dilation` is accepted only to reject values other than 1."""
    return Conv2dFunction.apply(x, weight, bias, stride, padding, groups, relu, dilation)

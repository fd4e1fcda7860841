"""2-D convolution in Triton (the paper's five conv layers, section 3.5): implicit-GEMM forward
with fused bias + ReLU, input gradient and weight/bias gradients.

    y = kernels.conv2d(x, weight, bias=None, stride=1, padding=0, groups=1, relu=False)

x (N, C, H, W), weight (K, C/groups, KH, KW), bias (K,); fp32 (tf32 tensor cores when
torch.backends.cudnn.allow_tf32, as cuDNN; true fp32 otherwise), bf16 or fp16, always fp32
accumulation; output in x's dtype and memory format. Dilation 1 only.

The path from `kernels.conv2d` to the Triton kernel, one file per step:

    op.py       `conv2d` checks the arguments and calls the op alexnet_triton::conv2d (through
                kernels/runtime/dispatch.py's eager fast path outside torch.compile); the op's
                Triton implementation `_conv2d_triton` pads conv1's input and calls the launcher;
                its autograd (`_conv2d_backward`) calls the two gradient ops the same way.
    fwd.py      `conv2d_forward`, the launcher: layouts, the output, the grid, then
                `plans.launch`, which runs the launch plan's tile (chosen and verified once
                per problem, from kernels/conv/configs.py's candidates) of the kernel
                `_conv_fwd_kernel` in the same file.
    dgrad.py    `conv2d_input_grad` and its kernel; wgrad.py `conv2d_weight_grad` and its kernel.
    common.py   geometry and argument checks, the index helpers the three kernels share, the
                ReLU-gradient mask; plans.py the launch plans (verified, cached, shared);
                input_layout.py conv1's zero-padded image;
                configs.py the tile configs, autotuning and the wgrad split model; verified.py
                what a pass's tile candidates are checked against before a plan is made (issue 23).

The reference is `kernels.reference.conv2d` (F.conv2d); the tests tests/test_conv.py; the
benchmark bench/bench_conv.py; the compile-only reading bench/conv_sass.py.

Layout: the kernels are fast on channels_last (C contiguous), the layout to use. A contiguous
NCHW x (or dy) is converted to channels_last once per call (a copy); outputs are written
straight into the caller's format. Few input channels (conv1's 3) are read from a
zero-padded image (`pad_input`: channels padded to a whole 8-byte word per pixel, 3 -> 4, and
the spatial padding written into the buffer, so the loops test no image side). The fused
ReLU keeps NaN, as torch.relu; its gradient mask is applied once, outside the GEMM loops
(`common.relu_grad`), or by the consumer (kernels/conv/op.py). Double backward
(create_graph=True) is not supported: it raises.

The launchers are looked up on this package at call time by op.py (tests patch them here).
"""
from __future__ import annotations

from .common import ConvGeometry, conv_arguments, conv_geometry, relu_grad
from .dgrad import conv2d_input_grad
from .fwd import conv2d_forward
from .input_layout import pad_input, unpad_weight_grad
from .wgrad import conv2d_weight_grad

__all__ = [
    "ConvGeometry",
    "conv_arguments",
    "conv2d_forward",
    "conv2d_input_grad",
    "conv2d_weight_grad",
    "conv_geometry",
    "pad_input",
    "relu_grad",
    "unpad_weight_grad",
]

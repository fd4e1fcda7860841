"""Triton kernels for AlexNet, each with a plain-PyTorch reference in `kernels.reference`.

    kernels.relu_lrn(x, size=5, alpha=1e-4, beta=0.75, k=2.0)   fused ReLU + local response norm
    kernels.local_response_norm(x, ...)                          the same without the ReLU
    kernels.max_pool2d(x, kernel_size=3, stride=2)               overlapping max-pooling
    kernels.dropout(x, p=0.5, training=True)                     seeded inverted dropout
    kernels.column_dropout(x, seeds, call, p=0.5)                dropout, a Philox stream per column
    kernels.conv2d(x, w, bias=None, stride=1, padding=0, groups=1, relu=False)
                                                                 implicit-GEMM convolution (+ ReLU)
    kernels.augment(images, offsets, flips, shift, mean, size=224, dtype=..., channels_last=...)
                                                                 crop + flip + mean + PCA lighting
    kernels.sgd_step_(weights, velocity, grads, lr, ...)         the paper's SGD step, in place

Each function is a thin call of a PyTorch custom op, torch.ops.alexnet_triton.* (kernels/ops.py),
so torch.compile, torch.export and autograd see one node per kernel. The device of the tensors
picks the implementation: the Triton kernel on CUDA tensors, the plain-PyTorch reference on
CPU tensors (the Triton kernel through Triton's interpreter when TRITON_INTERPRET=1). The
network ops take fp32, bf16 or fp16, any strides (contiguous NCHW or channels_last are the
fast ones), and return their output in the input's memory format; `augment` turns uint8 NHWC
images into the network's input in the dtype and memory format asked for.
"""
from . import ops  # registers the alexnet_triton ops before anything calls them
from .augment import augment
from .dropout import column_dropout, dropout
from .lrn import local_response_norm, relu_lrn
from .maxpool import max_pool2d
from .ops import conv2d
from .sgd import sgd_step_

__all__ = ["relu_lrn", "local_response_norm", "max_pool2d", "dropout", "column_dropout", "conv2d", "augment",
           "sgd_step_", "ops"]

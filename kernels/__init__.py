"""Triton kernels for AlexNet, each with a plain-PyTorch reference in `kernels.reference`.

    kernels.relu_lrn(x, size=5, alpha=1e-4, beta=0.75, k=2.0)   fused ReLU + local response norm
    kernels.local_response_norm(x, ...)                          the same without the ReLU
    kernels.max_pool2d(x, kernel_size=3, stride=2)               overlapping max-pooling
    kernels.dropout(x, p=0.5, training=True)                     seeded inverted dropout
    kernels.conv2d(x, w, bias=None, stride=1, padding=0, groups=1, relu=False)
                                                                 implicit-GEMM convolution (+ ReLU)
    kernels.augment(images, offsets, flips, shift, mean, size=224, dtype=..., channels_last=...)
                                                                 crop + flip + mean + PCA lighting

Every op takes CUDA tensors (or CPU tensors under TRITON_INTERPRET=1). The network ops take
fp32, bf16 or fp16, contiguous NCHW or channels_last, and return their output in the input's
memory format; `augment` turns uint8 NHWC images into the network's input in the dtype and
memory format asked for.
"""
from .augment import augment
from .conv import conv2d
from .dropout import dropout
from .lrn import local_response_norm, relu_lrn
from .maxpool import max_pool2d

__all__ = ["relu_lrn", "local_response_norm", "max_pool2d", "dropout", "conv2d", "augment"]

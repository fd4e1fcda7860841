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

# What the model (alexnet/) uses beyond the ops above; alexnet/ imports kernels through these names
# only (tests/test_imports.py): the loss, conv1's zero-padded input buffer, the convolution's launch
# plans (rank 0's choices for every rank), where a leaf's gradient may be written (the fused
# optimizer's flat buffer), the kernel checks (runtime/verify.py), the layout helpers, and what a
# device has (kernels/runtime/device.py).
from .augment import (
           augment,
           augment_padded,  # noqa: E402, I001
)
from .conv.common import ConvGeometry  # noqa: E402
from .conv.input_layout import clone_padded, padded_geometry, padded_view, refill_padded, takes_padded_image  # noqa: E402
from .conv.plans import adopt_plans, export_plans  # noqa: E402
from .cross_entropy import softmax_cross_entropy  # noqa: E402
from .dropout import column_dropout, dropout
from .lrn import local_response_norm, relu_lrn
from .maxpool import max_pool2d
from .ops import conv2d
from .runtime import verify  # noqa: E402  (the kernel checks' switch, log, summary, implementations)
from .runtime.device import auto_precision, precision_refusal, triton_refusal  # noqa: E402
from .runtime.device import spec_for as device_spec  # noqa: E402
from .runtime.dispatch import grad_into, has_grad_slot, set_grad_into  # noqa: E402
from .runtime.launch_params import SGD_GPU_BLOCK  # noqa: E402
from .runtime.layout import cdiv, channels_last_block, is_dense, memory_format  # noqa: E402
from .sgd import sgd_step_

__all__ = ["relu_lrn", "local_response_norm", "max_pool2d", "dropout", "column_dropout", "conv2d", "augment",
           "sgd_step_", "ops",
           # for the model
           "softmax_cross_entropy", "augment_padded", "ConvGeometry", "adopt_plans", "export_plans", "clone_padded",
           "padded_geometry", "padded_view", "refill_padded", "takes_padded_image", "grad_into", "has_grad_slot",
           "set_grad_into", "verify", "SGD_GPU_BLOCK", "cdiv", "channels_last_block", "is_dense", "memory_format",
           # what the device has (precision, whether the Triton kernels run there)
           "device_spec", "auto_precision", "precision_refusal", "triton_refusal"]

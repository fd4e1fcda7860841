"""Every kernel of this package as a PyTorch custom op, namespace `alexnet_triton` (torch.library).

    torch.ops.alexnet_triton.conv2d(x, weight, bias, stride, padding, groups, relu, input_relu=False,
                                    dy_masked=False) -> y
    torch.ops.alexnet_triton.conv2d_input_grad(dy, weight, y, input_size, stride, padding, groups,
                                               channels_last, relu_input=None) -> dx
    torch.ops.alexnet_triton.conv2d_weight_grad(dy, x, weight, y, stride, padding, groups, weight_grad,
                                                bias_grad) -> (dw, db)    (an empty one where not asked)
    torch.ops.alexnet_triton.relu_lrn / local_response_norm(x, size, alpha, beta, k, groups, save_u) -> (y, u)
    torch.ops.alexnet_triton.lrn_backward(dy, x, u, size, alpha, beta, k, relu, groups) -> dx
    torch.ops.alexnet_triton.max_pool2d(x, kernel_size, stride, input_relu=False) -> (y, argmax)
    torch.ops.alexnet_triton.max_pool2d_backward(dy, argmax, input_size, channels_last, kernel_size, stride,
                                                 relu_out=None) -> dx
    torch.ops.alexnet_triton.dropout(x, seed, p) -> y                   (its own backward: same seed)
    torch.ops.alexnet_triton.augment(images, offsets, flips, shift, mean, size, dtype, channels_last) -> y
    torch.ops.alexnet_triton.sgd_step_(weights!, velocity!, grads, lr, momentum, weight_decay, n_decay,
                                       low_precision_out!?) -> ()

Why custom ops: torch.compile, torch.export and AOT autograd see each kernel as one opaque
node with a schema, a fake (meta) implementation that gives its outputs' shapes, dtypes and
strides, and a backward made of custom ops too, so compiled graphs keep the Triton kernels
in the forward and the backward (`torch.library.opcheck` checks all of it, tests/test_ops.py).
The ops are `custom_op`s calling the launchers, not `triton_op`s: the launchers do host-side
work (argument checks, the conv autotuners, conv1's channel padding, wgrad's split count)
that `wrap_triton` tracing cannot follow, and Inductor would not fuse into these kernels anyway.

The one op-selection rule: the device of the tensors picks the implementation.
    CUDA tensors -> the Triton kernel;
    CPU tensors  -> the plain-PyTorch reference (kernels/reference.py), or the Triton kernel
                    through Triton's interpreter when TRITON_INTERPRET=1 (as in the tests).
The outputs of both implementations have the same shapes, dtypes and strides (the fake's).

Non-tensor arguments are in the schema; the multi-output forwards return what their backward
needs (LRN's u, pooling's argmax), and the public functions (`kernels.conv2d`,
`kernels.relu_lrn`, ...) return the first output only. Dropout takes its seed as a tensor, so
the op is a function of its inputs and its backward applies the same mask again.
"""
import torch

from . import reference
from ._common import check_tensor, interpreting, is_dense, memory_format
from .augment import launch_augment
from .dropout import apply_dropout_mask
from .lrn import relu_lrn_backward, relu_lrn_forward
from .maxpool import argmax_dtype, max_pool2d_backward, max_pool2d_forward
from .sgd import launch_sgd_step

# The convolution: its launchers are looked up on the conv package at call time (tests patch
# them there).
from . import conv as _conv  # isort: skip
from .conv import ConvGeometry  # isort: skip

__all__ = ["NAMESPACE", "conv2d"]

NAMESPACE = "alexnet_triton"
ops = torch.ops.alexnet_triton
TRITON_IMPLS = {}  # name -> (op, its Triton implementation); bench/launch_stubs.py runs them on meta tensors


def _define(name: str, schema: str, triton_impl, reference_impl, fake, mutates_args=()):
    """Register op `alexnet_triton::name` with the op-selection rule: the Triton implementation
    for CUDA tensors; for CPU tensors the reference, or Triton when the interpreter is on
    (checked per call, so tests can switch it)."""
    op = torch.library.custom_op(f"{NAMESPACE}::{name}", triton_impl, mutates_args=mutates_args,
                                 device_types="cuda", schema=schema)

    def cpu_impl(*args):
        return (triton_impl if interpreting() else reference_impl)(*args)

    op.register_kernel("cpu", cpu_impl)
    op.register_fake(fake)
    TRITON_IMPLS[name] = (op, triton_impl)
    return op


def _empty(shape, like: torch.Tensor, fmt=torch.contiguous_format, dtype=None) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=fmt)


def _in_format(t: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """t copied into a fresh dense tensor of format `fmt` (the strides the fake promises)
    unless it already has exactly those strides."""
    out = _empty(t.shape, t, fmt)
    return t if t.stride() == out.stride() else out.copy_(t)


# =========================================================================== convolution
def _conv_out_shape(x, weight, stride, padding):
    (sh, sw), (ph, pw) = stride, padding
    return (x.shape[0], weight.shape[0], (x.shape[2] + 2 * ph - weight.shape[2]) // sh + 1,
            (x.shape[3] + 2 * pw - weight.shape[3]) // sw + 1)


# The ReLU between two convolutions (conv3 -> conv4 -> conv5): its gradient mask, dy * (y > 0), is
# applied by the consumer's dgrad epilogue (input_relu: dx * (x > 0), with x = the producer's y),
# and the producer, told so (dy_masked), skips its own elementwise masking pass. Both flags
# describe the wiring, so they are set together from one place (alexnet/model.py
# `relu_mask_moves`: a conv whose only consumer is a conv with input_relu, or a max-pool with
# input_relu (conv5 -> pool5), gets dy_masked); the op's forward ignores them. All masks here
# follow torch's ReLU gradient (threshold_backward): zero where y <= 0, a NaN y passes dy.
#   input_relu: x is a ReLU's output (>= 0 or NaN); the x-gradient returned is dx * (x > 0)
#               (the gradient with respect to that ReLU's input; NaN x passes, as torch's).
#   dy_masked:  with relu, the dy arriving is already zero where y <= 0: no mask pass.
def _conv2d_triton(x, weight, bias, stride, padding, groups, relu, input_relu=False, dy_masked=False):
    geom = _conv.conv_geometry(x, weight, bias, tuple(stride), tuple(padding), groups)
    x_k, w_k, geom_k = _conv.pad_input(x, weight, geom)  # channels_last; conv1: 3 -> 4 channels
    return _conv.conv2d_forward(x_k, w_k, bias, geom_k, relu=relu, out_format=memory_format(x))


def _conv2d_reference(x, weight, bias, stride, padding, groups, relu, input_relu=False, dy_masked=False):
    return _in_format(reference.conv2d(x, weight, bias, stride, padding, groups, relu), memory_format(x))


def _conv2d_fake(x, weight, bias, stride, padding, groups, relu, input_relu=False, dy_masked=False):
    return _empty(_conv_out_shape(x, weight, stride, padding), x, memory_format(x))


_define("conv2d", "(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, int groups, bool relu, "
        "bool input_relu=False, bool dy_masked=False) -> Tensor", _conv2d_triton, _conv2d_reference, _conv2d_fake)


def _dgrad_triton(dy, weight, y, input_size, stride, padding, groups, channels_last, relu_input=None):
    n, c, h, w = input_size
    k, _, kh, kw = weight.shape
    geom = ConvGeometry(n, c, h, w, k, kh, kw, *stride, *padding, groups)
    dy = dy.contiguous(memory_format=torch.channels_last)
    y = y.contiguous(memory_format=torch.channels_last) if y is not None else None
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return _conv.conv2d_input_grad(dy, weight, geom, y=y, relu_input=relu_input, out_format=fmt)


def _relu_mask(grad, relu_out):
    """grad where relu_out > 0, else 0: torch's threshold_backward (a NaN relu_out passes grad)."""
    return torch.where(relu_out <= 0, 0, grad)


def _dgrad_reference(dy, weight, y, input_size, stride, padding, groups, channels_last, relu_input=None):
    if y is not None:
        dy = _relu_mask(dy, y)
    dx = torch.ops.aten.convolution_backward(dy, dy.new_empty(input_size), weight, None, stride, padding, [1, 1],
                                             False, [0, 0], groups, [True, False, False])[0]
    if relu_input is not None:
        dx = _relu_mask(dx, relu_input)
    return _in_format(dx, torch.channels_last if channels_last else torch.contiguous_format)


def _dgrad_fake(dy, weight, y, input_size, stride, padding, groups, channels_last, relu_input=None):
    return _empty(input_size, dy, torch.channels_last if channels_last else torch.contiguous_format)


_define("conv2d_input_grad", "(Tensor dy, Tensor weight, Tensor? y, SymInt[4] input_size, int[2] stride, "
        "int[2] padding, int groups, bool channels_last, Tensor? relu_input=None) -> Tensor", _dgrad_triton,
        _dgrad_reference, _dgrad_fake)


def _wgrad_triton(dy, x, weight, y, stride, padding, groups, weight_grad, bias_grad):
    geom = _conv.conv_geometry(x, weight, None, tuple(stride), tuple(padding), groups)
    x_k, geom_k = None, geom  # only the bias gradient: x is never read
    if weight_grad:
        x_k, _, geom_k = _conv.pad_input(x, weight, geom)  # as the forward read it
    dy = dy.contiguous(memory_format=torch.channels_last)
    y = y.contiguous(memory_format=torch.channels_last) if y is not None else None
    fmt = memory_format(weight)
    dw, db = _conv.conv2d_weight_grad(dy, x_k, geom_k, y=y, weight_grad=weight_grad, bias_grad=bias_grad,
                                      weight_format=fmt)
    return (_conv.unpad_weight_grad(dw, geom, fmt) if weight_grad else dy.new_empty(0),
            db if bias_grad else dy.new_empty(0))


def _wgrad_reference(dy, x, weight, y, stride, padding, groups, weight_grad, bias_grad):
    if y is not None:
        dy = _relu_mask(dy, y)
    _, dw, db = torch.ops.aten.convolution_backward(dy, x, weight, [weight.shape[0]], stride, padding, [1, 1],
                                                    False, [0, 0], groups, [False, weight_grad, bias_grad])
    return (_in_format(dw, memory_format(weight)) if weight_grad else dy.new_empty(0),
            db if bias_grad else dy.new_empty(0))


def _wgrad_fake(dy, x, weight, y, stride, padding, groups, weight_grad, bias_grad):
    return (_empty(weight.shape, dy, memory_format(weight)) if weight_grad else dy.new_empty(0),
            _empty(weight.shape[:1], dy) if bias_grad else dy.new_empty(0))


_define("conv2d_weight_grad", "(Tensor dy, Tensor x, Tensor weight, Tensor? y, int[2] stride, int[2] padding, "
        "int groups, bool weight_grad, bool bias_grad) -> (Tensor, Tensor)", _wgrad_triton, _wgrad_reference,
        _wgrad_fake)


def _conv2d_setup(ctx, inputs, output):
    x, weight, _bias, stride, padding, groups, relu, *flags = inputs
    input_relu, dy_masked = (*flags, False, False)[:2]  # the schema's defaults when not passed
    ctx.save_for_backward(x, weight, output if relu and not dy_masked else None)
    ctx.params = (stride, padding, groups, input_relu)


def _conv2d_backward(ctx, dy):
    x, weight, y = ctx.saved_tensors
    stride, padding, groups, input_relu = ctx.params
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    dx = dw = db = None
    if y is not None:  # the fused ReLU's gradient, once for both GEMMs (unless the consumer's dgrad did it)
        dy = _relu_mask(dy, y)
    if need_x:  # skipped for conv1, whose input is the image
        dx = ops.conv2d_input_grad(dy, weight, None, x.shape, stride, padding, groups,
                                   memory_format(x) == torch.channels_last, x if input_relu else None)
    if need_w or need_b:
        dw, db = ops.conv2d_weight_grad(dy, x, weight, None, stride, padding, groups, need_w, need_b)
    return dx, dw if need_w else None, db if need_b else None, None, None, None, None, None, None


torch.library.register_autograd(f"{NAMESPACE}::conv2d", _conv2d_backward, setup_context=_conv2d_setup)


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0,
           groups: int = 1, relu: bool = False, *, dilation=1, input_relu: bool = False,
           dy_masked: bool = False) -> torch.Tensor:
    """2-D convolution (cross-correlation) with zero padding, optionally followed by ReLU, as
    F.conv2d (+ F.relu); op alexnet_triton::conv2d. `dilation` is accepted only to reject
    values other than 1. Output in x's dtype and memory format. `input_relu` (x is a ReLU's
    output: the x-gradient is taken through that ReLU) and `dy_masked` (with relu: the incoming
    gradient is already zero where y <= 0) move the ReLU's gradient mask from the producing
    conv to the consuming conv's dgrad epilogue; set them together (see above `_conv2d_triton`)."""
    check_tensor(x, "x", ndim=4, kernel_device=False)
    check_tensor(weight, "weight", ndim=4, kernel_device=False)
    if bias is not None:
        check_tensor(bias, "bias", ndim=1, kernel_device=False)
    stride, padding, groups = _conv.conv_arguments(stride, padding, groups, dilation)
    if dy_masked and not relu:
        raise ValueError("dy_masked=True needs relu=True: it skips the fused ReLU's gradient mask")
    return ops.conv2d(x, weight, bias, stride, padding, groups, relu, input_relu, dy_masked)


# ============================================================================ LRN
def _lrn_ops(name: str, relu: bool):
    """alexnet_triton::{name}: (y, u) with u = y / s (saved for the backward) if save_u, else
    an empty u (inference)."""

    def triton_impl(x, size, alpha, beta, k, groups, save_u):
        y, u = relu_lrn_forward(x, size, alpha, beta, k, relu, groups, save_u=save_u)
        return y, (u if save_u else x.new_empty(0))

    def reference_impl(x, size, alpha, beta, k, groups, save_u):
        a, fmt = (torch.relu(x) if relu else x), memory_format(x)
        y = _in_format(reference.local_response_norm(a, size, alpha, beta, k, groups), fmt)
        # u = a * s^-(beta + 1): the same normalisation with beta + 1
        u = _in_format(reference.local_response_norm(a, size, alpha, beta + 1, k, groups), fmt)
        return y, (u if save_u else x.new_empty(0))

    def fake(x, size, alpha, beta, k, groups, save_u):
        fmt = memory_format(x)
        return _empty(x.shape, x, fmt), (_empty(x.shape, x, fmt) if save_u else x.new_empty(0))

    _define(name, "(Tensor x, int size, float alpha, float beta, float k, int groups, bool save_u) "
            "-> (Tensor, Tensor)", triton_impl, reference_impl, fake)

    def setup(ctx, inputs, output):
        x, size, alpha, beta, k, groups, save_u = inputs
        ctx.save_for_backward(x, output[1])
        ctx.params = (size, alpha, beta, k, groups, save_u)

    def backward(ctx, dy, _du):
        x, u = ctx.saved_tensors
        size, alpha, beta, k, groups, save_u = ctx.params
        if not save_u:  # run without grad in the forward: recompute u
            u = getattr(ops, name)(x, size, alpha, beta, k, groups, True)[1]
        return ops.lrn_backward(dy, x, u, size, alpha, beta, k, relu, groups), None, None, None, None, None, None

    torch.library.register_autograd(f"{NAMESPACE}::{name}", backward, setup_context=setup)


def _lrn_backward_triton(dy, x, u, size, alpha, beta, k, relu, groups):
    return relu_lrn_backward(dy, x, u, size, alpha, beta, k, relu, groups)


def _channel_window_sum(v, lo: int, hi: int, groups: int):
    """sum_{d=-lo..hi} v[:, c + d], zero outside each group's channels."""
    def one(part):
        padded = torch.nn.functional.pad(part, (0, 0, 0, 0, lo, hi))
        return sum(padded[:, d:d + part.shape[1]] for d in range(lo + hi + 1))
    return torch.cat([one(part) for part in v.chunk(groups, dim=1)], dim=1) if groups > 1 else one(v)


def _lrn_backward_reference(dy, x, u, size, alpha, beta, k, relu, groups):
    """kernels/lrn.py's formula in torch ops (autograd does not run inside an op's kernel):
    dx = [x > 0] (dy s^-beta - 2 alpha beta a * sum_{i: j in window(i)} dy[i] u[i])."""
    lo, hi = size // 2, (size - 1) // 2
    a = torch.relu(x) if relu else x
    s = k + alpha * _channel_window_sum(a.square(), lo, hi, groups)
    dx = dy * s.pow(-beta) - (2 * alpha * beta) * a * _channel_window_sum(dy * u, hi, lo, groups)  # mirrored window
    if relu:
        dx = torch.where(x > 0, dx, 0)
    return _in_format(dx, memory_format(u))


def _lrn_backward_fake(dy, x, u, size, alpha, beta, k, relu, groups):
    return _empty(u.shape, u, memory_format(u))


_define("lrn_backward", "(Tensor dy, Tensor x, Tensor u, int size, float alpha, float beta, float k, bool relu, "
        "int groups) -> Tensor", _lrn_backward_triton, _lrn_backward_reference, _lrn_backward_fake)
_lrn_ops("relu_lrn", relu=True)
_lrn_ops("local_response_norm", relu=False)


# ============================================================================ max-pooling
def _argmax_dtype(kernel_size) -> torch.dtype:
    return argmax_dtype(kernel_size[0] * kernel_size[1])


def _pool_triton(x, kernel_size, stride, input_relu=False):
    return max_pool2d_forward(x, tuple(kernel_size), tuple(stride))


def _pool_reference(x, kernel_size, stride, input_relu=False):
    (_, kw), (sh, sw) = kernel_size, stride
    y, flat = torch.nn.functional.max_pool2d(x, kernel_size, stride, return_indices=True)
    width = x.shape[3]
    oh = torch.arange(y.shape[2], device=x.device)[:, None] * sh
    ow = torch.arange(y.shape[3], device=x.device)[None, :] * sw
    local = (flat // width - oh) * kw + (flat % width - ow)  # window-local kh * KW + kw, as the kernel
    fmt = memory_format(x)
    return _in_format(y, fmt), _in_format(local.to(_argmax_dtype(kernel_size)), fmt)


def _pool_fake(x, kernel_size, stride, input_relu=False):
    (kh, kw), (sh, sw) = kernel_size, stride
    shape = (x.shape[0], x.shape[1], (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1)
    fmt = memory_format(x)
    return _empty(shape, x, fmt), _empty(shape, x, fmt, _argmax_dtype(kernel_size))


# input_relu: x is a ReLU's output (conv5's, whose op then skips its mask: dy_masked); the
# backward passes dy only where the pooled y > 0, the gradient through that ReLU too.
_define("max_pool2d", "(Tensor x, int[2] kernel_size, int[2] stride, bool input_relu=False) -> (Tensor, Tensor)",
        _pool_triton, _pool_reference, _pool_fake)


def _pool_backward_triton(dy, idx, input_size, channels_last, kernel_size, stride, relu_out=None):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return max_pool2d_backward(dy, idx, tuple(input_size), fmt, tuple(kernel_size), tuple(stride), relu_out=relu_out)


def _pool_backward_reference(dy, idx, input_size, channels_last, kernel_size, stride, relu_out=None):
    if relu_out is not None:
        dy = _relu_mask(dy, relu_out)
    (_, kw), (sh, sw) = kernel_size, stride
    n, c, height, width = input_size
    idx = idx.long()
    rows = torch.arange(idx.shape[2], device=dy.device)[:, None] * sh + idx // kw
    cols = torch.arange(idx.shape[3], device=dy.device)[None, :] * sw + idx % kw
    dx = dy.new_zeros(n, c, height * width).scatter_add_(2, (rows * width + cols).flatten(2), dy.flatten(2))
    return _in_format(dx.view(input_size), torch.channels_last if channels_last else torch.contiguous_format)


def _pool_backward_fake(dy, idx, input_size, channels_last, kernel_size, stride, relu_out=None):
    return _empty(input_size, dy, torch.channels_last if channels_last else torch.contiguous_format)


_define("max_pool2d_backward", "(Tensor dy, Tensor argmax, SymInt[4] input_size, bool channels_last, "
        "int[2] kernel_size, int[2] stride, Tensor? relu_out=None) -> Tensor", _pool_backward_triton,
        _pool_backward_reference, _pool_backward_fake)


def _pool_setup(ctx, inputs, output):
    x, kernel_size, stride, *flags = inputs
    input_relu = (*flags, False)[0]
    ctx.save_for_backward(output[1], output[0] if input_relu else None)
    ctx.params = (x.shape, memory_format(x) == torch.channels_last, kernel_size, stride)


def _pool_backward(ctx, dy, _didx):
    idx, y = ctx.saved_tensors
    return ops.max_pool2d_backward(dy, idx, *ctx.params, y), None, None, None


torch.library.register_autograd(f"{NAMESPACE}::max_pool2d", _pool_backward, setup_context=_pool_setup)


# ============================================================================ dropout
def _dropout_triton(x, seed, p):
    return apply_dropout_mask(x if is_dense(x) else x.contiguous(), seed, p)


def _dropout_reference(x, seed, p):
    """The same op on the CPU: a mask from torch's CPU generator seeded with `seed` (not the
    kernel's Philox stream: the two implementations drop different units for one seed)."""
    g = torch.Generator().manual_seed(int(seed.item()))
    keep = torch.rand(x.shape, generator=g) >= p
    return _dropout_fake(x, seed, p).copy_(x * keep / (1.0 - p))


def _dropout_fake(x, seed, p):
    return torch.empty_like(x) if is_dense(x) else torch.empty_like(x, memory_format=torch.contiguous_format)


_define("dropout", "(Tensor x, Tensor seed, float p) -> Tensor", _dropout_triton, _dropout_reference,
        _dropout_fake)


def _dropout_setup(ctx, inputs, output):
    _x, seed, p = inputs
    ctx.save_for_backward(seed)  # the mask is regenerated from it: nothing mask-sized is kept
    ctx.p, ctx.layout = p, output.stride()


def _dropout_backward(ctx, dy):
    (seed,) = ctx.saved_tensors
    if dy.stride() != ctx.layout:  # the kernel's mask follows storage order: lay dy out as x
        dy = torch.empty_strided(dy.shape, ctx.layout, dtype=dy.dtype, device=dy.device).copy_(dy)
    return ops.dropout(dy, seed, ctx.p), None, None


torch.library.register_autograd(f"{NAMESPACE}::dropout", _dropout_backward, setup_context=_dropout_setup)


# ============================================================================ augmentation
def _augment_reference(images, offsets, flips, shift, mean, size, dtype, channels_last):
    return reference.augment(images, offsets, flips, shift, mean, size, dtype, channels_last)


def _augment_fake(images, offsets, flips, shift, mean, size, dtype, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return _empty((images.shape[0], 3, size, size), images, fmt, dtype)


_define("augment", "(Tensor images, Tensor offsets, Tensor flips, Tensor shift, Tensor mean, int size, "
        "ScalarType dtype, bool channels_last) -> Tensor", launch_augment, _augment_reference, _augment_fake)


# ============================================================================ SGD step
def _sgd_reference(weights, velocity, grads, lr, momentum, weight_decay, n_decay, low_precision_out):
    reference.sgd_step_(weights, velocity, grads, lr, momentum, weight_decay, n_decay, low_precision_out)


def _sgd_fake(weights, velocity, grads, lr, momentum, weight_decay, n_decay, low_precision_out):
    return None


_define("sgd_step_", "(Tensor(a!) weights, Tensor(b!) velocity, Tensor grads, Tensor lr, float momentum, "
        "float weight_decay, int n_decay, Tensor(c!)? low_precision_out) -> ()", launch_sgd_step, _sgd_reference,
        _sgd_fake, mutates_args=("weights", "velocity", "low_precision_out"))


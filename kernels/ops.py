"""Every kernel of this package as a PyTorch custom op, namespace `alexnet_triton` (torch.library);
the convolution's four (conv2d, its two gradients, relu_grad) are defined in kernels/conv/op.py,
the registration helpers and the fast path in kernels/runtime/dispatch.py.

    torch.ops.alexnet_triton.conv2d(x, weight, bias, stride, padding, groups, relu, input_relu=False,
                                    dy_masked=False) -> y
    torch.ops.alexnet_triton.conv2d_input_grad(dy, weight, y, input_size, stride, padding, groups,
                                               channels_last, relu_input=None) -> dx
    torch.ops.alexnet_triton.conv2d_weight_grad(dy, x, weight, y, stride, padding, groups, weight_grad,
                                                bias_grad) -> (dw, db)    (an empty one where not asked)
    torch.ops.alexnet_triton.relu_lrn / local_response_norm(x, size, alpha, beta, k, groups, save_u) -> (y, u)
    torch.ops.alexnet_triton.lrn_backward(dy, x, u, size, alpha, beta, k, relu, groups) -> dx
    torch.ops.alexnet_triton.relu_grad(dy, y) -> dy * (y > 0)           (the fused ReLU's gradient)
    torch.ops.alexnet_triton.max_pool2d(x, kernel_size, stride, input_relu=False) -> (y, argmax)
    torch.ops.alexnet_triton.max_pool2d_backward(dy, argmax, input_size, channels_last, kernel_size, stride,
                                                 relu_out=None) -> dx
    torch.ops.alexnet_triton.dropout(x, seed, p) -> y                   (its own backward: same seed)
    torch.ops.alexnet_triton.column_dropout(x, seeds, call, p, relu=False) -> (y, next_call)
    torch.ops.alexnet_triton.column_dropout_backward(dy, seeds, next_call, p, relu_input=None) -> dx
    torch.ops.alexnet_triton.softmax_cross_entropy(logits, labels, finite!) -> (loss, dlogits, wrong)
    torch.ops.alexnet_triton.augment(images, offsets, flips, shift, mean, size, dtype, channels_last) -> y
    torch.ops.alexnet_triton.augment_padded(images, offsets, flips, shift, mean, size, dtype, pad, padded_size,
                                            channels) -> y   (conv1's zero-padded input buffer)
    torch.ops.alexnet_triton.sgd_step_(weights!, velocity!, grads, lr, momentum, weight_decay, n_decay,
                                       low_precision_out!?) -> ()

Why custom ops: torch.compile, torch.export and AOT autograd see each kernel as one opaque
node with a schema, a fake (meta) implementation that gives its outputs' shapes, dtypes and
strides, and a backward made of custom ops too, so compiled graphs keep the Triton kernels
in the forward and the backward (`torch.library.opcheck` checks all of it, tests/test_ops.py).
The ops are `custom_op`s calling the launchers, not `triton_op`s: the launchers do host-side
work (argument checks, the conv autotuners, conv1's channel padding, wgrad's split count)
that `wrap_triton` tracing cannot follow, and Inductor would not fuse into these kernels anyway.

Inside an op, the device of the tensors picks the implementation (which ops a training run
calls at all, these or kernels/reference.py, is its config.ops: alexnet/network/layers.py load_ops):
    CUDA tensors -> the Triton kernel;
    CPU tensors  -> the plain-PyTorch reference (kernels/reference.py), or the Triton kernel
                    through Triton's interpreter when TRITON_INTERPRET=1 (as in the tests).
The outputs of both implementations have the same shapes, dtypes and strides (the fake's).

The eager fast path (`call`, in kernels/runtime/dispatch.py with the selection rule): outside
torch.compile/torch.export, with no tracing or fake mode active and plain tensors, the public
functions skip torch.library's Python dispatch (~36-85 us per op call) and run the same
implementation through a plain autograd.Function made from the op's own setup_context/backward
(`_EAGER`), whose backward calls the backward ops the same way. Under compile, export, opcheck,
FakeTensor or functorch they call the op. Both paths run the same implementation, chosen by the
same rule (`implementation`), so their outputs, strides and gradients are identical
(tests/test_ops.py checks it). The fast path does not materialise zero gradients for the
outputs nobody uses (LRN's u, pooling's argmax).

Non-tensor arguments are in the schema; the multi-output forwards return what their backward
needs (LRN's u, pooling's argmax), and the public functions (`kernels.conv2d`,
`kernels.relu_lrn`, ...) return the first output only. Dropout takes its seed as a tensor, so
the op is a function of its inputs and its backward applies the same mask again; column dropout
takes its call index as a tensor and returns the next one (see its section for why).
"""
import torch

from . import reference
from ._common import is_dense, memory_format
from .augment import launch_augment, launch_augment_padded
from .cross_entropy import launch_softmax_cross_entropy
from .dropout import apply_dropout_mask, launch_column_dropout
from .lrn import relu_lrn_backward, relu_lrn_forward
from .maxpool import argmax_dtype, max_pool2d_backward, max_pool2d_forward
from .runtime.dispatch import (  # noqa: F401  (re-exported: bench/launch_stubs.py, bench/host_step.py)
    _EAGER,
    NAMESPACE,
    TRITON_IMPLS,
    _define,
    _empty,
    _in_format,
    _register_autograd,
    call,
    implementation,
    ops,
)
from .sgd import launch_sgd_step

# The convolution's ops live beside its kernels (kernels/conv/op.py); importing it registers them.
from .conv.op import conv2d  # isort: skip

__all__ = ["NAMESPACE", "conv2d", "call", "implementation"]


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
            u = call(name, x, size, alpha, beta, k, groups, True)[1]
        return call("lrn_backward", dy, x, u, size, alpha, beta, k, relu, groups), None, None, None, None, None, None

    _register_autograd(name, backward, setup, n_outputs=2)


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


def _pool_format(x, contiguous_out):
    return torch.contiguous_format if contiguous_out else memory_format(x)


def _pool_triton(x, kernel_size, stride, input_relu=False, contiguous_out=False):
    return max_pool2d_forward(x, tuple(kernel_size), tuple(stride), out_format=_pool_format(x, contiguous_out))


def _pool_reference(x, kernel_size, stride, input_relu=False, contiguous_out=False):
    (_, kw), (sh, sw) = kernel_size, stride
    y, flat = torch.nn.functional.max_pool2d(x, kernel_size, stride, return_indices=True)
    width = x.shape[3]
    oh = torch.arange(y.shape[2], device=x.device)[:, None] * sh
    ow = torch.arange(y.shape[3], device=x.device)[None, :] * sw
    local = (flat // width - oh) * kw + (flat % width - ow)  # window-local kh * KW + kw, as the kernel
    fmt = _pool_format(x, contiguous_out)
    return _in_format(y, fmt), _in_format(local.to(_argmax_dtype(kernel_size)), fmt)


def _pool_fake(x, kernel_size, stride, input_relu=False, contiguous_out=False):
    (kh, kw), (sh, sw) = kernel_size, stride
    shape = (x.shape[0], x.shape[1], (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1)
    fmt = _pool_format(x, contiguous_out)
    return _empty(shape, x, fmt), _empty(shape, x, fmt, _argmax_dtype(kernel_size))


# input_relu: x is a ReLU's output (conv5's, whose op then skips its mask: dy_masked); the
# backward passes dy only where the pooled y > 0, the gradient through that ReLU too.
# contiguous_out: y (and argmax) in NCHW order whatever x's layout (pool5 of a channels_last
# model: its flatten for fc6 is then a view, not a copy).
_define("max_pool2d", "(Tensor x, int[2] kernel_size, int[2] stride, bool input_relu=False, "
        "bool contiguous_out=False) -> (Tensor, Tensor)",
        _pool_triton, _pool_reference, _pool_fake)


def _pool_backward_triton(dy, idx, input_size, channels_last, kernel_size, stride, relu_out=None):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return max_pool2d_backward(dy, idx, tuple(input_size), fmt, tuple(kernel_size), tuple(stride), relu_out=relu_out)


def _pool_backward_reference(dy, idx, input_size, channels_last, kernel_size, stride, relu_out=None):
    if relu_out is not None:
        dy = reference.relu_mask(dy, relu_out)
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
    return (call("max_pool2d_backward", dy, idx, *ctx.params, y),) + (None,) * (len(ctx.needs_input_grad) - 1)


_register_autograd("max_pool2d", _pool_backward, _pool_setup, n_outputs=2)


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


# ---------------------------------------------------------------------------- column dropout
# alexnet_triton::column_dropout(x, seeds, call, p) -> (y, next_call) is functional: the layer's
# call counter is an input, and the op returns the next index as a new tensor (written by the
# same launch) instead of advancing the counter in place. Why: a custom op that mutates an
# input cannot have an autograd formula (register_autograd wants a functional schema), and a
# counter mutated in place after the forward would fail autograd's version check if the
# backward had saved it. The backward saves `next_call`, a fresh output nobody mutates, and
# ::column_dropout_backward(dy, seeds, next_call, p) redraws the mask at next_call - 1: one
# launch each way, nothing mask-sized kept. The backward is linear in dy with the same mask,
# so its own autograd formula is itself (an exact double backward). Where the counter must
# keep one address (a CUDA graph), ColumnDropout copies next_call into it (ColumnDropout.pin).
def _column_dropout_triton(x, seeds, call, p, relu=False):
    return launch_column_dropout(x, seeds, call, p, relu=relu)


def _column_dropout_reference(x, seeds, call, p, relu=False):
    """The same masks as the kernel, Philox in torch ops (kernels.reference.column_dropout)."""
    y, next_call = reference.column_dropout(x, seeds, call, p, relu)
    return y.contiguous(), next_call


def _column_dropout_fake(x, seeds, call, p, relu=False):
    return _empty(x.shape, x), torch.empty_like(call)


# relu: dropout of relu(x) (fc6/fc7's ReLU fused in); the backward then gets x as relu_input.
_define("column_dropout", "(Tensor x, Tensor seeds, Tensor call, float p, bool relu=False) -> (Tensor, Tensor)",
        _column_dropout_triton, _column_dropout_reference, _column_dropout_fake)


def _column_dropout_backward_triton(dy, seeds, next_call, p, relu_input=None):
    return launch_column_dropout(dy, seeds, next_call, p, backward=True, relu_input=relu_input)


def _column_dropout_backward_reference(dy, seeds, next_call, p, relu_input=None):
    dx = reference.column_dropout(dy, seeds, next_call - 1, p)[0]
    return (dx if relu_input is None else reference.relu_mask(dx, relu_input)).contiguous()


def _column_dropout_backward_fake(dy, seeds, next_call, p, relu_input=None):
    return _empty(dy.shape, dy)


_define("column_dropout_backward", "(Tensor dy, Tensor seeds, Tensor next_call, float p, Tensor? relu_input=None) "
        "-> Tensor", _column_dropout_backward_triton, _column_dropout_backward_reference,
        _column_dropout_backward_fake)


def _column_dropout_setup(ctx, inputs, output):
    x, seeds, _call, p, *relu = inputs
    relu = (*relu, False)[0]
    ctx.save_for_backward(seeds, output[1], *([x] if relu else []))  # next_call: fresh, never mutated afterwards
    ctx.p = p
    ctx.set_materialize_grads(False)  # next_call (int64) has no gradient: no zeros made for it


def _column_dropout_backward(ctx, dy, _dnext):
    seeds, next_call, *relu_input = ctx.saved_tensors
    relu_input = (*relu_input, None)[0]
    dx = None if dy is None else call("column_dropout_backward", dy, seeds, next_call, ctx.p, relu_input)
    return (dx,) + (None,) * (len(ctx.needs_input_grad) - 1)


def _column_dropout_backward_setup(ctx, inputs, output):
    _dy, seeds, next_call, p, *relu_input = inputs
    ctx.save_for_backward(seeds, next_call, *[t for t in relu_input if t is not None])
    ctx.p = p


def _column_dropout_double_backward(ctx, ddx):
    seeds, next_call, *relu_input = ctx.saved_tensors  # linear in dy with the same mask: itself
    relu_input = (*relu_input, None)[0]
    return (call("column_dropout_backward", ddx, seeds, next_call, ctx.p, relu_input),) + (None,) * (
        len(ctx.needs_input_grad) - 1)


# Both through `call` (kernels.dropout.column_dropout): the eager fast path skips the custom-op
# dispatch, ~4 of them per training step.
_register_autograd("column_dropout", _column_dropout_backward, _column_dropout_setup, n_outputs=2)
_register_autograd("column_dropout_backward", _column_dropout_double_backward, _column_dropout_backward_setup)


# ============================================================================ augmentation
def _augment_reference(images, offsets, flips, shift, mean, size, dtype, channels_last):
    return reference.augment(images, offsets, flips, shift, mean, size, dtype, channels_last)


def _augment_fake(images, offsets, flips, shift, mean, size, dtype, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return _empty((images.shape[0], 3, size, size), images, fmt, dtype)


_define("augment", "(Tensor images, Tensor offsets, Tensor flips, Tensor shift, Tensor mean, int size, "
        "ScalarType dtype, bool channels_last) -> Tensor", launch_augment, _augment_reference, _augment_fake)


# conv1's zero-padded input written by the augmentation (kernels/augment.py augment_padded):
# a fresh dense channels_last buffer; the model's (B, 3, size, size) view of it is taken
# outside the op (alexnet/data/augment.py crop_batch, kernels/conv/input_layout.py padded_view).
def _augment_padded_reference(images, offsets, flips, shift, mean, size, dtype, pad, padded_size, channels):
    return reference.augment_padded(images, offsets, flips, shift, mean, size, dtype, pad, padded_size, channels)


def _augment_padded_fake(images, offsets, flips, shift, mean, size, dtype, pad, padded_size, channels):
    return _empty((images.shape[0], channels, *padded_size), images, torch.channels_last, dtype)


_define("augment_padded", "(Tensor images, Tensor offsets, Tensor flips, Tensor shift, Tensor mean, int size, "
        "ScalarType dtype, int[2] pad, int[2] padded_size, int channels) -> Tensor", launch_augment_padded,
        _augment_padded_reference, _augment_padded_fake)


# ============================================================================ loss
# The step's loss, its gradient and metrics in one launch (kernels/cross_entropy.py); `finite`
# (the run's guard) is and-ed in place. No autograd formula: the step passes dlogits to
# logits.backward.
def _cross_entropy_reference(logits, labels, finite):
    loss, dlogits, wrong = reference.softmax_cross_entropy(logits, labels, finite)
    return loss.float(), dlogits.contiguous(), wrong


def _cross_entropy_fake(logits, labels, finite):
    return (_empty((), logits, dtype=torch.float32), _empty(logits.shape, logits),
            _empty((), logits, dtype=torch.int64))


_define("softmax_cross_entropy", "(Tensor logits, Tensor labels, Tensor(a!) finite) -> (Tensor, Tensor, Tensor)",
        launch_softmax_cross_entropy, _cross_entropy_reference, _cross_entropy_fake, mutates_args=("finite",))


# ============================================================================ SGD step
def _sgd_reference(weights, velocity, grads, lr, momentum, weight_decay, n_decay, low_precision_out):
    reference.sgd_step_(weights, velocity, grads, lr, momentum, weight_decay, n_decay, low_precision_out)


def _sgd_fake(weights, velocity, grads, lr, momentum, weight_decay, n_decay, low_precision_out):
    return None


_define("sgd_step_", "(Tensor(a!) weights, Tensor(b!) velocity, Tensor grads, Tensor lr, float momentum, "
        "float weight_decay, int n_decay, Tensor(c!)? low_precision_out) -> ()", launch_sgd_step, _sgd_reference,
        _sgd_fake, mutates_args=("weights", "velocity", "low_precision_out"))


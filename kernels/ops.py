"""Every kernel of this package as a PyTorch custom op, namespace `alexnet_triton` (torch.library).

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
    torch.ops.alexnet_triton.column_dropout(x, seeds, call, p) -> (y, next_call)
    torch.ops.alexnet_triton.column_dropout_backward(dy, seeds, next_call, p) -> dx
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
calls at all, these or kernels/reference.py, is its config.ops: alexnet/layers.py load_ops):
    CUDA tensors -> the Triton kernel;
    CPU tensors  -> the plain-PyTorch reference (kernels/reference.py), or the Triton kernel
                    through Triton's interpreter when TRITON_INTERPRET=1 (as in the tests).
The outputs of both implementations have the same shapes, dtypes and strides (the fake's).

The eager fast path (`call`, in kernels/dispatch.py with the selection rule): outside
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
import weakref

import torch

from . import reference
from ._common import check_tensor, is_dense, memory_format
from .augment import launch_augment, launch_augment_padded
from .dispatch import _EAGER, _IMPLS, NAMESPACE, TRITON_DEVICES, TRITON_IMPLS, call, implementation, ops  # noqa: F401
from .dropout import apply_dropout_mask, launch_column_dropout
from .layout import conv_out_format
from .lrn import relu_lrn_backward, relu_lrn_forward
from .maxpool import argmax_dtype, max_pool2d_backward, max_pool2d_forward
from .sgd import launch_sgd_step

# The convolution: its launchers are looked up on the conv package at call time (tests patch
# them there).
from . import conv as _conv  # isort: skip
from .conv import ConvGeometry  # isort: skip

__all__ = ["NAMESPACE", "conv2d", "call", "implementation"]

def _define(name: str, schema: str, triton_impl, reference_impl, fake, mutates_args=()):
    """Register op `alexnet_triton::name` with the op-selection rule (`implementation`)."""
    op = torch.library.custom_op(f"{NAMESPACE}::{name}", triton_impl, mutates_args=mutates_args,
                                 device_types="cuda", schema=schema)

    def cpu_impl(*args):
        return implementation(name, torch.device("cpu"))(*args)

    op.register_kernel("cpu", cpu_impl)
    op.register_fake(fake)
    TRITON_IMPLS[name] = (op, triton_impl)
    _IMPLS[name] = (triton_impl, reference_impl)
    return op


def _register_autograd(name: str, backward, setup_context, n_outputs: int = 1):
    """register_autograd for op `name`, and the same autograd as a plain Function for `call`."""
    torch.library.register_autograd(f"{NAMESPACE}::{name}", backward, setup_context=setup_context)

    def forward(ctx, *args):  # ctx in forward, no setup_context: Function.apply then skips a
        global _fast_forward  # per-call inspect.signature (tens of us)
        _fast_forward = True
        try:
            output = implementation(name, args[0].device)(*args)
        finally:
            _fast_forward = False
        ctx.fast = True  # the backward may write gradients into their owners' buffers (`grad_into`)
        ctx.set_materialize_grads(False)
        if n_outputs > 1:  # only the first output is differentiable (the rest: u, argmax)
            ctx.mark_non_differentiable(*output[1:])
        setup_context(ctx, args, output)
        return output

    def fast_backward(ctx, dy, *_unused):
        if dy is None:  # the output did not reach the loss
            return (None,) * len(ctx.needs_input_grad)
        return backward(ctx, dy, *_unused)

    _EAGER[name] = type(f"{name}_eager", (torch.autograd.Function,),
                        dict(forward=staticmethod(forward), backward=staticmethod(fast_backward)))


# Set while the fast path runs an implementation (its autograd Function's forward): only then
# may an implementation keep something for its backward outside the op's outputs (`_keep_padded`).
_fast_forward = False


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


# conv1's zero-padded image (kernels/conv/input_layout.py), kept from the fast path's forward
# for its weight gradient instead of being built again there: id(x) -> (a weak reference to x,
# x's version, the conv's geometry, the padded image, its geometry). Only on the fast path: under torch.compile a
# buffer held outside the graph's outputs could outlive its memory pool (CUDA graphs). The
# backward takes the entry (freeing the buffer); a dead x drops its entry.
_PADDED_INPUTS: dict = {}


def _keep_padded(x, geom, x_k, geom_k) -> None:
    key = id(x)
    _PADDED_INPUTS[key] = (weakref.ref(x, lambda _, key=key: _PADDED_INPUTS.pop(key, None)), x._version, geom,
                           x_k, geom_k)


def _take_padded(x, geom):
    """(padded image, its geometry) `_keep_padded` kept for x as it is now and a conv of
    geometry `geom` (another conv may read the same x differently padded), or None."""
    entry = _PADDED_INPUTS.pop(id(x), None)
    if entry is None or entry[0]() is not x or entry[1] != x._version or entry[2] != geom:
        return None
    return entry[3], entry[4]


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
    # channels_last; conv1: its padded image (3 -> 4 channels), the weight's channel padding is
    # written by the forward's weight matrix (kernels/conv/fwd.py _flat_weight), not padded here
    x_k, _, geom_k = _conv.pad_input(x, None, geom)
    w_k = weight
    if _fast_forward and geom_k is not geom and weight.requires_grad and x_k._base is not x._base:
        _keep_padded(x, geom, x_k, geom_k)  # a padded image made here (not a caller's buffer): wgrad reads it
    return _conv.conv2d_forward(x_k, w_k, bias, geom_k, relu=relu, out_format=conv_out_format(x))


def _conv2d_reference(x, weight, bias, stride, padding, groups, relu, input_relu=False, dy_masked=False):
    return _in_format(reference.conv2d(x, weight, bias, stride, padding, groups, relu), conv_out_format(x))


def _conv2d_fake(x, weight, bias, stride, padding, groups, relu, input_relu=False, dy_masked=False):
    return _empty(_conv_out_shape(x, weight, stride, padding), x, conv_out_format(x))


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


def _wgrad_triton(dy, x, weight, y, stride, padding, groups, weight_grad, bias_grad, out=None):
    geom = _conv.conv_geometry(x, weight, None, tuple(stride), tuple(padding), groups)
    x_k, geom_k = None, geom  # only the bias gradient: x is never read
    if weight_grad:
        kept = _take_padded(x, geom) if _PADDED_INPUTS else None  # the fast forward kept it
        x_k, _, geom_k = (kept[0], None, kept[1]) if kept else _conv.pad_input(x, None, geom)  # as the forward read it
    dy = dy.contiguous(memory_format=torch.channels_last)
    y = y.contiguous(memory_format=torch.channels_last) if y is not None else None
    fmt = memory_format(weight)
    dw_out, db_out = out or (None, None)
    padded = geom_k is not geom and geom_k.in_chan != geom.in_chan
    dw, db = _conv.conv2d_weight_grad(dy, x_k, geom_k, y=y, weight_grad=weight_grad, bias_grad=bias_grad,
                                      weight_format=fmt, out=(None if padded else dw_out, db_out))
    if weight_grad and padded and dw_out is not None:  # conv1: the unpadded channels into the buffer
        dw = dw_out.copy_(dw[:, :geom.c_per_g])
    return (_conv.unpad_weight_grad(dw, geom, fmt) if weight_grad else dy.new_empty(0),
            db if bias_grad else dy.new_empty(0))


def _wgrad_reference(dy, x, weight, y, stride, padding, groups, weight_grad, bias_grad, out=None):
    if y is not None:
        dy = _relu_mask(dy, y)
    _, dw, db = torch.ops.aten.convolution_backward(dy, x, weight, [weight.shape[0]], stride, padding, [1, 1],
                                                    False, [0, 0], groups, [False, weight_grad, bias_grad])
    grads = (_in_format(dw, memory_format(weight)) if weight_grad else dy.new_empty(0),
             db if bias_grad else dy.new_empty(0))
    # the fast path's buffers (see `grad_into`)
    return tuple(g if dest is None else dest.copy_(g) for g, dest in zip(grads, out or (None, None), strict=True))


def _wgrad_fake(dy, x, weight, y, stride, padding, groups, weight_grad, bias_grad):
    return (_empty(weight.shape, dy, memory_format(weight)) if weight_grad else dy.new_empty(0),
            _empty(weight.shape[:1], dy) if bias_grad else dy.new_empty(0))


_define("conv2d_weight_grad", "(Tensor dy, Tensor x, Tensor weight, Tensor? y, int[2] stride, int[2] padding, "
        "int groups, bool weight_grad, bool bias_grad) -> (Tensor, Tensor)", _wgrad_triton, _wgrad_reference,
        _wgrad_fake)


def _relu_grad_reference(dy, y):
    return _in_format(torch.ops.aten.threshold_backward(dy, y, 0), torch.channels_last)


def _relu_grad_fake(dy, y):
    return _empty(dy.shape, dy, torch.channels_last)


# dy where y > 0 else 0, as torch's threshold_backward (a NaN y lets dy pass), in channels_last
_define("relu_grad", "(Tensor dy, Tensor y) -> Tensor", _conv.relu_grad, _relu_grad_reference, _relu_grad_fake)


# Where a leaf's gradient may be written directly (alexnet.optim.FlatPaperSGD registers its
# leaves): id(leaf) -> (weak reference to the leaf, callable giving a fresh view of the leaf's
# slot in the optimizer's flat gradient buffer while leaf.grad is None, else None). Kept apart
# from the tensors (no attribute: a Parameter with a function attached would not pickle);
# an entry goes when its leaf does.
GRAD_INTO: dict = {}


def set_grad_into(leaf: torch.Tensor, slot) -> None:
    """Register `slot()` (a fresh view of leaf's shape and strides) as where leaf's gradient
    is written while leaf.grad is None."""
    ref = weakref.ref(leaf)
    key = id(leaf)
    if key not in GRAD_INTO:
        weakref.finalize(leaf, GRAD_INTO.pop, key, None)
    GRAD_INTO[key] = (ref, lambda: slot() if ref().grad is None else None)


def grad_into(t):
    """Where t's gradient may be written directly (eager paths only): a fresh view of its
    optimizer's flat gradient buffer while t.grad is None (autograd then adopts the view as
    t.grad, no accumulation launch), else None."""
    entry = GRAD_INTO.get(id(t))
    return entry[1]() if entry is not None and entry[0]() is t else None


def _conv2d_setup(ctx, inputs, output):
    x, weight, bias, stride, padding, groups, relu, *flags = inputs
    input_relu, dy_masked = (*flags, False, False)[:2]  # the schema's defaults when not passed
    ctx.save_for_backward(x, weight, output if relu and not dy_masked else None)
    ctx.params = (stride, padding, groups, input_relu)
    ctx.owners = (weight, bias) if getattr(ctx, "fast", False) else None  # the leaves, for `grad_into`


def _conv2d_backward(ctx, dy):
    x, weight, y = ctx.saved_tensors
    stride, padding, groups, input_relu = ctx.params
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    dx = dw = db = None
    if y is not None:  # the fused ReLU's gradient, once for both GEMMs (unless the consumer's dgrad did it):
        dy, y = call("relu_grad", dy, y), None  # one launch (torch.where took three)
    if need_x:  # skipped for conv1, whose input is the image
        dx = call("conv2d_input_grad", dy, weight, None, x.shape, stride, padding, groups,
                  memory_format(x) == torch.channels_last, x if input_relu else None)
    if need_w or need_b:
        out = None
        if ctx.owners is not None:  # the eager fast path: straight into the optimizer's buffer
            out = (grad_into(ctx.owners[0]) if need_w else None, grad_into(ctx.owners[1]) if need_b else None)
        dw, db = call("conv2d_weight_grad", dy, x, weight, None, stride, padding, groups, need_w, need_b, out=out)
    return dx, dw if need_w else None, db if need_b else None, None, None, None, None, None, None


_register_autograd("conv2d", _conv2d_backward, _conv2d_setup)


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
    return call("conv2d", x, weight, bias, stride, padding, groups, relu, input_relu, dy_masked)


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
    return call("max_pool2d_backward", dy, idx, *ctx.params, y), None, None, None


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
def _column_dropout_triton(x, seeds, call, p):
    return launch_column_dropout(x, seeds, call, p)


def _column_dropout_reference(x, seeds, call, p):
    """The same masks as the kernel, Philox in torch ops (kernels.reference.column_dropout)."""
    y, next_call = reference.column_dropout(x, seeds, call, p)
    return y.contiguous(), next_call


def _column_dropout_fake(x, seeds, call, p):
    return _empty(x.shape, x), torch.empty_like(call)


_define("column_dropout", "(Tensor x, Tensor seeds, Tensor call, float p) -> (Tensor, Tensor)",
        _column_dropout_triton, _column_dropout_reference, _column_dropout_fake)


def _column_dropout_backward_triton(dy, seeds, next_call, p):
    return launch_column_dropout(dy, seeds, next_call, p, backward=True)


def _column_dropout_backward_reference(dy, seeds, next_call, p):
    return reference.column_dropout(dy, seeds, next_call - 1, p)[0].contiguous()


def _column_dropout_backward_fake(dy, seeds, next_call, p):
    return _empty(dy.shape, dy)


_define("column_dropout_backward", "(Tensor dy, Tensor seeds, Tensor next_call, float p) -> Tensor",
        _column_dropout_backward_triton, _column_dropout_backward_reference, _column_dropout_backward_fake)


def _column_dropout_setup(ctx, inputs, output):
    _x, seeds, _call, p = inputs
    ctx.save_for_backward(seeds, output[1])  # next_call: a fresh tensor, never mutated afterwards
    ctx.p = p
    ctx.set_materialize_grads(False)  # next_call (int64) has no gradient: no zeros made for it


def _column_dropout_backward(ctx, dy, _dnext):
    seeds, next_call = ctx.saved_tensors
    dx = None if dy is None else call("column_dropout_backward", dy, seeds, next_call, ctx.p)
    return dx, None, None, None


def _column_dropout_backward_setup(ctx, inputs, output):
    _dy, seeds, next_call, p = inputs
    ctx.save_for_backward(seeds, next_call)
    ctx.p = p


def _column_dropout_double_backward(ctx, ddx):
    seeds, next_call = ctx.saved_tensors
    return call("column_dropout_backward", ddx, seeds, next_call, ctx.p), None, None, None


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
# outside the op (alexnet/augment.py crop_batch, kernels/conv/input_layout.py padded_view).
def _augment_padded_reference(images, offsets, flips, shift, mean, size, dtype, pad, padded_size, channels):
    return reference.augment_padded(images, offsets, flips, shift, mean, size, dtype, pad, padded_size, channels)


def _augment_padded_fake(images, offsets, flips, shift, mean, size, dtype, pad, padded_size, channels):
    return _empty((images.shape[0], channels, *padded_size), images, torch.channels_last, dtype)


_define("augment_padded", "(Tensor images, Tensor offsets, Tensor flips, Tensor shift, Tensor mean, int size, "
        "ScalarType dtype, int[2] pad, int[2] padded_size, int channels) -> Tensor", launch_augment_padded,
        _augment_padded_reference, _augment_padded_fake)


# ============================================================================ SGD step
def _sgd_reference(weights, velocity, grads, lr, momentum, weight_decay, n_decay, low_precision_out):
    reference.sgd_step_(weights, velocity, grads, lr, momentum, weight_decay, n_decay, low_precision_out)


def _sgd_fake(weights, velocity, grads, lr, momentum, weight_decay, n_decay, low_precision_out):
    return None


_define("sgd_step_", "(Tensor(a!) weights, Tensor(b!) velocity, Tensor grads, Tensor lr, float momentum, "
        "float weight_decay, int n_decay, Tensor(c!)? low_precision_out) -> ()", launch_sgd_step, _sgd_reference,
        _sgd_fake, mutates_args=("weights", "velocity", "low_precision_out"))


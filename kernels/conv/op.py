"""The convolution as custom ops (namespace `alexnet_triton`, registered like the others through
kernels/runtime/dispatch.py): conv2d, its input and weight gradients, and the fused ReLU's gradient.

    conv2d(x, weight, bias, stride, padding, groups, relu, input_relu=False, dy_masked=False) -> y
    conv2d_input_grad(dy, weight, y, input_size, stride, padding, groups, channels_last,
                      relu_input=None) -> dx
    conv2d_weight_grad(dy, x, weight, y, stride, padding, groups, weight_grad, bias_grad)
        -> (dw, db)    (an empty one where not asked)
    relu_grad(dy, y) -> dy * (y > 0)

The launchers are looked up on the conv package at call time (tests patch them there).
"""
import torch

from .. import conv as _conv
from .. import reference
from .._common import check_tensor, memory_format
from ..runtime.dispatch import _define, _empty, _in_format, _register_autograd, call, grad_into, in_fast_forward
from ..runtime.layout import conv_out_format
from ..runtime.state import memo
from .common import ConvGeometry

__all__ = ["conv2d"]


def _conv_out_shape(x, weight, stride, padding):
    (sh, sw), (ph, pw) = stride, padding
    return (x.shape[0], weight.shape[0], (x.shape[2] + 2 * ph - weight.shape[2]) // sh + 1,
            (x.shape[3] + 2 * pw - weight.shape[3]) // sw + 1)


# conv1's zero-padded image (kernels/conv/input_layout.py), kept from the fast path's forward
# for its weight gradient instead of being built again there: x (weakly, by identity) -> (x's
# version, the conv's geometry, the padded image, its geometry). Only on the fast path: under
# torch.compile a buffer held outside the graph's outputs could outlive its memory pool (CUDA
# graphs). The backward takes the entry (freeing the buffer); a dead x drops its entry.
_PADDED_INPUTS = memo("conv.padded_inputs", "conv1's input -> its padded image, forward to weight gradient",
                      by_tensor=True)


def _keep_padded(x, geom, x_k, geom_k) -> None:
    _PADDED_INPUTS[x] = (x._version, geom, x_k, geom_k)


def _take_padded(x, geom):
    """(padded image, its geometry) `_keep_padded` kept for x as it is now and a conv of
    geometry `geom` (another conv may read the same x differently padded), or None."""
    entry = _PADDED_INPUTS.pop(x, None)
    if entry is None or entry[0] != x._version or entry[1] != geom:
        return None
    return entry[2], entry[3]


# The ReLU between two convolutions (conv3 -> conv4 -> conv5): its gradient mask, dy * (y > 0), is
# applied by the consumer's dgrad epilogue (input_relu: dx * (x > 0), with x = the producer's y),
# and the producer, told so (dy_masked), skips its own elementwise masking pass. Both flags
# describe the wiring, so they are set together from one place (alexnet/network/model.py
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
    if in_fast_forward() and geom_k is not geom and weight.requires_grad and x_k._base is not x._base:
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


def _dgrad_reference(dy, weight, y, input_size, stride, padding, groups, channels_last, relu_input=None):
    if y is not None:
        dy = reference.relu_mask(dy, y)
    dx = torch.ops.aten.convolution_backward(dy, dy.new_empty(input_size), weight, None, stride, padding, [1, 1],
                                             False, [0, 0], groups, [True, False, False])[0]
    if relu_input is not None:
        dx = reference.relu_mask(dx, relu_input)
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
                                      weight_format=fmt, out=(None if padded else dw_out, db_out),
                                      dense=not padded)  # padded: copied below, as a view is enough
    if weight_grad and padded and dw_out is not None:  # conv1: the unpadded channels into the buffer
        dw = dw_out.copy_(dw[:, :geom.c_per_g])
    return (_conv.unpad_weight_grad(dw, geom, fmt) if weight_grad else dy.new_empty(0),
            db if bias_grad else dy.new_empty(0))


def _wgrad_reference(dy, x, weight, y, stride, padding, groups, weight_grad, bias_grad, out=None):
    if y is not None:
        dy = reference.relu_mask(dy, y)
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

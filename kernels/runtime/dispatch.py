"""How an `alexnet_triton` op is registered and run: `_define` / `_register_autograd` (the
custom op with its fake and autograd), the op-selection rule (`implementation`), the eager
fast path that runs it without torch.library's dispatch (`call`), and where the fast path may
write a leaf's gradient (`grad_into`). The ops themselves are defined in kernels/ops.py and
kernels/conv/op.py; this module imports no kernel module, so the kernels' public functions
can call `call` without an import cycle.
"""
import ast

import torch

from .._common import interpreting
from . import first_use, verify, versions
from .layout import empty_4d as _empty  # (the ops' fakes and outputs: kernels/ops.py, conv/op.py)
from .state import SWITCHES, memo

NAMESPACE = "alexnet_triton"
ops = torch.ops.alexnet_triton
TRITON_IMPLS = {}  # name -> (op, its Triton implementation); bench/launch_stubs.py runs them on meta tensors
_IMPLS = {}  # name -> (Triton implementation, reference implementation)


def implementation(name: str, device: torch.device):
    """The one op-selection rule: the Triton implementation for CUDA tensors; for CPU tensors
    the reference, or Triton when the interpreter is on (checked per call, so tests can switch
    it). None for other devices (the op then runs its registered kernel, e.g. the fake on meta)."""
    triton_impl, reference_impl = _IMPLS[name]
    if device.type in SWITCHES.triton_devices:
        return _CHECKED[name] if device.type == "cuda" and verify.STATE.enabled and name in _CHECKED else triton_impl
    if device.type == "cpu":
        if not interpreting():
            return reference_impl
        return _CHECKED[name] if verify.STATE.interpreter and verify.STATE.enabled and name in _CHECKED else triton_impl
    return None


# Checked first use (kernels/runtime/verify.py): the first call of each signature (op, shapes,
# dtypes, strides, scalar arguments) on a GPU compares the kernel with the reference once; a
# mismatch sends that signature to the reference for the rest of the process. Later calls: one
# dict lookup on the signature (a few us of host time, mostly hashing the shapes and strides).
# The convolution's ops are not here: their launch plans verify every tile config
# (kernels/conv/plans.py launch).
NOT_CHECKED_HERE = {"conv2d", "conv2d_input_grad", "conv2d_weight_grad"}
_CHECKED = {}  # name -> the checked implementation


def _checked(name: str, mutates: tuple, defaults: tuple):
    """`defaults`: the schema's default values of the trailing arguments, so that a call that
    spells them (a compiled graph's) has the signature of one that does not (the eager path's)."""
    n_args = len(defaults)

    def checked(*args, **kwargs):
        triton_impl, reference_impl = _IMPLS[name]
        sig = first_use.signature(name, args if len(args) >= n_args else args + defaults[len(args):])
        ok = verify.STATE.ops.get(sig)
        if ok:
            return triton_impl(*args, **kwargs)
        if ok is False:
            return reference_impl(*args, **kwargs)
        if not verify.may_check():  # tracing or capturing a CUDA graph: no check here (the warm-up checks)
            return triton_impl(*args, **kwargs)
        return first_use.first_use(name, sig, triton_impl, reference_impl, args, kwargs, mutates)
    return checked


# --------------------------------------------------------------------------- the eager fast path
_EAGER = {}  # name -> autograd.Function running the implementation with the op's own autograd
_PLAIN = (torch.Tensor, torch.nn.Parameter)
# private torch calls (kernels/runtime/versions.py EAGER: used only inside the tested torch range;
# None where this torch lacks them, and the first call then steps the fast path aside)
_dispatch_depth = getattr(torch._C, "_len_torch_dispatch_stack", None)
_functorch_wrapped = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)


def _eager(x: torch.Tensor) -> bool:
    """Whether the fast path may run: not compiling/exporting, x a plain tensor (not fake,
    functional or functorch-wrapped), and no dispatch mode but observers that declare
    `eager_fast_path_ok` (bench/launch_stubs.py's launch census). False for good (one warning)
    outside the tested torch range or after a private call's first unexpected error."""
    if not SWITCHES.fast_path or torch.compiler.is_compiling() or type(x) not in _PLAIN or not versions.EAGER.ok():
        return False
    try:
        if _functorch_wrapped(x):
            return False
        if _dispatch_depth():
            from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

            return all(getattr(mode, "eager_fast_path_ok", False) for mode in _get_current_dispatch_mode_stack())
    except Exception as err:  # a private call gone or changed: the custom op from now on
        versions.EAGER.fail(err)
        return False
    return True


def call(name: str, *args, out=None):
    """Op `alexnet_triton::name` on args: through the fast path where `_eager` allows it (the
    implementation `implementation` picks, with the op's autograd as a plain Function), else
    through the custom op. The same outputs either way. `out` (fast path only, the weight-
    gradient op): buffers the implementation writes its outputs into."""
    x = args[0]
    if _eager(x):
        impl = implementation(name, x.device)
        if impl is not None:
            if not torch.is_grad_enabled() or not any(isinstance(a, torch.Tensor) and a.requires_grad
                                                       for a in args):
                return impl(*args) if out is None else impl(*args, out=out)
            function = _EAGER.get(name)
            if function is not None:
                return function.apply(*args)
            # no autograd formula (the backward ops): the op raises as it should
    return getattr(ops, name)(*args)


def _define(name: str, schema: str, triton_impl, reference_impl, fake, mutates_args=()):
    """Register op `alexnet_triton::name` with the op-selection rule (`implementation`)."""
    op = torch.library.custom_op(f"{NAMESPACE}::{name}", triton_impl, mutates_args=mutates_args,
                                 device_types="cuda", schema=schema)

    def cpu_impl(*args):
        return implementation(name, torch.device("cpu"))(*args)

    op.register_kernel("cpu", cpu_impl)
    op.register_fake(fake)
    if name not in NOT_CHECKED_HERE:
        params = schema[1:schema.index(") ->")].split(", ")
        names = [arg.split("=")[0].split()[-1] for arg in params]
        defaults = tuple(ast.literal_eval(arg.split("=")[1]) if "=" in arg else None for arg in params)
        _CHECKED[name] = _checked(name, tuple(names.index(m) for m in mutates_args), defaults)
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
# may an implementation keep something for its backward outside the op's outputs (the conv
# op's kept padded image, kernels/conv/op.py).
_fast_forward = False


def in_fast_forward() -> bool:
    """Whether an implementation is running inside the fast path's forward (see above)."""
    return _fast_forward


def _in_format(t: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """t copied into a fresh dense tensor of format `fmt` (the strides the fake promises)
    unless it already has exactly those strides."""
    out = _empty(t.shape, t, fmt)
    return t if t.stride() == out.stride() else out.copy_(t)


# Where a leaf's gradient may be written directly (alexnet.training.optim.FlatPaperSGD registers its
# leaves): leaf (weakly, by identity) -> callable giving a fresh view of the leaf's slot in the
# optimizer's flat gradient buffer. Kept apart from the tensors (no attribute: a Parameter with a
# function attached would not pickle); an entry goes when its leaf does.
GRAD_INTO = memo("dispatch.grad_into", "leaf -> its slot in the fused optimizer's flat gradient buffer",
                 by_tensor=True)


def set_grad_into(leaf: torch.Tensor, slot) -> None:
    """Register `slot()` (a fresh view of leaf's shape and strides) as where leaf's gradient
    is written while leaf.grad is None."""
    GRAD_INTO[leaf] = slot


def has_grad_slot(t) -> bool:
    """Whether `set_grad_into` registered a slot for t (the layer then takes the path that writes it)."""
    return t in GRAD_INTO


def grad_into(t):
    """Where t's gradient may be written directly (eager paths only): a fresh view of its
    optimizer's flat gradient buffer while t.grad is None (autograd then adopts the view as
    t.grad, no accumulation launch), else None."""
    slot = GRAD_INTO.get(t)
    return slot() if slot is not None and t.grad is None else None

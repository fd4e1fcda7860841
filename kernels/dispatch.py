"""Which implementation of an `alexnet_triton` op runs, and the eager fast path that runs it
without torch.library's dispatch. Kept apart from kernels/ops.py (which registers the ops and
imports every kernel module) so the kernel modules' public functions can call `call` without
an import cycle: this module imports no kernel module.
"""
import torch

from ._common import interpreting

NAMESPACE = "alexnet_triton"
ops = torch.ops.alexnet_triton
TRITON_IMPLS = {}  # name -> (op, its Triton implementation); bench/launch_stubs.py runs them on meta tensors
_IMPLS = {}  # name -> (Triton implementation, reference implementation)
TRITON_DEVICES = {"cuda"}  # device types whose tensors run the Triton kernels (bench/launch_stubs.py adds 'meta')


def implementation(name: str, device: torch.device):
    """The one op-selection rule: the Triton implementation for CUDA tensors; for CPU tensors
    the reference, or Triton when the interpreter is on (checked per call, so tests can switch
    it). None for other devices (the op then runs its registered kernel, e.g. the fake on meta)."""
    triton_impl, reference_impl = _IMPLS[name]
    if device.type in TRITON_DEVICES:
        return triton_impl
    if device.type == "cpu":
        return triton_impl if interpreting() else reference_impl
    return None


# --------------------------------------------------------------------------- the eager fast path
FAST_PATH = True  # False: every call goes through the custom op (tests compare the two paths)
_EAGER = {}  # name -> autograd.Function running the implementation with the op's own autograd
_PLAIN = (torch.Tensor, torch.nn.Parameter)
_dispatch_depth = torch._C._len_torch_dispatch_stack
_functorch_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


def _eager(x: torch.Tensor) -> bool:
    """Whether the fast path may run: not compiling/exporting, x a plain tensor (not fake,
    functional or functorch-wrapped), and no dispatch mode but observers that declare
    `eager_fast_path_ok` (bench/launch_stubs.py's launch census)."""
    if not FAST_PATH or torch.compiler.is_compiling() or type(x) not in _PLAIN or _functorch_wrapped(x):
        return False
    if _dispatch_depth():
        from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

        return all(getattr(mode, "eager_fast_path_ok", False) for mode in _get_current_dispatch_mode_stack())
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

"""Launch stubs and launch counting for bench/host_step.py (see its docstring for the method).

`install_stubs()` makes Triton's launch path end in a counting stub kernel (a stand-in sm_90
driver, `JITFunction._do_compile` replaced), lets the kernels' launchers take 'meta'
tensors, restores torch's C++ meta kernels over the Python ones, and gives the reference
dropout CPU generators on 'meta'. `count_step(step)` runs one step under `Census`, a
TorchDispatchMode that classifies every aten op (`classify`) and attributes it to the
project file that made it (`origin`).
"""
from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

DEVICE_KINDS = ("triton", "torch_op", "copy", "cast", "collective")
ALL_KINDS = (*DEVICE_KINDS, "alloc", "sync", "custom_op")


# =========================================================================== launch stubs
class _StubKernel:
    """What `_do_compile` leaves in Triton's kernel cache: `run` counts instead of launching."""
    function = None
    packed_metadata = None
    launches: Counter = Counter()  # noqa: RUF012 (class-wide tallies)
    origins: Counter | None = None  # set while counting

    def __init__(self, name: str):
        self.name = name

    def launch_metadata(self, grid, stream, *args):
        return None

    def run(self, *args):
        _StubKernel.launches[self.name] += 1
        if _StubKernel.origins is not None:
            _StubKernel.origins[origin()] += 1


class _StandInDriver:
    """Triton's view of a device: an sm_90 CUDA target with device 0 and stream 0."""

    def __init__(self):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target

    def get_active_torch_device(self):
        return torch.device("meta")

    def get_benchmarker(self):
        return lambda kernel_call, quantiles=None: [1.0, 1.0, 1.0]  # the autotuner keeps its first candidate

    def get_device_interface(self):
        return None


_installed = False


def install_stubs() -> None:
    """Make every Triton launch and every kernel-side device check work on meta tensors."""
    global _installed
    if _installed:
        return
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    from kernels.sgd import _sgd_step_kernel

    if not isinstance(_sgd_step_kernel, JITFunction):
        raise RuntimeError("Triton is in interpreter mode here; run without TRITON_INTERPRET=1")
    driver.set_active(_StandInDriver())

    def _do_compile(self, key, signature, device, constexprs, options, attrs, warmup):
        kernel = _StubKernel(self.__name__)
        self.device_caches[device][0][key] = kernel
        return kernel

    JITFunction._do_compile = _do_compile

    # The launchers refuse non-CUDA tensors outside the interpreter; accept 'meta' here
    # (the same checks otherwise, including the interpreter test they make).
    import kernels
    from kernels import _common

    original = _common.check_tensor

    def check_tensor(x, name, *, ndim=None, dtypes=_common.FLOAT_DTYPES, kernel_device=True):
        if not (isinstance(x, torch.Tensor) and x.device.type == "meta"):
            return original(x, name, ndim=ndim, dtypes=dtypes, kernel_device=kernel_device)
        if ndim is not None and x.dim() != ndim:  # the original's checks, device aside
            raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
        if dtypes is not None and x.dtype not in dtypes:
            raise TypeError(f"{name} has dtype {x.dtype}")
        _common.interpreting()  # the environment lookup the original makes

    for mod in list(sys.modules.values()):
        if mod is not None and getattr(mod, "__name__", "").startswith("kernels") and \
                getattr(mod, "check_tensor", None) is original:
            mod.check_tensor = check_tensor
    _common.check_tensor = check_tensor
    del kernels
    _triton_impls_on_meta()
    _patch_dropout_generators()
    _native_meta_kernels()
    _installed = True


def _native_meta_kernels() -> None:
    """Use torch's C++ meta kernels wherever they exist. torch registers Python meta
    functions (torch._meta_registrations, for FakeTensor tracing) over them; those cost
    0.1-0.6 ms per elementwise op, 100x a CUDA op's host path, and would swamp the timing.
    The Python functions stay for the ops that have no C++ meta kernel (`PYTHON_META_CALLS`
    counts their calls: in the step only the eager stack's F.conv2d and its backward, whose
    Python meta, ~40 us a call, stands in for cuDNN's host path)."""
    import torch._meta_registrations as registrations
    from torch._decomp import global_decomposition_table

    lib = registrations._meta_lib_dont_use_me_use_register_meta
    table = {}
    for kind in ("meta", "post_autograd", "pre_autograd"):
        for op, fn in global_decomposition_table[kind].items():
            if isinstance(op, torch._ops.OpOverload):
                table.setdefault(op.name(), (op, fn))
    registered = list(lib._op_impls)  # "aten/add.Tensor/Meta"
    lib._destroy()
    global _python_metas
    _python_metas = torch.library.Library("aten", "IMPL", "Meta")
    for key in registered:
        namespace, rest = key.split("/", 1)
        name = f"{namespace}::{rest.rsplit('/', 1)[0]}"
        keep_python = name in ("aten::convolution", "aten::convolution_backward")  # no C++ meta path
        native = not keep_python and any(torch._C._dispatch_has_kernel_for_dispatch_key(name, key) for key in
                     ("Meta", "CompositeExplicitAutograd", "CompositeExplicitAutogradNonFunctional"))
        if name == "aten::relu":  # CPU/CUDA kernels only; its Python meta goes through torch.where (~0.5 ms)
            _python_metas.impl("relu", lambda x: torch.empty_like(x))
        elif name == "aten::abs.out":  # torch.isfinite's; the Python one goes through torch._refs
            _python_metas.impl("abs.out", lambda x, *, out: out.resize_(x.shape))
        elif name in table and not native:
            op, fn = table[name]
            _python_metas.impl(op, _counted(name, fn))


_python_metas = None
PYTHON_META_CALLS: Counter = Counter()  # ops whose meta ran in Python (slower than their CUDA host path)


def _counted(name, fn):
    def meta(*args, **kwargs):
        PYTHON_META_CALLS[name] += 1
        return fn(*args, **kwargs)

    return meta


def _triton_impls_on_meta() -> None:
    """The alexnet_triton custom ops run their CUDA (Triton) implementation on meta tensors,
    as on a GPU: the dispatch through torch.library is paid and every launch is counted (a
    meta tensor would otherwise get the op's fake implementation, which launches nothing)."""
    from kernels import ops
    from kernels.runtime import state

    for op, triton_impl in ops.TRITON_IMPLS.values():
        op.register_kernel("meta", triton_impl)
    # and the eager fast path (kernels.runtime.dispatch.call) picks the same implementation
    state.SWITCHES.triton_devices = state.SWITCHES.triton_devices | {"meta"}


def _patch_dropout_generators() -> None:
    """torch.Generators do not exist on 'meta'. The reference ColumnDropout draws from
    per-column generators: give it CPU ones there (a CPU draw, then a copy to the device where
    the CUDA code draws on the device). The column op's ColumnDropout keeps its streams on the
    device and needs none."""
    from alexnet.network import layers

    original = layers.ColumnDropout.streams

    def streams(self, device):
        on_meta = torch.device(device).type == "meta" and not self.fused
        return original(self, "cpu" if on_meta else device)

    layers.ColumnDropout.streams = streams


# =========================================================================== counting
_ALLOC = {"empty", "empty_strided", "new_empty", "new_empty_strided", "empty_like"}
_COPY = {"copy_", "clone", "_to_copy", "contiguous"}


def _touches_meta(args, kwargs, out) -> bool:
    def meta(v):
        if isinstance(v, torch.Tensor):
            return v.device.type == "meta"
        if isinstance(v, (list, tuple)):
            return any(meta(i) for i in v)
        return False

    return meta(args) or meta(list((kwargs or {}).values())) or meta(out)


def classify(func, args, kwargs, out) -> str:
    ns, name = func.namespace, func._schema.name.split("::")[-1]
    if ns == "c10d":
        return "collective"
    if name == "_local_scalar_dense":
        return "sync"
    if func.is_view or name in ("detach", "lift_fresh", "alias", "_unsafe_view"):  # metadata only, no kernel
        return "view"
    if not _touches_meta(args, kwargs, out):
        return "host"
    if name in _ALLOC:
        return "alloc"
    if name in _COPY:
        src = args[1] if name == "copy_" else args[0]
        dst = args[0] if name == "copy_" else out
        if isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor) and src.dtype != dst.dtype:
            return "cast"
        return "copy"
    return "torch_op"


_ROOT = str(Path(__file__).resolve().parent.parent) + os.sep
_BENCH = _ROOT + "bench" + os.sep
_FASTLAUNCH = _ROOT + os.path.join("kernels", "runtime", "fastlaunch.py")  # a launch's origin is whoever called it


def origin() -> str:
    """The project file (kernels/..., alexnet/...) whose code made the current call."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(_ROOT) and not name.startswith(_BENCH) and name != _FASTLAUNCH:
            return name[len(_ROOT):]
        frame = frame.f_back
    return "torch (autograd, loss)"


def _implementation(func):
    """The implementation a custom op runs on meta tensors here (its Triton one, see
    `_triton_impls_on_meta`), called directly so that the Census sees the aten ops inside it."""
    from kernels import ops

    return ops.TRITON_IMPLS[func._schema.name.split("::")[-1]][1]


class Census(TorchDispatchMode):
    """Counts the aten ops of everything run under it: by kind, by name and by origin. It only
    observes, so the custom ops' eager fast path (kernels.runtime.dispatch.call) still runs under it."""

    eager_fast_path_ok = True

    def __init__(self):
        super().__init__()
        self.kinds: Counter = Counter()
        self.ops: Counter = Counter()
        self.origins: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "alexnet_triton":  # a custom op is no launch itself: count what runs inside it
            self.kinds["custom_op"] += 1
            self.ops[f"custom_op:{func.__name__}"] += 1
            with self:  # the mode is off while it handles an op: back on for the op's implementation
                return _implementation(func)(*args, **(kwargs or {}))
        out = func(*args, **(kwargs or {}))
        kind = classify(func, args, kwargs, out)
        self.kinds[kind] += 1
        if kind not in ("view", "host"):
            self.ops[f"{kind}:{func.__name__}"] += 1
            if kind != "alloc":
                self.origins[origin()] += 1
        return out


def count_step(step) -> dict:
    """Launches of one call of `step()`, by kind, with the per-op histogram."""
    _StubKernel.launches.clear()
    census = Census()
    _StubKernel.origins = census.origins
    try:
        with census:
            step()
    finally:
        _StubKernel.origins = None
    kinds = {k: census.kinds.get(k, 0) for k in ALL_KINDS}
    kinds["triton"] = sum(_StubKernel.launches.values())
    ops = dict(census.ops)
    ops.update({f"triton:{k}": v for k, v in _StubKernel.launches.items()})
    return {"launches_per_step": sum(kinds[k] for k in DEVICE_KINDS), "launches_by_kind": kinds,
            "launches_by_origin": dict(census.origins.most_common()),
            "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])))}

"""Launching a Triton kernel without Triton's per-call argument binding.

`kernel[grid](*args, **meta)` costs about 19 us of host time per call in Triton 3.6-3.9
(bench/host_step.py's stubbed launches, 2-core CPU): binding the arguments to the signature,
computing each argument's specialisation (dtype, 16-byte alignment, integer divisibility),
hashing that into the cache key, looking the compiled kernel up, then launching it. For the
same specialisation, all of that gives the same answer every time. `launch` keeps, per
(kernel, device, meta-parameters, each argument's specialisation), the compiled kernel that
Triton returned on the first call and the constexpr values in signature order, and launches
later calls straight through the compiled kernel's launcher with exactly the arguments
JITFunction.run passes it (grid, stream, function, packed metadata, launch metadata, the
enter/exit hooks, then every parameter in order): about 6 us.

The key is conservative: tensors by dtype and 16-byte alignment of the data pointer (what
Triton specialises pointers on), every other argument by value (Triton specialises integers on
== 1, divisibility by 16 and the 32/64-bit range, all functions of the value). A call whose key
is new goes through Triton's own path (which compiles if needed) and records the result. Launch
hooks (knobs.runtime.launch_enter/exit_hook) and launch metadata are passed on as Triton does.
The fast path steps aside entirely (every call through Triton) under the interpreter, for a
kernel with pre-run hooks, when the `fast_launch` switch is off (kernels/runtime/state.py), and
for good (one warning) when the installed Triton is outside the tested range or a private call
fails unexpectedly (kernels/runtime/versions.py `FASTLAUNCH`; the call that failed is then made
through Triton).

Checked in tests/test_fastlaunch.py: with Triton's launcher stubbed (bench/launch_stubs.py),
each kernel family's launcher hands the launcher the same arguments both ways.
"""
from __future__ import annotations

import torch
from triton import knobs
from triton.runtime import driver

from . import versions
from .checks import interpreting
from .state import SWITCHES, memo

__all__ = ["launch", "clear"]

MAX_ENTRIES = 4096  # distinct specialisations kept (the paper's step uses some 40); past it, start again
_COMPILED = memo("fastlaunch.compiled", "a specialisation's key -> (compiled kernel, its constexpr values, the kernel)")


def _spec(arg):
    if isinstance(arg, torch.Tensor):
        return arg.dtype, arg.data_ptr() % 16 == 0
    return arg


def clear() -> None:
    """Forget every recorded kernel (the next call of each goes through Triton again)."""
    _COMPILED.clear()


def launch(kernel, grid: tuple, args: tuple, meta: dict) -> None:
    """`kernel[grid](*args, **meta)`: `args` the leading parameters, positionally; `meta` the
    rest by name (constexprs) and launch options (num_warps, num_stages, ...); `grid` a tuple."""
    if (not SWITCHES.fast_launch or interpreting() or not versions.FASTLAUNCH.ok()
            or getattr(kernel, "pre_run_hooks", True)):
        kernel[grid](*args, **meta)
        return
    device = driver.active.get_current_device()
    key = (id(kernel), device, knobs.runtime.debug, tuple(meta.items()), tuple(map(_spec, args)))
    entry = _COMPILED.get(key)
    if entry is None:
        compiled = kernel[grid](*args, **meta)
        if len(_COMPILED) >= MAX_ENTRIES:
            _COMPILED.clear()
        try:
            rest = kernel.params[len(args):]
            tail = tuple(meta[p.name] if p.name in meta else p.default for p in rest)
        except Exception as err:  # private: JITFunction.params (the launch itself went through Triton)
            versions.FASTLAUNCH.fail(err)
            return
        _COMPILED[key] = (compiled, tail, kernel)  # the kernel kept alive: its id stays its own
        return
    compiled, tail, _ = entry
    try:
        stream = driver.active.get_current_stream(device)
        grid_1 = grid[1] if len(grid) > 1 else 1
        grid_2 = grid[2] if len(grid) > 2 else 1
        runtime = knobs.runtime
        metadata = compiled.launch_metadata(grid, stream, *args, *tail)  # None unless an enter hook is set
        compiled.run(grid[0], grid_1, grid_2, stream, compiled.function, compiled.packed_metadata, metadata,
                     runtime.launch_enter_hook, runtime.launch_exit_hook, *args, *tail)
    except Exception as err:  # the compiled kernel's launch protocol (private) refused the call: a
        # changed protocol raises before anything launches (the launcher binds its arguments
        # first); a real launch error raises again from Triton's own path just below
        versions.FASTLAUNCH.fail(err)
        _COMPILED.clear()
        kernel[grid](*args, **meta)

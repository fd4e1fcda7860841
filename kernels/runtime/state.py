"""Every piece of process-wide state in kernels/, declared in one place.

Two kinds, and nothing else lives at module level that changes after import:

**Switches** (`SWITCHES`, a `Switches`) decide how the ops run. They start at their defaults;
a user or a test sets one by assignment (`state.SWITCHES.fast_path = False`) or for a block
(`with state.override(fast_path=False): ...`); `reset()` puts every one back.

    fast_path       kernels.runtime.dispatch.call may run an op's implementation through a plain
                    autograd.Function instead of torch.library's dispatch (~36-85 us per call).
                    Off: every call goes through the custom op. Tests compare the two paths.
    fast_launch     kernels.runtime.fastlaunch may launch a compiled kernel through Triton's
                    launcher directly (~12 us per launch). Off: every launch through Triton.
    triton_devices  device types whose tensors run the Triton kernels (the selection rule,
                    kernels.runtime.dispatch.implementation). bench/launch_stubs.py adds 'meta'.
    version_override  package -> the version string kernels/runtime/versions.py takes as
                    installed instead of the package's own (tests fake a newer Triton/torch).
    offline_device  the DeviceSpec the tuning models where no GPU answers (None: an H100,
                    kernels/runtime/device.py KNOWN[90]); bench/conv_sass.py --arch sets it.

**Remembered work** (`memo(...)`: a dict declared with its owner and what it holds) saves
repeated host work or carries a buffer from a forward to its backward. No answer depends on
it: `reset()` empties every one, and the next call does the work again.

    fastlaunch.compiled   kernels/runtime/fastlaunch.py: a specialisation's compiled kernel
    conv.checked          kernels/conv/common.py: a convolution's passed argument checks -> geometry
    conv.padded_buffers   kernels/conv/input_layout.py: conv1's padded input buffers (by tensor,
                          weakly) -> version when registered
    conv.padded_inputs    kernels/conv/op.py: conv1's padded image, from the fast path's
                          forward to its weight gradient (by input tensor, weakly)
    dispatch.grad_into    kernels/runtime/dispatch.py: a leaf (weakly) -> where its gradient may be
                          written (alexnet.training.optim.FlatPaperSGD registers its leaves)
    conv.plans            kernels/conv/plans.py: a launch plan (kernel name, constexprs, argument
                          key) -> the chosen config (export_plans / adopt_plans carry them across
                          processes)
    conv.restaged         kernels/conv/configs.py: a listed tile with fewer stages for a device
                          with less shared memory (the same object each time)
    device.specs          kernels/runtime/device.py: a CUDA device's DeviceSpec, read once

**The kernel checks' record**: `kernels.runtime.verify.STATE` (a `VerifyState`: whether the
checks run (ALEXNET_VERIFY, `--no-verify`), which op signatures and conv plans were checked
and what they found, where the run's report goes). Set by verify.py's functions only;
`verify.reset()` starts it afresh, and `reset()` here calls it (`on_reset`).

**The version gates**: `kernels.runtime.versions.FASTLAUNCH`, `PLANS`, `EAGER` (one per fast
path that uses a private Triton/PyTorch API): each decides once, on first use, whether its
path runs (the installed version is in the tested range), and turns it off for good after
the first unexpected error from a private call, with one warning. `versions.reset()`; `reset()`
here calls it (`on_reset`).

Besides these, filled once at import and never changed after: the op registry
(kernels/runtime/dispatch.py `TRITON_IMPLS`, `_IMPLS`, `_EAGER`, `_CHECKED`), and constant tables (tile
lists, launch parameters). One in-call flag: dispatch's `in_fast_forward()`, true only while the
fast path runs an op's forward (set and cleared around it, in a try/finally).

The tensor-keyed ones are `TensorTable`s (keyed weakly and by identity: an entry goes with its
tensor, and a lookup matches only that very tensor), the one place id() keys are handled.
"""
from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field, fields

__all__ = ["SWITCHES", "Switches", "TensorTable", "override", "memo", "reset", "on_reset", "describe"]


@dataclass
class Switches:
    fast_path: bool = True
    fast_launch: bool = True
    triton_devices: frozenset = field(default_factory=lambda: frozenset({"cuda"}))
    version_override: dict = field(default_factory=dict)
    offline_device: object = None


SWITCHES = Switches()
_MEMOS: dict[str, tuple[object, str]] = {}  # name -> (the dict, what it holds)
_RESETS: list = []  # the records' reset functions (on_reset)


@contextlib.contextmanager
def override(**values):
    """Set switches for the block, then put back what was there."""
    names = {f.name for f in fields(Switches)}
    unknown = set(values) - names
    if unknown:
        raise TypeError(f"no switch {sorted(unknown)}; the switches are {sorted(names)}")
    before = {name: getattr(SWITCHES, name) for name in values}
    for name, value in values.items():
        setattr(SWITCHES, name, value)
    try:
        yield SWITCHES
    finally:
        for name, value in before.items():
            setattr(SWITCHES, name, value)


class TensorTable:
    """A table keyed by tensors, weakly and by identity: an entry goes when its tensor is freed,
    and a lookup matches only the tensor the entry was made for (a later tensor at the same
    address does not). torch.utils.weak.WeakIdKeyDictionary does the same but builds a weak
    reference per lookup; these tables are read on every op call, so a plain dict of
    id -> (weak reference, value) with a check of the reference is used instead."""

    def __init__(self):
        self._entries: dict = {}

    def __setitem__(self, tensor, value) -> None:
        key, entries = id(tensor), self._entries
        entries[key] = (weakref.ref(tensor, lambda _, key=key: entries.pop(key, None)), value)

    def get(self, tensor, default=None):
        entry = self._entries.get(id(tensor))
        return entry[1] if entry is not None and entry[0]() is tensor else default

    def __contains__(self, tensor) -> bool:
        entry = self._entries.get(id(tensor))
        return entry is not None and entry[0]() is tensor

    def pop(self, tensor, default=None):
        entry = self._entries.get(id(tensor))
        if entry is None or entry[0]() is not tensor:
            return default
        del self._entries[id(tensor)]
        return entry[1]

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()


def memo(name: str, holds: str, *, by_tensor: bool = False):
    """A dict of remembered work, registered under `name` (one per name: a module imported twice
    gets its own back). `by_tensor`: keyed by tensors, weakly and by identity."""
    if name in _MEMOS:
        return _MEMOS[name][0]
    table = TensorTable() if by_tensor else {}
    _MEMOS[name] = (table, holds)
    return table


def reset() -> None:
    """Every switch to its default, every remembered table emptied, and every record registered
    with `on_reset` (the checks', the version gates') started afresh."""
    for f in fields(Switches):
        setattr(SWITCHES, f.name, getattr(Switches(), f.name))
    for table, _ in _MEMOS.values():
        table.clear()
    for reset_record in _RESETS:
        reset_record()


def on_reset(fn) -> None:
    """`fn()` is called by `reset()`: how a module whose state is a record of its own (verify.py,
    versions.py) joins the one reset."""
    if fn not in _RESETS:
        _RESETS.append(fn)


def describe() -> str:
    """The state as it is now: the switches' values, each table's size and what it holds."""
    rows = [f"switch {f.name} = {getattr(SWITCHES, f.name)!r}" for f in fields(Switches)]
    rows += [f"memo {name}: {len(table)} entries ({holds})" for name, (table, holds) in sorted(_MEMOS.items())]
    return "\n".join(rows)

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
    conv.plans            kernels/conv/common.py: a launch plan -> the autotuner's chosen config
    conv.plan_kernels     kernels/conv/common.py: a tuned kernel's name -> the kernel (plans cross
                          processes by name: export_plans / adopt_plans)

Besides these, filled once at import and never changed after: the op registry
(kernels/runtime/dispatch.py `TRITON_IMPLS`, `_IMPLS`, `_EAGER`), and constant tables (tile
lists, launch parameters). One in-call flag: dispatch's `in_fast_forward()`, true only while the
fast path runs an op's forward (set and cleared around it, in a try/finally).

The tensor-keyed ones are `torch.utils.weak.WeakIdKeyDictionary`s: an entry goes with its
tensor, and no `id()` can be reused by another tensor while its entry lives.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, fields

from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["SWITCHES", "Switches", "override", "memo", "reset", "describe"]


@dataclass
class Switches:
    fast_path: bool = True
    fast_launch: bool = True
    triton_devices: frozenset = field(default_factory=lambda: frozenset({"cuda"}))


SWITCHES = Switches()
_MEMOS: dict[str, tuple[object, str]] = {}  # name -> (the dict, what it holds)


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


def memo(name: str, holds: str, *, by_tensor: bool = False):
    """A dict of remembered work, registered under `name` (one per name: a module imported twice
    gets its own back). `by_tensor`: keyed by tensors, weakly and by identity."""
    if name in _MEMOS:
        return _MEMOS[name][0]
    table = WeakIdKeyDictionary() if by_tensor else {}
    _MEMOS[name] = (table, holds)
    return table


def reset() -> None:
    """Every switch to its default, every remembered table emptied."""
    for f in fields(Switches):
        setattr(SWITCHES, f.name, getattr(Switches(), f.name))
    for table, _ in _MEMOS.values():
        table.clear()


def describe() -> str:
    """The state as it is now: the switches' values, each table's size and what it holds."""
    rows = [f"switch {f.name} = {getattr(SWITCHES, f.name)!r}" for f in fields(Switches)]
    rows += [f"memo {name}: {len(table)} entries ({holds})" for name, (table, holds) in sorted(_MEMOS.items())]
    return "\n".join(rows)

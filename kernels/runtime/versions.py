"""The Triton and PyTorch versions the private APIs this project uses were tested on, and the
switch each fast path checks before it uses them.

Three fast paths reach past the public API, each for host time per launch (bench/RESULTS.md,
issue 13); each has a public path that does the same work:

    FASTLAUNCH  kernels/runtime/fastlaunch.py: the compiled kernel's launch protocol
                (CompiledKernel.run / launch_metadata / function / packed_metadata,
                JITFunction.params / pre_run_hooks, knobs.runtime's launch hooks); public path:
                `kernel[grid](*args, **meta)`.
    PLANS       kernels/conv/plans.py launch plans: the autotuner's `best_config` after its
                first run, then the chosen config launched without Autotuner.run; public path:
                `tuned[grid](*args, **meta)` on every call.
    EAGER       kernels/runtime/dispatch.py's eager shortcut around torch.library's dispatch:
                torch._C._len_torch_dispatch_stack, torch._C._functorch.is_functorch_wrapped_tensor,
                torch.utils._python_dispatch._get_current_dispatch_mode_stack; public path: the
                custom op (`torch.ops.alexnet_triton.*`).

Tested (TESTED below; pyproject.toml's [tool.alexnet-triton] states the same):
    triton 3.6  on the GPU host (H100, torch 2.11): every path, real launches (bench/RESULTS.md)
    triton 3.9  in CI (torch 2.13, CPU): the launch contract with Triton's launcher stubbed
                (tests/test_fastlaunch.py), the plans and the eager path on 'meta' tensors
    3.7 and 3.8 were not installed here; their JITFunction.run hands the launcher the same
    arguments as 3.6 and 3.9 do (the same call in both), so the range includes them.
    torch 2.11 (GPU host) and 2.13 (CI); 2.12 not installed. Every private call above exists
    in both.

A path checks its range once (on first use): outside it, or on the first unexpected error
from one of its private calls, it warns once (RuntimeWarning, naming the path, the installed
version and the tested range) and steps aside for the rest of the process: every later call
takes the public path, and the run goes on.

Process-wide state (listed in kernels/runtime/state.py): each `FastPath`'s `state` (None: not
yet checked; True: in use; False: stepped aside); `reset()` forgets them (tests). The
`version_override` switch (kernels/runtime/state.py) overrides what a package's version is taken
to be (tests fake a newer Triton).
"""
from __future__ import annotations

import re
import warnings

from .state import SWITCHES, on_reset

__all__ = ["TESTED", "FastPath", "FASTLAUNCH", "PLANS", "EAGER", "installed", "tested", "reset"]

TESTED = {"triton": ((3, 6), (3, 9)), "torch": ((2, 11), (2, 13))}  # (oldest, newest) major.minor, inclusive


def _major_minor(version: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", version)
    return (int(m[1]), int(m[2])) if m else (0, 0)


def installed(package: str) -> str:
    """The installed version of "triton" or "torch" (or what the `version_override` switch says it is)."""
    if package in SWITCHES.version_override:
        return SWITCHES.version_override[package]
    if package == "triton":
        import triton

        return triton.__version__
    import torch

    return torch.__version__


def tested(package: str, version: str | None = None) -> bool:
    """Whether `version` (default: the installed one) of `package` is inside the tested range."""
    low, high = TESTED[package]
    return low <= _major_minor(version or installed(package)) <= high


def _span(package: str) -> str:
    (a, b), (c, d) = TESTED[package]
    return f"{a}.{b}-{c}.{d}"


class FastPath:
    """One use of a private API: `ok()` says whether to take it (checked once: the package's
    version in the tested range); `fail(err)` steps aside for good after an unexpected error."""

    def __init__(self, name: str, package: str, public: str):
        self.name, self.package, self.public = name, package, public
        self.state: bool | None = None

    def ok(self) -> bool:
        if self.state is None:
            self.state = tested(self.package)
            if not self.state:
                self._warn(f"{self.package} {installed(self.package)} is outside the tested "
                           f"{_span(self.package)}")
        return self.state

    def fail(self, err: BaseException) -> None:
        """Step aside after `err` from a private call (warned once; later calls take the public path)."""
        if self.state is not False:
            self.state = False
            self._warn(f"its private call failed under {self.package} {installed(self.package)} "
                       f"({type(err).__name__}: {str(err).strip().splitlines()[0][:120] if str(err).strip() else ''})")

    def _warn(self, why: str) -> None:
        warnings.warn(f"alexnet-triton: the {self.name} fast path is off ({why}); using {self.public} instead, "
                      "which is slower on the host but does the same work", RuntimeWarning, stacklevel=4)


FASTLAUNCH = FastPath("kernel-launch", "triton", "kernel[grid](...)")
PLANS = FastPath("conv launch-plan", "triton", "the autotuner on every call")
EAGER = FastPath("eager dispatch", "torch", "the custom ops")
PATHS = (FASTLAUNCH, PLANS, EAGER)


def reset() -> None:
    """Forget every path's check (the next use checks again); tests."""
    for path in PATHS:
        path.state = None


on_reset(reset)  # kernels.runtime.state.reset() forgets the checks too

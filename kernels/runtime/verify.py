"""Correctness on first contact: no kernel is trusted before it has been checked on the device
it runs on (issue 23).

Two checks, both eager and one-time:

- **Verified tuning** (the convolution, kernels/conv/plans.py `launch`): the first time a
  launch plan is made, every candidate tile config runs once on the real arguments into outputs
  filled with NaN and is compared with PyTorch's convolution (same dtype) before any timing.
  A failing candidate (wrong values, a tile left unwritten, NaN/inf where the reference has
  none, a compile error, out of resources) is excluded and named once (stderr and the run's
  log); if none passes, the plan runs the reference for that pass. Only verified choices go
  into the plan cache (`PlanCache`, keyed by what can change the answer: Triton and PyTorch
  versions, device name and capability, a hash of the kernel sources) and into
  `export_plans` / `adopt_plans`.
- **Checked first use** (every other op, kernels/runtime/first_use.py, called from
  kernels/runtime/dispatch.py `implementation`): the
  first call per (op, shapes, dtypes, layout, scalar arguments) is compared once with the
  op's reference; on a mismatch that op and signature run the reference for the rest of the
  process, with one warning line. Later calls cost one dict lookup.

The comparison (kernels/runtime/tolerances.py `compare`), for an output r (reference) and a (kernel), in float64:
    non-finite  a is NaN exactly where r is, +-inf exactly where r is (an unwritten tile keeps
                the NaN it was filled with; a misplaced NaN/inf fails);
    elementwise |a - r| <= rtol * |r| + atol * rms(r) on the finite elements;
    norm        ||a - r|| <= ntol * ||r||.
Tolerances (`conv_tolerance`, `op_tolerance`) are built from three unit roundoffs: u_out
of the stored output (bf16 2^-8, fp16 2^-11, fp32 2^-24: the kernel and the reference each
round once to it, so they may differ by about one unit in the last place), u_in of the
products (tf32 2^-11: the two implementations may round fp32 operands to tf32 differently;
16-bit products are exact in fp32) and the fp32 accumulation, whose order differs between
the two: sqrt(K) * 2^-24 relative for a reduction of length K (the probabilistic bound, see
tests/compare.py `sum_atol`). So, for a convolution of reduction length K:
    rtol = 4 u_out,  atol = 4 u_out + 16 u_in + 8 sqrt(K) 2^-24,  ntol = 2 u_out + 4 u_in + 4 sqrt(K) 2^-24
(bf16, K = 2304: rtol 0.016, atol 0.016 rms, ntol 0.008). A wrong tile, a skipped K block
(2.8% of conv3's reduction: errors ~0.17 rms in every element) or an unwritten tile exceed
these by an order of magnitude. The memory-bound ops compute in fp32 and round once to the
output; their references run on the same values in fp32 (16-bit inputs upcast, exactly), in
other formulas (LRN's pow), so `op_tolerance` uses rtol = atol = 8 u with u = 2^-17 for fp32
(transcendentals differ by a few ulps), 2^-11 fp16, 2^-8 bf16; integer and boolean outputs
(pooling's argmax, the count of wrong guesses, the finiteness flag) must be equal.

Process-wide state: `STATE` (below), set by this module's functions only; `reset()` returns it
to a fresh process's (tests). The switch: ALEXNET_VERIFY=0 in the environment (read at import
and by `reset`), `set_enabled(False)` (alexnet.train --no-verify). Checks never run while
torch.compile / export traces or while a CUDA graph is being captured (`may_check`).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import state as _state
from .tolerances import compare, conv_tolerance

ENV_SWITCH = "ALEXNET_VERIFY"
ENV_CACHE = "ALEXNET_PLAN_CACHE"  # the plan cache file (default: $XDG_CACHE_HOME or ~/.cache, alexnet/conv_plans.json)
ENV_LOG = "ALEXNET_VERIFY_LOG"    # a JSON-lines file the records also go to (default: none; a run sets its own)


@dataclass
class VerifyState:
    """Everything this module remembers in a process (one place; `reset` clears it).

    enabled      the switch (ALEXNET_VERIFY, set_enabled)
    interpreter  also check on Triton's CPU interpreter (tests turn it on; a GPU always checks)
    plans        conv launch plan -> "verified" | "reference" | "cached" (verified in an earlier process)
    ops          op signature -> True (checked, the kernel runs) | False (mismatch: the reference runs)
    excluded     one record per excluded candidate or op (dicts: what, shape, pass, config, error)
    op_checks    how many first-use comparisons ran (tests: exactly once per signature)
    seconds      host time spent in the checks (what they cost a run: the summary line)
    ran          op name -> "triton" | "reference" | "triton+reference" (what each op ran, for the logs)
    log_path     where records are appended as JSON lines (None: stderr only)
    identity     overrides of `identity()`'s fields (tests: another device name or source hash)
    cache_path   the plan cache's file (None: ENV_CACHE or the default)
    progress     a callback told of each candidate before and after its check (None: none)
    """
    enabled: bool = True
    interpreter: bool = False
    plans: dict = field(default_factory=dict)
    ops: dict = field(default_factory=dict)
    excluded: list = field(default_factory=list)
    op_checks: int = 0
    seconds: float = 0.0
    ran: dict = field(default_factory=dict)
    log_path: Path | None = None
    identity: dict = field(default_factory=dict)
    cache_path: Path | None = None
    progress: object = None  # callable(event, check, config name, status, why): bench/gpu_report.py's worker


def _fresh() -> VerifyState:
    log = os.environ.get(ENV_LOG)
    return VerifyState(enabled=os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off"),
                       log_path=Path(log) if log else None)


STATE = _fresh()


def reset() -> None:
    """Forget every verification of this process (a fresh process's state; reads the environment again)."""
    global STATE
    STATE = _fresh()


_state.on_reset(lambda: reset())  # kernels.runtime.state.reset() starts the record afresh too


def set_enabled(on: bool) -> None:
    STATE.enabled = bool(on)


def set_log(path) -> None:
    """Append this process's records (exclusions, fallbacks, mismatches) to `path` (JSON lines)."""
    STATE.log_path = Path(path) if path is not None else None


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def may_check() -> bool:
    """Whether a check may run now: switched on, not tracing (torch.compile / export), not
    capturing a CUDA graph (a check's extra launches and host syncs cannot be captured)."""
    return STATE.enabled and not torch.compiler.is_compiling() and not _capturing()


def applies(device: torch.device) -> bool:
    """Whether Triton kernels on `device` are checked: a GPU always, the interpreter when asked."""
    if device.type == "cuda":
        return STATE.enabled
    return STATE.enabled and STATE.interpreter and device.type == "cpu"


# ------------------------------------------------------------------------------ messages
def record(kind: str, line: str, **fields) -> None:
    """One warning line on stderr and one JSON record in the run's log (if any)."""
    print(f"[verify] {line}", file=sys.stderr, flush=True)
    entry = {"kind": kind, "message": line, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **fields}
    if kind in ("excluded", "fallback", "op-mismatch"):
        STATE.excluded.append(entry)
    if STATE.log_path is not None:
        try:
            with open(STATE.log_path, "a") as f:
                f.write(json.dumps(entry, default=str) + "\n")
        except OSError as err:  # the log is a convenience: never fail a run over it
            print(f"[verify] could not write {STATE.log_path}: {err}", file=sys.stderr)


def summary() -> str:
    """The one line after the warm-up: plans verified, configs excluded, ops on the reference."""
    plans = STATE.plans.values()
    n_ref_plans = sum(s == "reference" for s in plans)
    n_excl = sum(e["kind"] == "excluded" for e in STATE.excluded)
    ref_ops = sorted({sig[0] for sig, ok in STATE.ops.items() if not ok})
    if not STATE.enabled:
        return "kernel checks: off (ALEXNET_VERIFY=0 / --no-verify)"
    line = (f"kernel checks: {sum(s == 'verified' for s in plans)} conv plans verified, "
            f"{sum(s == 'cached' for s in plans)} from the verified cache, {n_excl} configs excluded, "
            f"{n_ref_plans} conv passes and {len(ref_ops)} ops on the reference"
            + (f" ({', '.join(ref_ops)})" if ref_ops else "")
            + f"; {len(STATE.ops)} op signatures checked; the checks took {STATE.seconds:.1f} s")
    if STATE.excluded:
        line += f"; details above and in {STATE.log_path}" if STATE.log_path else "; details above (stderr)"
    return line


def implementations() -> dict:
    """Which implementation each op ran in this process ('triton', 'reference' or both), for
    the metrics log and the checkpoint."""
    return dict(sorted(STATE.ran.items()))


def note_ran(name: str, impl: str) -> None:
    prev = STATE.ran.get(name)
    if prev != impl:
        STATE.ran[name] = impl if prev in (None, impl) else "triton+reference"


# ------------------------------------------------------------------------------ plan cache
KERNEL_SOURCES = ("conv/common.py", "conv/plans.py", "conv/configs.py", "conv/fwd.py", "conv/dgrad.py", "conv/wgrad.py",
                  "conv/input_layout.py", "_common.py")


def _source_hash() -> str:
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for rel in KERNEL_SOURCES:
        try:
            h.update(rel.encode() + b"\0" + (root / rel).read_bytes())
        except OSError:
            h.update(rel.encode() + b"\0missing")
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _installation() -> tuple:
    """(Triton's version, torch's, the kernels' sources' hash): once per process, a pure function
    of the installation."""
    import triton

    return triton.__version__, torch.__version__, _source_hash()


def identity(device: torch.device | None = None) -> dict:
    """What can change a verified answer: versions, the device, the kernels' sources
    (`STATE.identity` overrides fields: tests)."""
    triton_version, torch_version, source = _installation()
    dev = {"device": "interpreter", "capability": None}
    if device is not None and device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        dev = {"device": torch.cuda.get_device_name(index), "capability": list(torch.cuda.get_device_capability(index))}
    return {"triton": triton_version, "torch": torch_version, "source": source, **dev, **STATE.identity}


def plan_key(name: str, meta, args_key, device: torch.device | None) -> str:
    """The cache key of a launch plan: the kernel, its constexprs and argument key, and `identity`."""
    text = json.dumps([identity(device), name, [list(map(str, m)) for m in meta], [str(a) for a in args_key]])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# The compile-time facts that pick a kernel's code path for a problem, without its epilogue
# flags (bias, ReLU, the wgrad outputs): a config that fails one variant of a layer is excluded
# for all (a crash or a miscompile found by bench/gpu_report.py applies to the training run's).
CLASS_FIELDS = ("C_PER_G", "K_PER_G", "KH", "KW", "SH", "SW", "PH", "PW", "H", "W", "OH", "OW", "PIX_MULT",
                "IMG_MULT", "PRECISION", "FLAT", "NHWC_C")


def class_key(name: str, meta, dtype, device: torch.device | None) -> str:
    """The cache key under which a layer's excluded configs are kept (see CLASS_FIELDS)."""
    facts = [[k, str(v)] for k, v in meta if k in CLASS_FIELDS]
    text = json.dumps([identity(device), name, facts, str(dtype)])
    return "class-" + hashlib.sha256(text.encode()).hexdigest()[:26]


def config_name(cfg) -> str:
    """A triton.Config in one stable phrase (the cache's and the messages' name for it)."""
    kw = ",".join(f"{k}={v}" for k, v in sorted(cfg.kwargs.items()))
    return f"{kw},w{cfg.num_warps},s{cfg.num_stages}"


class PlanCache:
    """Verified launch plans across processes: one JSON file, {key: {"config": name or None
    (the reference), "excluded": {config name: reason}}}. Written atomically (temp file +
    rename) after merging with what is on disk, so concurrent writers lose at most an entry."""

    def __init__(self, path=None):
        cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        self.path = Path(path or STATE.cache_path or os.environ.get(ENV_CACHE)
                         or cache_home / "alexnet" / "conv_plans.json")

    def read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def get(self, key: str) -> dict:
        return self.read().get(key, {})

    def update(self, key: str, *, config=None, chosen: bool = False, excluded: dict | None = None,
                context: dict | None = None) -> None:
        """Record for `key` the verified choice (`chosen`: config name, or None for the
        reference) and/or more excluded configs."""
        data = self.read()
        entry = data.setdefault(key, {})
        if chosen:
            entry["config"] = config
        if excluded:
            entry.setdefault("excluded", {}).update(excluded)
        if entry.get("config") in entry.get("excluded", {}):  # a choice found wrong later: verify again
            del entry["config"]
        if context:
            entry["context"] = context
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as err:
            print(f"[verify] could not write the plan cache {self.path}: {err}", file=sys.stderr)


# ------------------------------------------------------------------------------ verified tuning
@dataclass
class ConvCheck:
    """What a conv launcher gives `launch` so that candidates can be verified: the pass and
    the problem in words, the outputs the kernel writes (filled with NaN before each
    candidate), `result()` (the pass's outputs after a launch, e.g. wgrad's summed splits),
    `reference()` (torch's results, same order) and `fallback()` (writes the reference into
    the pass's outputs: the plan when no candidate passes)."""
    pass_: str
    shape: str
    outputs: tuple
    result: object
    reference: object
    fallback: object
    dtype: torch.dtype
    precision: str
    reduction: int
    key: str = ""        # the plan's cache keys (set by the plan maker)
    class_key: str = ""


class ContextCorrupted(RuntimeError):
    """A candidate broke the CUDA context (illegal address, misaligned access): nothing more can
    run in this process. bench/gpu_report.py's verify stage finds such configs in subprocesses
    and excludes them in the plan cache."""


def failure_kind(err: BaseException) -> str:
    """'out of resources', 'crashed' (the CUDA context is gone) or 'compile error' for an
    exception raised by a candidate's launch."""
    text = f"{type(err).__name__}: {err}"
    if "OutOfResources" in text or "out of resource" in text.lower():
        return "out of resources"
    if any(s in text for s in ("CUDA error", "illegal memory access", "misaligned address", "illegal instruction",
                               "unspecified launch failure")):
        return "crashed"
    return "compile error"


def verify_candidates(check: ConvCheck, candidates, run, *, device) -> tuple[list, dict]:
    """Run each candidate once (`run(config)` launches it) into NaN-filled outputs and compare with
    the reference: (configs that passed, {config name: why the others failed}). Failures are
    named once each (`record`)."""
    start = time.perf_counter()
    try:
        return _verify_candidates(check, candidates, run, device)
    finally:
        STATE.seconds += time.perf_counter() - start


def _verify_candidates(check: ConvCheck, candidates, run, device) -> tuple[list, dict]:
    expected = [e for e in check.reference()]
    tol = conv_tolerance(check.dtype, check.precision, check.reduction)
    passed, failed = [], {}
    for cfg in candidates:
        name = config_name(cfg)
        if STATE.progress is not None:
            STATE.progress("try", check, name, "", "")
        for out in check.outputs:
            if out is not None:
                out.fill_(float("nan"))
        status = "mismatch"
        try:
            run(cfg)
            actual = check.result()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            why = next((w for a, e in zip(actual, expected) if a is not None and e is not None
                        for w in [compare(a, e, tol)] if w), None)
        except Exception as err:  # compile errors, out of resources: the candidate is out, the run goes on
            status = failure_kind(err)
            why = f"{status}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
            if status == "crashed":
                record("excluded", f"{check.pass_} config {name} for {check.shape} broke the CUDA context ({why}); "
                       "this process cannot go on: `python bench/gpu_report.py --stages verify` finds such configs "
                       "and excludes them in the plan cache", shape=check.shape, pass_=check.pass_, config=name,
                       error=why, status=status)
                raise ContextCorrupted(why) from err
        if STATE.progress is not None:
            STATE.progress("result", check, name, "verified" if why is None else status, why or "")
        if why is None:
            passed.append(cfg)
        else:
            failed[name] = why
            record("excluded", f"excluded {check.pass_} config {name} for {check.shape}: {why}",
                   shape=check.shape, pass_=check.pass_, config=name, error=why, status=status)
    return passed, failed


def note_fallback(check: ConvCheck) -> None:
    record("fallback", f"no {check.pass_} config passed for {check.shape}: that pass runs PyTorch's convolution",
           shape=check.shape, pass_=check.pass_)

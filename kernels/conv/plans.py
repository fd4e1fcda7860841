"""Launch plans: which tile config a convolution pass runs, chosen once per problem.

`launch` runs a kernel with a given config (sweeps, tests), the interpreter's or a small
problem's fixed config, or the problem's plan. A plan is made on the problem's first call:
with the checks on (kernels/runtime/verify.py) every candidate is verified against the
reference before the fastest passing one is chosen (`_verified_plan`; the plan cache consulted
and fed), with them off the autotuner picks. Later calls launch the plan's config directly.
`export_plans` / `adopt_plans` carry plans to other processes (rank 0's for every rank).
"""
from __future__ import annotations

import torch

from .._common import interpreting
from ..runtime import verify, versions
from ..runtime.fastlaunch import launch as fast_launch
from ..runtime.state import memo

__all__ = ["launch", "export_plans", "adopt_plans", "REFERENCE"]


def launch(kernel, tuned, tuning, grid, args, meta: dict, *, flops: int, config=None, check=None) -> bool:
    """Launch `kernel` with positional `args` and constexprs `meta` plus a tile config:

    - `config` (a triton.Config) when given: exactly that one, no tuning (sweeps, tests);
      its kwargs may also override entries of `meta` (e.g. FLAT);
    - on the CPU interpreter: `tuning.interpreter`, one small config (fast tests), unless the
      checks apply there (tests) and `tuning.interpreter_candidates` lists candidates to verify;
    - problems under `tuning.min_flops`: `tuning.small` (not worth a tuning run; verified all the same);
    - otherwise a launch plan, made once per problem (`_PLANS`): with the checks on
      (kernels/runtime/verify.py) and `check` given, every candidate is first verified against
      the reference (`_verified_plan`; `check()` makes the pass's verify.ConvCheck, see
      kernels/conv/verified.py), the plan cache consulted and fed; with them off,
      `tuned`, the autotuner over `tuning.configs`. Later calls launch the plan's config directly.
    `grid(meta)` maps the meta-parameters (incl. the tile) to the launch grid. Returns False when
    the plan runs the reference (no candidate passed): `check.fallback()` then wrote the outputs.
    """
    verified = check is not None and config is None and verify.applies(args[0].device)
    if config is None and interpreting() and not (verified and tuning.interpreter_candidates):
        config = tuning.interpreter
    if config is None and flops < tuning.min_flops and not verified:
        config = tuning.small
    if config is None and not verified and not versions.PLANS.ok():  # outside the tested Triton: the autotuner
        tuned[grid](*args, **meta)                                      # every call (its pick is private API)
        return True
    if config is None:
        plan = (kernel.fn.__name__, tuple(meta.items()),
                tuple(a.dtype if isinstance(a, torch.Tensor) else a for a in args))
        config = _PLANS.get(plan)
        if config is None and not verified:  # the autotuner picks (or finds its pick) and launches
            tuned[grid](*args, **meta)
            try:  # private: the Autotuner's pick and the kernel's function
                _PLANS[plan] = tuned.best_config
            except Exception as err:
                _PLANS.pop(plan, None)
                versions.PLANS.fail(err)
            return True
        if config is None:
            if not verify.may_check():  # tracing or capturing: no plan made here (the warm-up makes it)
                config = _candidates(tuning, args, meta, flops)[0]
            else:
                config = _verified_plan(kernel, tuning, grid, args, meta, plan, check(), flops)
        if isinstance(config, str):  # REFERENCE (a string: `is` would miss one adopted from another process)
            fallback = check()
            fallback.fallback()
            verify.note_ran(f"conv_{fallback.pass_}", "reference")
            return False
        # Autotuner.run's key/dict work skipped (~37 us per launch): the same config, the same launch;
        # and Triton's argument binding (kernels/runtime/fastlaunch.py, ~12 us more)
        fast_launch(kernel, grid({**meta, **config.kwargs}), args, {**meta, **config.all_kwargs()})
        return True
    meta = {**meta, **config.kwargs}
    kernel[grid(meta)](*args, **meta, num_warps=config.num_warps, num_stages=config.num_stages)
    return True


REFERENCE = "reference"  # a plan's config when no candidate passed: the pass runs PyTorch's convolution


def _candidates(tuning, args, meta: dict, flops: int) -> list:
    """The configs a verified plan tries: the interpreter's test list, `small` under min_flops,
    else the tuner's candidates that fit the shape (`ConvTuning.prune`)."""
    if interpreting():
        return list(tuning.interpreter_candidates)
    if flops < tuning.min_flops:
        return [tuning.small]
    return tuning.prune(tuning.configs + tuning.tf32 + tuning.ieee, {"x": args[0]}, **meta)


def _verified_plan(kernel, tuning, grid, args, meta: dict, plan, check, flops: int):
    """Make a launch plan whose config has been checked (kernels/runtime/verify.py): from the
    plan cache if this problem was verified on this device, kernel source and versions before;
    else verify every candidate (those the cache lists as excluded skipped), time the ones
    that passed (the first one on the interpreter) and cache the choice. The chosen config
    runs once more, so the outputs hold its result; REFERENCE if none passed."""
    name = kernel.fn.__name__
    device = args[0].device
    key = verify.plan_key(name, plan[1], plan[2], device)
    class_key = verify.class_key(name, plan[1], args[0].dtype, device)
    cache = verify.PlanCache()
    entry = cache.get(key)
    candidates = _candidates(tuning, args, meta, flops)
    by_name = {verify.config_name(c): c for c in candidates}
    layer_excluded = cache.get(class_key).get("excluded", {})  # (bench/gpu_report.py's findings among them)
    if "config" in entry and (entry["config"] is None or entry["config"] in by_name) and \
            entry["config"] not in layer_excluded:  # a choice excluded since: verified again
        config = REFERENCE if entry["config"] is None else by_name[entry["config"]]
        _PLANS[plan] = config
        verify.STATE.plans[plan] = "cached" if config is not REFERENCE else "reference"
        if config is REFERENCE:
            verify.note_fallback(check)
            return REFERENCE
        verify.note_ran(f"conv_{check.pass_}", "triton")
        fast_launch(kernel, grid({**meta, **config.kwargs}), args, {**meta, **config.all_kwargs()})
        return config
    excluded = {**entry.get("excluded", {}), **layer_excluded}
    todo = [c for c in candidates if verify.config_name(c) not in excluded]
    check.key, check.class_key = key, class_key

    def run(cfg):  # as the plan will launch it (fast_launch: the same meta-parameters and options)
        kernel[grid({**meta, **cfg.kwargs})](*args, **{**meta, **cfg.all_kwargs()})

    passed, failed = verify.verify_candidates(check, todo, run, device=device)
    context = {"kernel": name, "shape": check.shape, "pass": check.pass_, **verify.identity(device)}
    if failed:
        cache.update(class_key, excluded=failed, context=context)
    if not passed:
        _PLANS[plan] = verify.STATE.plans[plan] = REFERENCE
        cache.update(key, config=None, chosen=True, excluded=failed, context=context)
        verify.note_fallback(check)
        return REFERENCE
    config = passed[0]
    if len(passed) > 1 and device.type == "cuda":
        from triton.testing import do_bench

        times = [do_bench(lambda c=c: run(c), warmup=5, rep=20) for c in passed]
        config = passed[min(range(len(passed)), key=times.__getitem__)]
    run(config)  # the outputs: the chosen config's (the candidates wrote them in turn)
    _PLANS[plan] = config
    verify.STATE.plans[plan] = "verified"
    verify.note_ran(f"conv_{check.pass_}", "triton")
    cache.update(key, config=verify.config_name(config), chosen=True, excluded=failed, context=context)
    return config


# Launch plans: the chosen config per (kernel, by its name: the conv kernels' names are unique,
# and a name means the same kernel in every process; constexprs; the arguments' dtypes and
# integers: shapes, strides, pixel bucket). A finer key than the autotuner's own, so a plan never
# reuses a choice made for another problem, and a new layout gets its own plan.
_PLANS = memo("conv.plans", "a launch plan (kernel name, constexprs, argument key) -> the chosen triton.Config")


def export_plans() -> list:
    """The launch plans made so far as picklable rows (kernel name, constexprs, argument key,
    chosen triton.Config or REFERENCE, how it was chosen: "verified" / "cached" / "reference",
    or "unverified" when the checks were off): what `adopt_plans` takes in another process
    (alexnet.training.tuning.share_tuning sends rank 0's to every rank)."""
    return [(*plan, config, verify.STATE.plans.get(plan, "unverified")) for plan, config in _PLANS.items()]


def adopt_plans(rows) -> int:
    """Make `export_plans` rows this process's plans (replacing its own choice for the same
    problem); returns how many. With the checks on, an unverified row is not adopted (this
    process keeps, or makes and verifies, its own plan)."""
    adopted = 0
    for name, meta, args, config, status in rows:
        if status == "unverified" and verify.STATE.enabled:
            continue
        plan = (name, meta, args)
        _PLANS[plan] = config
        verify.STATE.plans[plan] = status
        adopted += 1
    return adopted

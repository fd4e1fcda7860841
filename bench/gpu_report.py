"""Everything to measure on the day a GPU is lent, in one command (< 25 min on one H100).

    PYTHONPATH=. python3 -m bench.gpu_report            # all stages -> bench/gpu_report_out/<time>/
    python3 bench/gpu_report.py --dry-run                # the stages, their time boxes and commands
    python3 bench/gpu_report.py --stages tests,step      # some of them
    python3 bench/gpu_report.py --out DIR

Each stage runs as its own subprocess under a time box (a stage that fails, hangs or
crashes is recorded as such and the report goes on), in this order:

    env      device, driver, torch/triton versions
    warm     conv_sweep --compile-only: compile the conv tiles in parallel, so the later
             stages autotune from Triton's cache (the report is safe to run cold)
    verify   every kept conv config of every layer x pass x dtype at the model's shapes
             (batch 128, the single-device and the two-column shard shapes) checked against
             cuDNN as a training run's verified tuning does (kernels/runtime/verify.py), in
             subprocesses, one group (layer, pass, dtype, shape set) after another; a config
             that kills its process (illegal address, misaligned access) is "crashed" and the
             groups go on in a new one. Table: verified / mismatch / compile error / out of
             resources / crashed, and the seconds each group's verification took; every
             config that failed is written into the plan cache as excluded (this module's
             `--stage-verify`), so training runs on this machine never try it
    tests    the GPU halves of the tests (bf16/tf32, CUDA graphs, the requires_gpu tests)
    conv     the per-layer convolution benchmark against cuDNN (bench/bench_conv.py)
    memory   the memory-bound kernels against PyTorch (LRN, max-pool, dropout, SGD)
    step     the training step, ours vs eager+cuDNN vs torch.compile (default and
             max-autotune), bf16 and tf32, with and without a CUDA graph, peak memory,
             and the host time to issue one step (this module's `--stage-step`)
    loader   the data loader's images/s and the augmentation kernel (bench/bench_data.py)
    host     bench/host_step.py on this machine's CPU (launches and host us, stubbed)

Output: report.json (every stage: status, seconds, its rows or its log's tail) and
report.md, the tables to paste into bench/RESULTS.md. Stage logs sit beside them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 25 * 60


@dataclass(frozen=True)
class Stage:
    name: str
    what: str
    timeout_s: int
    command: tuple[str, ...]
    json_name: str | None = None  # the stage's rows, written by the command (BENCH_JSON or --json-out)
    env: dict = field(default_factory=dict)


def stages(out: Path) -> list[Stage]:
    py = sys.executable
    quick = {"HYPOTHESIS_PROFILE": "quick"}
    return [
        Stage("env", "device and versions", 20, (py, "-m", "bench.gpu_report", "--stage-env", str(out / "env.json")),
              "env.json"),
        Stage("warm", "compile the conv tiles (Triton cache)", 180,
              (py, "bench/conv_sweep.py", "--compile-only", "--dtype", "bf16")),
        Stage("verify", "check every kept conv config against cuDNN (crashes isolated)", 300,
              (py, "-m", "bench.gpu_report", "--stage-verify", str(out / "verify.json")), "verify.json"),
        Stage("tests", "GPU halves of the tests", 270,
              (py, "-m", "pytest", "-q", "-x", "--junitxml", str(out / "tests.xml"), "tests/test_conv.py",
               "tests/test_lrn.py", "tests/test_maxpool.py", "tests/test_dropout.py", "tests/test_sgd.py",
               "tests/test_optim.py", "tests/test_model.py", "tests/test_host_step.py", "tests/test_parallel.py"),
              None, quick),
        Stage("conv", "per-layer convolution vs cuDNN", 120,
              (py, "-m", "pytest", "-q", "bench/bench_conv.py", "--benchmark-only"), "conv.json"),
        Stage("memory", "memory-bound kernels vs PyTorch", 120,
              (py, "-m", "pytest", "-q", "bench/bench_lrn.py", "bench/bench_maxpool.py", "bench/bench_dropout.py",
               "bench/bench_sgd.py", "--benchmark-only"), "memory.json"),
        Stage("step", "training step: ours / eager / compile, graphs, memory", 330,
              (py, "-m", "bench.gpu_report", "--stage-step", str(out / "step.json")), "step.json"),
        Stage("loader", "data loader images/s", 60,
              (py, "-m", "pytest", "-q", "bench/bench_data.py", "--benchmark-only"), "loader.json"),
        Stage("host", "host side of the step (stubbed launches)", 45,
              (py, "bench/host_step.py", "--steps", "30", "--json"), "host.json"),
    ]


def run_stage(stage: Stage, out: Path) -> dict:
    """Run one stage under its time box; never raises."""
    env = {**os.environ, **stage.env, "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)
    json_path = out / stage.json_name if stage.json_name else None
    if json_path is not None:
        env["BENCH_JSON"] = str(json_path)
    log = out / f"{stage.name}.log"
    start = time.perf_counter()
    status = "ok"
    try:
        with open(log, "w") as f:
            proc = subprocess.Popen(stage.command, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=stage.timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
                rc, status = None, "timeout"
        if rc not in (0, None):
            status = f"failed (exit {rc})"
    except OSError as err:
        status = f"could not start ({err})"
    record = {"stage": stage.name, "what": stage.what, "status": status,
              "seconds": round(time.perf_counter() - start, 1), "timeout_s": stage.timeout_s}
    text = log.read_text(errors="replace") if log.exists() else ""
    if stage.name == "host" and text.strip().startswith("{"):  # host_step prints its JSON
        json_path.write_text(text[text.index("{"):])
    if json_path is not None and json_path.exists():
        try:
            record["result"] = json.loads(json_path.read_text())
        except ValueError as err:
            record["result_error"] = str(err)
    if status != "ok" or "result" not in record:
        record["log_tail"] = text[-3000:]
    return record


# ------------------------------------------------------------------ tables
def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A markdown table of `rows` (dicts), columns in first-seen order unless given."""
    if not rows:
        return "(no rows)"
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns and not isinstance(r[k], (dict, list))]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)).replace("|", "/") for c in columns) + " |")
    return "\n".join(lines)


def write_markdown(report: dict) -> str:
    """report.md: a summary of the stages, then each stage's rows."""
    parts = [f"# GPU report {report['started']}", "", f"Device: {report.get('device', 'unknown')}", "",
             markdown_table([{k: s.get(k) for k in ("stage", "what", "status", "seconds", "timeout_s")}
                             for s in report["stages"]])]
    for s in report["stages"]:
        result = s.get("result")
        if result is None:
            continue
        parts += ["", f"## {s['stage']}: {s['what']}", ""]
        if isinstance(result, dict) and isinstance(result.get("rows"), list):
            parts.append(markdown_table(result["rows"]))
        elif s["stage"] == "host":
            rows = [{"layout": layout, "stack": stack, "launches": result[layout][stack]["launches_per_step"],
                     **result[layout][stack]["launches_by_kind"], "host_us": result[layout][stack]["host_us_per_step"]}
                    for layout in ("single", "column") if layout in result for stack in ("ours", "eager")]
            parts.append(markdown_table(rows))
        else:
            parts += ["```", json.dumps(result, indent=1)[:4000], "```"]
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------ stage bodies run in-process
def stage_env(path: str) -> None:
    import torch
    import triton

    info = {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    try:
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                             "--format=csv,noheader"], capture_output=True, text=True,
                                            timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        info["nvidia_smi"] = str(err)
    Path(path).write_text(json.dumps(info, indent=1))


def stage_step(path: str, batch: int = 128, steps: int = 20) -> None:
    """The step timings; every configuration in its own try, rows written as they come."""
    from bench.step_timing import step_rows

    rows = []
    for row in step_rows(batch, steps):
        rows.append(row)
        Path(path).write_text(json.dumps({"rows": rows}, indent=1))


# ------------------------------------------------------------------ the verify stage
VERIFY_TAG = "@@verify "  # the worker's progress lines on stdout: VERIFY_TAG + one JSON object
VERIFY_STATUSES = ("verified", "mismatch", "compile error", "out of resources", "crashed")


def verify_groups(shapes=("single", "shard"), dtypes=("bf16", "tf32")) -> list[list[str]]:
    """[shape set, layer, pass, dtype] for every layer x pass x dtype at the model's shapes."""
    from bench.conv_layers import LAYERS, passes_for

    return [[shape, layer, pass_, dtype] for dtype in dtypes for shape in shapes for layer in LAYERS[shape]
            for pass_ in passes_for(layer)]


def verify_worker(spec_path: str) -> None:
    """Run in a subprocess: each group's launcher once, with the checks on and the report's own
    plan cache (so every kept config is verified, whatever the machine's cache holds), telling
    the parent each candidate before and after its check."""
    import torch

    from bench.conv_layers import DTYPES, LAYERS, ConvProblem
    from kernels.runtime import verify

    spec = json.loads(Path(spec_path).read_text())
    verify.reset()
    verify.set_enabled(True)
    verify.STATE.cache_path = Path(spec["cache"])

    def tell(**event):
        print(VERIFY_TAG + json.dumps(event), flush=True)

    verify.STATE.progress = lambda *event: print(progress_line(*event), flush=True)
    for group in spec["groups"]:
        shape, layer, pass_, dtype = group
        tell(e="group", group=group)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
        problem = ConvProblem(LAYERS[shape][layer], DTYPES[dtype])
        start = time.perf_counter()
        problem.ours(pass_)()
        torch.cuda.synchronize()
        tell(e="group-done", group=group, seconds=round(time.perf_counter() - start, 2))


def progress_line(event: str, check, name: str, status: str, why: str) -> str:
    """The worker's line for verify.STATE.progress's call (a candidate tried or its result)."""
    return VERIFY_TAG + json.dumps(dict(e=event, key=check.class_key, config=name, status=status, why=why))


def parse_verify_lines(lines, results: dict, seconds: dict) -> tuple[list | None, dict | None]:
    """Read a worker's progress lines into `results` ((group, config) -> (status, why, class key))
    and `seconds` (group -> verification time); returns the group in flight when the lines stop
    and the candidate that was running then (None, None if the worker finished its groups)."""
    group, trying = None, None
    for line in lines:
        if not line.startswith(VERIFY_TAG):
            continue
        event = json.loads(line[len(VERIFY_TAG):])
        if event["e"] == "group":
            group, trying = tuple(event["group"]), None
        elif event["e"] == "try":
            trying = event
        elif event["e"] == "result":
            results[(group, event["config"])] = (event["status"], event["why"], event["key"])
            trying = None
        elif event["e"] == "group-done":
            seconds[group] = event["seconds"]
            group, trying = None, None
    return (list(group) if group else None), trying


def run_verify_worker(groups: list, cache: Path, out: Path, timeout_s: float) -> tuple[list[str], int | None]:
    """One worker subprocess over `groups`: (its stdout lines, exit code; None when it timed out)."""
    spec = out / "verify_spec.json"
    spec.write_text(json.dumps({"groups": groups, "cache": str(cache)}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)
    try:
        proc = subprocess.run([sys.executable, "-m", "bench.gpu_report", "--verify-worker", str(spec)], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as err:
        text = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        return text.splitlines(), None
    with open(out / "verify_workers.log", "a") as log:
        log.write(proc.stderr)
    return proc.stdout.splitlines(), proc.returncode


def verify_stage(groups: list, out: Path, *, run_worker=run_verify_worker, plan_cache=None,
                 budget_s: float = 280.0) -> dict:
    """Verify every group in worker subprocesses, a new one after each crash (the crashed
    candidate excluded in the report's scratch cache, so the new worker skips it and goes on);
    then write every failed config into the machine's plan cache as excluded. Returns
    {"rows": one per (group, config), "groups": seconds per group, "counts": per status}."""
    from kernels.runtime import verify

    out.mkdir(parents=True, exist_ok=True)
    scratch = out / "verify_cache.json"
    results, seconds = {}, {}
    todo, deadline = list(groups), time.monotonic() + budget_s
    while todo and time.monotonic() < deadline:
        lines, rc = run_worker(todo, scratch, out, max(1.0, deadline - time.monotonic()))
        group, trying = parse_verify_lines(lines, results, seconds)
        if rc == 0 and group is None:
            break
        if trying is not None:  # the process died (or hung) inside this candidate's check
            status = "crashed" if rc is not None else "crashed (hung)"
            results[(tuple(group), trying["config"])] = (status, f"worker exit code {rc}", trying["key"])
            verify.PlanCache(scratch).update(trying["key"], excluded={trying["config"]: status})
        elif group is None:  # died outside any group: nothing to resume
            break
        done = {g for g in seconds}
        todo = [g for g in todo if tuple(g) not in done and (tuple(g) != tuple(group) or trying is not None)]
        if rc is None and trying is None:
            break
    rows = [{"shapes": g[0], "layer": g[1], "pass": g[2], "dtype": g[3], "config": name, "status": status,
             "error": why} for (g, name), (status, why, _key) in sorted(results.items())]
    for g in groups:
        if tuple(g) not in seconds and not any(k[0] == tuple(g) for k in results):
            rows.append({"shapes": g[0], "layer": g[1], "pass": g[2], "dtype": g[3], "config": None,
                         "status": "not reached", "error": ""})
    excluded = {}
    for (_g, name), (status, why, key) in results.items():
        if status != "verified":
            excluded.setdefault(key, {})[name] = f"{status}: {why}" if why else status
    cache = verify.PlanCache(plan_cache)
    for key, names in excluded.items():
        cache.update(key, excluded=names, context={"source": "bench/gpu_report.py verify stage"})
    counts = {s: sum(r["status"].startswith(s) for r in rows) for s in VERIFY_STATUSES}
    return {"rows": rows, "groups": [{"group": "/".join(g), "seconds": seconds.get(tuple(g))} for g in groups],
            "counts": counts, "plan_cache": str(cache.path), "excluded": sum(map(len, excluded.values()))}


def stage_verify(path: str, groups=None) -> None:
    out = Path(path).parent
    result = verify_stage(groups or verify_groups(), out)
    Path(path).write_text(json.dumps(result, indent=1))
    print(markdown_table(result["rows"], ["shapes", "layer", "pass", "dtype", "config", "status", "error"]))
    print(", ".join(f"{n} {s}" for s, n in result["counts"].items()) + f"; excluded in {result['plan_cache']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="output folder (default bench/gpu_report_out/<time>)")
    ap.add_argument("--stages", default=None, help="comma-separated subset of the stages")
    ap.add_argument("--dry-run", action="store_true", help="list the stages, time boxes and commands; run nothing")
    ap.add_argument("--stage-env", metavar="JSON", help=argparse.SUPPRESS)
    ap.add_argument("--stage-step", metavar="JSON", help=argparse.SUPPRESS)
    ap.add_argument("--stage-verify", metavar="JSON", help=argparse.SUPPRESS)
    ap.add_argument("--verify-worker", metavar="SPEC", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for given, run_stage_here in ((args.stage_verify, stage_verify), (args.verify_worker, verify_worker),
                                  (args.stage_env, stage_env), (args.stage_step, stage_step)):
        if given:  # a stage's own process (the report starts it)
            run_stage_here(given)
            return 0
    started = time.strftime("%Y-%m-%dT%H-%M-%S")
    out = args.out or ROOT / "bench" / "gpu_report_out" / started
    chosen = stages(out)
    if args.stages:
        wanted = args.stages.split(",")
        unknown = sorted(set(wanted) - {s.name for s in chosen})
        if unknown:
            ap.error(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(s.name for s in chosen)}")
        chosen = [s for s in chosen if s.name in wanted]
    total = sum(s.timeout_s for s in chosen)
    if args.dry_run:
        for s in chosen:
            print(f"{s.name:<8}{s.timeout_s:>5} s  {s.what}\n          {' '.join(s.command)}")
        print(f"at most {total} s in all (budget {BUDGET_S} s)")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    report = {"started": started, "budget_s": BUDGET_S, "stages": []}
    for s in chosen:
        print(f"[gpu_report] {s.name}: {s.what} (at most {s.timeout_s} s)", flush=True)
        record = run_stage(s, out)
        report["stages"].append(record)
        if s.name == "env" and "result" in record:
            report["device"] = record["result"].get("device")
        print(f"[gpu_report] {s.name}: {record['status']} in {record['seconds']} s", flush=True)
        (out / "report.json").write_text(json.dumps(report, indent=1))
        (out / "report.md").write_text(write_markdown(report))
    print(f"[gpu_report] wrote {out / 'report.json'} and {out / 'report.md'}")
    return 0 if all(s["status"] == "ok" for s in report["stages"]) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())

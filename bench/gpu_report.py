"""Everything to measure on the day a GPU is lent, in one command (< 20 min on one H100).

    PYTHONPATH=. python3 -m bench.gpu_report            # all stages -> bench/gpu_report_out/<time>/
    python3 bench/gpu_report.py --dry-run                # the stages, their time boxes and commands
    python3 bench/gpu_report.py --stages tests,step      # some of them
    python3 bench/gpu_report.py --out DIR

Each stage runs as its own subprocess under a time box (a stage that fails, hangs or
crashes is recorded as such and the report goes on), in this order:

    env      device, driver, torch/triton versions
    warm     conv_sweep --compile-only: compile the conv tiles in parallel, so the later
             stages autotune from Triton's cache (the report is safe to run cold)
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
BUDGET_S = 20 * 60


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="output folder (default bench/gpu_report_out/<time>)")
    ap.add_argument("--stages", default=None, help="comma-separated subset of the stages")
    ap.add_argument("--dry-run", action="store_true", help="list the stages, time boxes and commands; run nothing")
    ap.add_argument("--stage-env", metavar="JSON", help=argparse.SUPPRESS)
    ap.add_argument("--stage-step", metavar="JSON", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.stage_env:
        stage_env(args.stage_env)
        return 0
    if args.stage_step:
        stage_step(args.stage_step)
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

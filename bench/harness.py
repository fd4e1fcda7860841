"""Timing and reporting shared by the benchmarks in bench/."""
from __future__ import annotations

import torch

ROWS: list[dict] = []


def median_ms(fn, warmup_ms: int = 25, rep_ms: int = 200) -> float:
    """Median time of fn() in ms (CUDA events; warm-up runs are not timed)."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")


def compare(benchmark, name: str, ours, baseline, *, nbytes: float | None = None, flops: float | None = None,
            bandwidth: float | None = None, baseline_name: str = "torch") -> dict:
    """Time `ours` and `baseline` side by side, record a row and hand `ours` to pytest-benchmark.

    nbytes: the fewest bytes the op must move (inputs read once, outputs written once);
    with `bandwidth` (measured copy bandwidth, bytes/s) it gives the memory floor.
    flops: the op's floating-point operations, for TFLOP/s.
    """
    ours(), baseline()  # compile / autotune / pick cuDNN algorithms before timing
    torch.cuda.synchronize()
    t_ours, t_base = median_ms(ours), median_ms(baseline)
    row = {"name": name, "ours_ms": t_ours, baseline_name + "_ms": t_base, "speedup": t_base / t_ours}
    if nbytes is not None:
        row["ours_GBps"] = nbytes / (t_ours * 1e-3) / 1e9
        if bandwidth:
            floor_ms = nbytes / bandwidth * 1e3
            row["floor_ms"] = floor_ms
            row["x_floor"] = t_ours / floor_ms
    if flops is not None:
        row["ours_TFLOPs"] = flops / (t_ours * 1e-3) / 1e12
        row[baseline_name + "_TFLOPs"] = flops / (t_base * 1e-3) / 1e12
    ROWS.append(row)
    benchmark.extra_info.update(row)

    def synced():
        ours()
        torch.cuda.synchronize()

    benchmark.pedantic(synced, rounds=10, iterations=1, warmup_rounds=2)
    return row


def throughput(benchmark, name: str, run, items: int, *, rounds: int = 5, target: float | None = None) -> dict:
    """Time `run()`, which processes `items` items and returns when they are done on the
    device, `rounds` times (wall clock, after one warm-up run); record the median as a row
    with items/s (and its ratio to `target` items/s) and hand `run` to pytest-benchmark."""
    import statistics
    import time

    run()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    row = {"name": name, "ours_ms": seconds * 1e3, "items_per_s": items / seconds}
    if target:
        row["x_target"] = items / seconds / target
    ROWS.append(row)
    benchmark.extra_info.update(row)
    benchmark.pedantic(run, rounds=1, iterations=1)
    return row


def format_table(rows: list[dict]) -> str:
    cols = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    lines = ["  ".join(f"{c:>14}" if c != "name" else f"{c:<44}" for c in cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:<44}" if c == "name" else (f"{v:>14.4g}" if isinstance(v, float) else f"{v!s:>14}"))
        lines.append("  ".join(cells))
    return "\n".join(lines)

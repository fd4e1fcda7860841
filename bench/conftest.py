"""Benchmarks run only on a CUDA device: `pytest bench/ --benchmark-only`.

Each benchmark times our kernel and the PyTorch/cuDNN baseline in the same run with
`triton.testing.do_bench` (CUDA events, warm-up outside the timing, median), records both
in pytest-benchmark's extra_info, and adds a row to the table printed at the end. Set
BENCH_JSON=path to also write the rows as JSON.
"""
import json
import os

import pytest
import torch

from bench.harness import ROWS, format_table

CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if CUDA:
        return
    skip = pytest.mark.skip(reason="benchmarks need a CUDA device (none found)")
    for item in items:
        item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    if not ROWS:
        return
    terminalreporter.write_sep("=", "kernel timings (median, CUDA events)")
    terminalreporter.write_line(format_table(ROWS))
    path = os.environ.get("BENCH_JSON")
    if path:
        with open(path, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": ROWS}, f, indent=1)


@pytest.fixture(scope="session")
def copy_bandwidth():
    """Device-to-device copy bandwidth in bytes/s (bytes read + written), measured once."""
    from bench.harness import median_ms
    src = torch.empty(1 << 28, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)

"""bench/host_step.py, the host-side instrument of the training step (issue 13): it runs one
step of the paper's model at batch 128 on 'meta' tensors with every launch stubbed. It needs
Triton's compiled-launch path, so it runs in a subprocess without TRITON_INTERPRET."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_instrument(*args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "host_step.py"), "--json", *args], env=env,
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def single():
    return run_instrument("--layout", "single", "--steps", "2", "--ops")


def test_fields_and_kinds_add_up(single):
    for key in ("launches_per_step", "launches_by_kind", "host_us_per_step", "eager_host_us_per_step"):
        assert key in single
    assert single["precision"] == "bf16" and single["batch"] == 128
    for stack in ("ours", "eager"):
        row = single["single"][stack]
        kinds = row["launches_by_kind"]
        assert row["launches_per_step"] == sum(kinds[k] for k in ("triton", "torch_op", "copy", "cast", "collective"))
        assert kinds["sync"] == 0  # a host-device sync cannot run on meta tensors anyway
        assert row["host_us_per_step"] > 0
        # the histogram agrees with the kinds: every counted op is listed once under its kind
        for kind in ("triton", "torch_op", "copy", "cast", "alloc"):
            assert sum(n for op, n in row["ops"].items() if op.startswith(kind + ":")) == kinds[kind]
    assert single["single"]["eager"]["launches_by_kind"]["triton"] == 0
    # ours runs the paper's five conv layers as Triton kernels: forward, wgrad each, dgrad but conv1
    ops = single["single"]["ours"]["ops"]
    assert ops["triton:_conv_fwd_kernel"] == 5 and ops["triton:_conv_dgrad_kernel"] == 4


def test_column_of_the_sharded_model():
    result = run_instrument("--layout", "column", "--steps", "1")
    row = result["column"]["ours"]
    # three all-gathers forward, three reduce-scatters backward, one all-reduce of the logits
    assert row["launches_by_kind"]["collective"] == 7
    assert "single" not in result and "launches_per_step" not in result

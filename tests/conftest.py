"""Test setup shared by every test file.

Without a CUDA device the Triton kernels run through Triton's CPU interpreter: set
TRITON_INTERPRET=1 before anything imports triton. The interpreter computes bf16 wrongly
(it treats the bits as integers) and its fp32 dot is exact where the GPU uses tf32, so
the CPU covers fp32 (and fp16); the same tests on a GPU add bf16 and tf32.
"""
import os
import sys
import tempfile

import torch

if not torch.cuda.is_available():
    assert "triton" not in sys.modules, "triton was imported before tests/conftest.py could set TRITON_INTERPRET"
    os.environ["TRITON_INTERPRET"] = "1"

# The verified conv plans (kernels/runtime/verify.py) of a test session go to a cache of its own,
# not the machine's (~/.cache/alexnet): tests neither read a real run's choices nor leave theirs.
os.environ.setdefault("ALEXNET_PLAN_CACHE", os.path.join(tempfile.mkdtemp(prefix="alexnet-test-plans-"),
                                                         "conv_plans.json"))

import pytest  # noqa: E402
from helpers import CUDA, GPU_REASON, TINY_CROP, stripes  # noqa: E402  (hypothesis profiles load there)


def pytest_collection_modifyitems(config, items):
    """Without a CUDA device, skip the tests marked `gpu` (helpers.requires_gpu), with the
    marker's own reason where it gives one."""
    if CUDA:
        return
    for item in items:
        marker = item.get_closest_marker("gpu")
        if marker is not None:
            item.add_marker(pytest.mark.skip(reason=marker.kwargs.get("reason", GPU_REASON)))


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same torch seed (hypothesis draws its own inputs)."""
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    """A prepared store of stripes: 48 training and 20 validation images, two classes."""
    from alexnet.data.store import write_arrays

    out = tmp_path_factory.mktemp("stripes") / "store"
    return write_arrays(out, {"train": stripes(48, 0), "val": stripes(20, 1)}, ["horizontal", "vertical"])


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_store, tmp_path_factory):
    """A checkpoint of one training step on `tiny_store` (reference ops): what the commands that
    read checkpoints are tried on. Read-only: a test that edits one edits a copy."""
    from alexnet.train import TrainConfig
    from alexnet.training.loop import run

    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(data=str(tiny_store), out=str(out), image_size=TINY_CROP, batch_size=8, epochs=1,
                         max_steps=1, ops="reference", threads=1, init="demo", lr=0.002)
    assert run(config) == 0
    return out / "checkpoint_last.pt"

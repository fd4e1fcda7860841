"""kernels/runtime/versions.py: the tested Triton/PyTorch ranges, stated once (and the same in
pyproject.toml), and the eager dispatch shortcut stepping aside, with one warning, under a
faked newer torch or after a private call's first error. (The launch and plan fast paths:
tests/test_fastlaunch.py, under a faked newer Triton.)"""
import re
import warnings
from pathlib import Path

import pytest
import torch

import kernels.ops  # noqa: F401 (defines the ops)
from kernels.runtime import dispatch, state, versions

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def fresh():
    versions.reset()
    with state.override(version_override={}):
        yield
    versions.reset()


def test_ranges():
    assert versions.tested("triton", "3.6.0") and versions.tested("triton", "3.9.0")
    assert not versions.tested("triton", "3.10.0") and not versions.tested("triton", "3.5.1")
    assert versions.tested("torch", "2.13.0+cpu") and versions.tested("torch", "2.11.0+cu130")
    assert not versions.tested("torch", "2.14.0.dev20261201") and not versions.tested("torch", "3.0.0")


def test_pyproject_states_the_tested_range():
    text = (ROOT / "pyproject.toml").read_text()
    for package, ((a, b), (c, d)) in versions.TESTED.items():
        assert re.search(rf'^{package} = "{a}\.{b}-{c}\.{d}"', text, re.M), package


def _eager_on():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        on = [dispatch._eager(torch.ones(2)) for _ in range(3)]
    return on, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


def test_eager_shortcut_in_range():
    assert _eager_on() == ([True] * 3, [])


def test_eager_shortcut_steps_aside_for_a_newer_torch():
    state.SWITCHES.version_override = {"torch": "2.14.0"}
    on, caught = _eager_on()
    assert on == [False] * 3
    assert len(caught) == 1 and "eager dispatch fast path is off (torch 2.14.0 is outside the tested 2.11-2.13)" \
        in caught[0]
    # the op still runs, through the custom op (its CPU kernel: the reference here)
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(dispatch.call("max_pool2d", x, [3, 3], [2, 2])[0],
                       torch.ops.alexnet_triton.max_pool2d(x, [3, 3], [2, 2])[0])


def test_eager_shortcut_steps_aside_after_a_private_call_fails(monkeypatch):
    def gone():
        raise AttributeError("module 'torch._C' has no attribute '_len_torch_dispatch_stack'")

    monkeypatch.setattr(dispatch, "_dispatch_depth", gone)
    on, caught = _eager_on()
    assert on == [False] * 3 and len(caught) == 1 and "AttributeError" in caught[0]
    monkeypatch.undo()
    assert not dispatch._eager(torch.ones(2))  # off for the rest of the process (until reset)

"""kernels/runtime/state.py: the process-wide state of kernels/ is declared there and nowhere
else; switches set for a block come back; reset() restores the defaults and forgets the
remembered work, after which the ops still give the same answers."""
import ast
from pathlib import Path

import pytest
import torch
from helpers import assert_close

import kernels
from kernels import reference
from kernels.runtime import dispatch, state

ROOT = Path(__file__).resolve().parents[1]

# Module-level containers that are not state: filled once at import (the op registry), or
# constant tables. Anything else mutable at module level must be a state.memo(...).
IMPORT_TIME = {
    ("kernels/runtime/dispatch.py", "TRITON_IMPLS"), ("kernels/runtime/dispatch.py", "_IMPLS"),
    ("kernels/runtime/dispatch.py", "_EAGER"), ("kernels/runtime/dispatch.py", "_CHECKED"),
    ("kernels/runtime/state.py", "_MEMOS"),
    ("kernels/runtime/state.py", "_RESETS"),
}
CONSTANT_TABLES = {"FWD_TILES", "IEEE_TILES", "DGRAD_TILES", "WGRAD_TILES", "WGRAD_TF32_TILES", "SM_TFLOPS",
                   "DROPOUT", "SGD", "AUGMENT", "NOT_CHECKED_HERE", "U_OUT", "TESTED", "KNOWN",
                   "PRECISION_ARCH", "__all__"}


def module_level_containers(path: Path):
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            value = node.value
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
            if isinstance(value, (ast.Dict, ast.List, ast.Set)) or (
                    isinstance(value, ast.Call) and getattr(value.func, "id", None) in ("dict", "list", "set")):
                yield getattr(target, "id", None)


def test_mutable_module_state_is_declared_in_state_py():
    undeclared = [f"{p.relative_to(ROOT)}:{name}" for p in (ROOT / "kernels").rglob("*.py")
                  for name in module_level_containers(p)
                  if (str(p.relative_to(ROOT)), name) not in IMPORT_TIME and name not in CONSTANT_TABLES]
    assert not undeclared, f"module-level mutable state outside kernels/runtime/state.py: {undeclared}"
    globals_ = [f"{p.relative_to(ROOT)}:{n}" for p in (ROOT / "kernels").rglob("*.py")
                for node in ast.walk(ast.parse(p.read_text())) if isinstance(node, ast.Global) for n in node.names]
    expected = ["kernels/runtime/dispatch.py:_fast_forward", "kernels/runtime/verify.py:STATE"]
    assert sorted(globals_) == expected, globals_


def test_the_declaration_check_sees_an_undeclared_table(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("_CACHE = {}\nTABLE: dict = dict()\nx = memo('a', 'b')\n")
    assert list(module_level_containers(path)) == ["_CACHE", "TABLE"]


def test_every_memo_is_listed_in_the_docstring():
    described = state.describe()
    for name in state._MEMOS:
        assert name in state.__doc__, f"state.memo {name!r} is not described in kernels/runtime/state.py"
        assert f"memo {name}:" in described
    assert {"fastlaunch.compiled", "conv.checked", "conv.plans", "conv.padded_inputs", "conv.padded_buffers",
            "dispatch.grad_into"} <= set(state._MEMOS)


def test_override_restores_and_refuses_unknown_switches():
    assert state.SWITCHES.fast_path and state.SWITCHES.fast_launch
    with state.override(fast_path=False, triton_devices=frozenset({"cuda", "meta"})):
        assert not state.SWITCHES.fast_path and "meta" in state.SWITCHES.triton_devices
    assert state.SWITCHES.fast_path and state.SWITCHES.triton_devices == frozenset({"cuda"})
    with pytest.raises(TypeError, match="no switch"):
        with state.override(fastpath=False):
            pass


def test_the_fast_path_switch_routes_calls_through_the_custom_op(monkeypatch):
    calls = []
    monkeypatch.setattr(dispatch, "ops", type("Spy", (), {"__getattr__": lambda self, n: calls.append(n) or (
        lambda *a: (torch.zeros(()),))})())
    x = torch.randn(1, 4, 3, 3)
    kernels.max_pool2d(x)
    assert calls == []
    with state.override(fast_path=False):
        kernels.max_pool2d(x)
    assert calls == ["max_pool2d"]


def test_reset_forgets_remembered_work_and_the_answers_stay():
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64).float().contiguous(memory_format=torch.channels_last)
    w = torch.randn(4, 3, 3, 3)
    first = kernels.conv2d(x, w, padding=1)
    assert len(state._MEMOS["conv.checked"][0]) > 0
    state.SWITCHES.fast_path = False
    state.reset()
    assert state.SWITCHES.fast_path
    assert all(len(table) == 0 for table, _ in state._MEMOS.values())
    again = kernels.conv2d(x, w, padding=1)
    assert torch.equal(first, again)
    assert_close(again, reference.conv2d(x.double(), w.double(), padding=1), torch.float32)


def test_a_tensor_table_matches_by_identity_and_forgets_freed_tensors():
    table = state.TensorTable()
    a, b = torch.zeros(3), torch.zeros(3)
    table[a] = "a"
    assert a in table and b not in table and table.get(a) == "a" and table.get(b, "none") == "none"
    table[a] = "again"
    assert len(table) == 1 and table.pop(b) is None and table.pop(a) == "again" and a not in table
    table[b] = "b"
    del b
    assert len(table) == 0  # freed with its tensor

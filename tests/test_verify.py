"""Correctness on first contact (issue 23, kernels/runtime/verify.py): the conv passes' verified
tuning (the real tuning code, kernels/conv/plans.py launch, with a small candidate list on the
interpreter), the plan cache, and the checked first use of the other ops."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from triton import Config

import kernels
from kernels.conv import plans
from kernels.conv.configs import DGRAD, FWD, WGRAD
from kernels.runtime import dispatch, first_use, tolerances, verify
from tests.compare import assert_close_verbose

ROOT = Path(__file__).resolve().parent.parent

# A correct tile and three wrong ones, each a real launch of the forward kernel with one of its
# compile-time facts overridden by the config (as a miscompiled tile would behave):
GOOD = Config(dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=16, GROUP_M=1), num_warps=4, num_stages=1)
SKIPS_LAST_K = Config(dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=16, GROUP_M=1, KH=2), num_warps=4, num_stages=1)
UNWRITTEN_TILE = Config(dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=16, GROUP_M=1, K_PER_G=16), num_warps=4, num_stages=1)
NO_COMPILE = Config(dict(BLOCK_M=32, BLOCK_N=24, BLOCK_K=16, GROUP_M=1), num_warps=4, num_stages=1)  # arange of 24
WGRAD_GOOD = Config(dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=32), num_warps=4, num_stages=1)
WGRAD_SHORT = Config(dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=32, PIX_PER_SPLIT=32), num_warps=4, num_stages=1)


@pytest.fixture
def checks(tmp_path, monkeypatch):
    """Checks on under the interpreter, a fresh state, the plan cache in tmp_path."""
    verify.reset()
    verify.STATE.interpreter = True
    verify.STATE.cache_path = tmp_path / "plans.json"
    plans._PLANS.clear()
    yield verify.STATE
    verify.reset()
    plans._PLANS.clear()


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, 5, 5, generator=g).to(memory_format=torch.channels_last)
    w = torch.randn(32, 16, 3, 3, generator=g)
    b = torch.randn(32, generator=g)
    return x, w, b


def _fwd(x, w, b):
    return kernels.conv2d(x, w, b, padding=1)


def _assert_conv_close(y, ref, k):
    assert_close_verbose(y, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()),
                         reason=f"fp32, reduction of {k}, against F.conv2d")


def test_wrong_candidates_are_excluded_named_and_the_result_is_the_references(checks, monkeypatch, capfd):
    monkeypatch.setattr(FWD, "interpreter_candidates", [SKIPS_LAST_K, UNWRITTEN_TILE, NO_COMPILE, GOOD])
    checks.log_path = Path(checks.cache_path).with_name("verify.jsonl")
    x, w, b = _problem()
    y = _fwd(x, w, b)
    _assert_conv_close(y, F.conv2d(x, w, b, padding=1), 144)
    err = capfd.readouterr().err
    names = [verify.config_name(c) for c in (SKIPS_LAST_K, UNWRITTEN_TILE, NO_COMPILE)]
    for name in names:
        assert err.count(name) == 1, err  # named once each
    assert "NaN" in err.split(names[1])[1].splitlines()[0]  # the unwritten tile kept its NaN
    assert verify.config_name(GOOD) not in err
    logged = [json.loads(line) for line in checks.log_path.read_text().splitlines()]
    assert sorted(r["config"] for r in logged) == sorted(names) and {r["pass_"] for r in logged} == {"fwd"}
    assert list(checks.plans.values()) == ["verified"]
    cache = json.loads(checks.cache_path.read_text())
    (entry,) = [v for k, v in cache.items() if not k.startswith("class-")]
    (layer,) = [v for k, v in cache.items() if k.startswith("class-")]
    assert entry["config"] == verify.config_name(GOOD) and sorted(entry["excluded"]) == sorted(names)
    assert sorted(layer["excluded"]) == sorted(names)
    # the same layer without its bias (another plan): the excluded configs are not tried again
    _assert_conv_close(_fwd(x, w, None), F.conv2d(x, w, None, padding=1), 144)
    assert capfd.readouterr().err == "" and sorted(checks.plans.values()) == ["verified"] * 2


def test_a_pass_with_no_correct_candidate_runs_the_reference(checks, monkeypatch, capfd):
    monkeypatch.setattr(FWD, "interpreter_candidates", [SKIPS_LAST_K, UNWRITTEN_TILE])
    monkeypatch.setattr(DGRAD, "interpreter_candidates", [UNWRITTEN_TILE])
    monkeypatch.setattr(WGRAD, "interpreter_candidates", [WGRAD_SHORT])
    x, w, b = _problem()
    xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
    xr, wr, br = (t.clone().requires_grad_() for t in (x, w, b))
    for _ in range(2):  # the second step runs the plans made by the first
        y = _fwd(xs, ws, bs)
        yr = F.conv2d(xr, wr, br, padding=1)
        assert torch.equal(y, yr)  # the reference itself
        y.square().sum().backward()
        yr.square().sum().backward()
        for a, r in ((xs, xr), (ws, wr), (bs, br)):
            _assert_conv_close(a.grad, r.grad, 2 * 5 * 5)
    err = capfd.readouterr().err
    assert [line for line in err.splitlines() if "no fwd config passed" in line].__len__() == 1
    assert sorted(checks.plans.values()) == ["reference"] * 3
    assert "3 conv passes" in verify.summary()


def test_dgrad_and_wgrad_exclude_wrong_candidates(checks, monkeypatch, capfd):
    monkeypatch.setattr(FWD, "interpreter_candidates", [GOOD])
    monkeypatch.setattr(DGRAD, "interpreter_candidates", [UNWRITTEN_TILE, GOOD])
    monkeypatch.setattr(WGRAD, "interpreter_candidates", [WGRAD_SHORT, WGRAD_GOOD])
    x, w, b = _problem()
    xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
    xr, wr, br = (t.clone().requires_grad_() for t in (x, w, b))
    _fwd(xs, ws, bs).square().sum().backward()
    F.conv2d(xr, wr, br, padding=1).square().sum().backward()
    for a, r in ((xs, xr), (ws, wr), (bs, br)):
        _assert_conv_close(a.grad, r.grad, 2 * 5 * 5)
    err = capfd.readouterr().err
    assert "excluded dgrad config" in err and "excluded wgrad config" in err
    assert sorted(checks.plans.values()) == ["verified"] * 3


def test_a_verified_plan_is_reused_in_process_and_from_the_cache(checks, monkeypatch):
    monkeypatch.setattr(FWD, "interpreter_candidates", [UNWRITTEN_TILE, GOOD])
    runs = []
    real = verify.verify_candidates
    monkeypatch.setattr(verify, "verify_candidates", lambda *a, **k: runs.append(1) or real(*a, **k))
    x, w, b = _problem()
    _fwd(x, w, b)
    _fwd(x, w, b)
    assert len(runs) == 1  # not re-checked in the process
    # a new process (its state and plans fresh), the same cache file: the plan comes from the cache
    path = checks.cache_path
    verify.reset()
    verify.STATE.interpreter, verify.STATE.cache_path = True, path
    plans._PLANS.clear()
    _assert_conv_close(_fwd(x, w, b), F.conv2d(x, w, b, padding=1), 144)
    assert len(runs) == 1 and list(verify.STATE.plans.values()) == ["cached"]
    # a changed kernel source or another device: verified again
    for change in ({"source": "edited"}, {"device": "NVIDIA H200"}):
        plans._PLANS.clear()
        verify.STATE.identity = change
        _fwd(x, w, b)
        assert len(runs) == 2 + (change.get("device") is not None), change
    assert len([k for k in json.loads(path.read_text()) if not k.startswith("class-")]) == 3


def test_the_cache_is_read_by_a_new_process(checks, monkeypatch):
    """A real second process: it finds the plan this one verified and checks nothing."""
    monkeypatch.setattr(FWD, "interpreter_candidates", [UNWRITTEN_TILE, GOOD])
    x, w, b = _problem()
    _fwd(x, w, b)
    script = (
        "import torch, kernels\n"
        "from kernels.conv.configs import FWD\n"
        "from kernels.runtime import verify\n"
        "from tests.test_verify import UNWRITTEN_TILE, GOOD, _problem, _fwd\n"
        "FWD.interpreter_candidates = [UNWRITTEN_TILE, GOOD]\n"
        "verify.STATE.interpreter = True\n"
        f"verify.STATE.cache_path = {str(checks.cache_path)!r}\n"
        "x, w, b = _problem()\n"
        "y = _fwd(x, w, b)\n"
        "assert torch.allclose(y, torch.nn.functional.conv2d(x, w, b, padding=1), atol=1e-4)\n"
        "print(list(verify.STATE.plans.values()), len(verify.STATE.excluded))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "['cached'] 0", out.stdout + out.stderr[-2000:]


def test_checks_off_runs_the_untuned_interpreter_config(checks, monkeypatch):
    monkeypatch.setattr(FWD, "interpreter_candidates", [UNWRITTEN_TILE])
    verify.set_enabled(False)
    x, w, b = _problem()
    _assert_conv_close(_fwd(x, w, b), F.conv2d(x, w, b, padding=1), 144)  # FWD.interpreter, unchecked
    assert not checks.plans and not checks.excluded and "off" in verify.summary()


def test_the_switch_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv(verify.ENV_SWITCH, "0")
    verify.reset()
    try:
        assert not verify.STATE.enabled
    finally:
        monkeypatch.delenv(verify.ENV_SWITCH)
        verify.reset()
    assert verify.STATE.enabled


# ------------------------------------------------------------------------------ the comparison
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_compare_passes_rounding_and_catches_a_wrong_tile_nan_and_inf(dtype):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(64, 64, generator=g, dtype=torch.float64)
    b = torch.randn(64, 64, generator=g, dtype=torch.float64)
    tol = tolerances.conv_tolerance(dtype, "tf32", 64)
    out = (a.to(dtype).float() @ b.to(dtype).float()).to(dtype)  # fp32 accumulation, one rounding
    ref = (a.to(dtype).double() @ b.to(dtype).double()).to(dtype)
    assert tolerances.compare(out, ref, tol) is None
    wrong = out.clone()
    wrong[:16, :16] = (a[:16, :63].to(dtype).float() @ b[:63, :16].to(dtype).float()).to(dtype)  # one K row short
    assert "elements off" in tolerances.compare(wrong, ref, tol)
    nan = out.clone()
    nan[48:, 48:] = float("nan")
    assert "NaN in 256" in tolerances.compare(nan, ref, tol)
    inf = out.clone()
    inf[3, 5] = float("inf")
    assert "inf" in tolerances.compare(inf, ref, tol)
    ref_inf = ref.clone()
    ref_inf[3, 5] = float("-inf")
    assert "inf" in tolerances.compare(inf, ref_inf, tol)  # the sign counts
    assert tolerances.compare(ref_inf, ref_inf, tol) is None


def test_tf32_tolerance_passes_tf32_rounding():
    g = torch.Generator().manual_seed(2)
    k = 2304
    a, b = torch.randn(128, k, generator=g), torch.randn(k, 64, generator=g)

    def tf32(t):  # round to 10 explicit mantissa bits (nearest)
        return (t.view(torch.int32) + 0x1000 & -0x2000).view(torch.float32)
    assert tolerances.compare(tf32(a) @ tf32(b), a @ b, tolerances.conv_tolerance(torch.float32, "tf32", k)) is None
    assert tolerances.compare(tf32(a) @ tf32(b), a @ b, tolerances.conv_tolerance(torch.float32, "ieee", k)) is not None


# ------------------------------------------------------------------------------ checked first use
def _pool(x):
    return kernels.max_pool2d(x, kernel_size=3, stride=2)


def test_a_correct_op_is_checked_once_per_signature(checks):
    x = torch.randn(1, 4, 7, 7)
    _pool(x)
    _pool(torch.randn(1, 4, 7, 7))
    assert checks.op_checks == 1
    _pool(torch.randn(1, 4, 9, 9))  # another shape: its own check
    _pool(torch.randn(1, 4, 7, 7).to(memory_format=torch.channels_last))  # another layout
    assert checks.op_checks == 3 and all(checks.ops.values())
    assert verify.implementations()["max_pool2d"] == "triton"


@pytest.mark.parametrize("op, call", [
    ("relu_lrn", lambda x: kernels.relu_lrn(x, size=3, groups=1)),
    ("max_pool2d", _pool),
])
def test_a_wrong_op_is_caught_at_first_use_and_falls_back(checks, monkeypatch, capfd, op, call):
    triton_impl, reference_impl = dispatch._IMPLS[op]

    def wrong(*args):
        out = triton_impl(*args)
        out[0].view(-1)[-1] += 1.0  # one element off
        return out
    monkeypatch.setitem(dispatch._IMPLS, op, (wrong, reference_impl))
    x = torch.randn(1, 4, 7, 7)
    expected = reference_impl(x, *_args_of(op))[0]
    for _ in range(2):
        assert torch.equal(call(x), expected)
    err = capfd.readouterr().err
    assert err.count(f"{op} (") == 1 and "runs the reference" in err
    assert checks.op_checks == 1 and verify.implementations()[op] == "reference"
    assert op in verify.summary()


def _args_of(op):
    return {"relu_lrn": (3, 1e-4, 0.75, 2.0, 1, False), "max_pool2d": ((3, 3), (2, 2))}[op]


def test_a_wrong_sgd_step_is_undone_and_the_reference_applied(checks, monkeypatch):
    triton_impl, reference_impl = dispatch._IMPLS["sgd_step_"]

    def wrong(weights, velocity, grads, lr, *rest):
        triton_impl(weights, velocity, grads, lr * 2, *rest)
    monkeypatch.setitem(dispatch._IMPLS, "sgd_step_", (wrong, reference_impl))
    w, v, gr = torch.randn(300), torch.zeros(300), torch.randn(300)
    w2, v2 = w.clone(), v.clone()
    lr = torch.tensor(0.1)
    dispatch.call("sgd_step_", w, v, gr, lr, 0.9, 5e-4, 300, None)
    reference_impl(w2, v2, gr, lr, 0.9, 5e-4, 300, None)
    assert torch.equal(w, w2) and torch.equal(v, v2)
    assert checks.ops[first_use.signature("sgd_step_", (w, v, gr, lr, 0.9, 5e-4, 300, None))] is False


def test_dropout_is_checked_given_its_own_mask(checks, monkeypatch):
    triton_impl, reference_impl = dispatch._IMPLS["dropout"]
    x = torch.randn(64, 80)
    kernels.dropout(x, p=0.5, training=True)
    assert checks.op_checks == 1 and all(checks.ops.values())
    monkeypatch.setitem(dispatch._IMPLS, "dropout", (lambda x, seed, p: triton_impl(x, seed, p) * (1 - p),
                                                     reference_impl))  # no 1/(1-p) scaling
    kernels.dropout(torch.randn(64, 81), p=0.5, training=True)
    assert checks.op_checks == 2 and not all(checks.ops.values())


def test_no_check_while_capturing_a_cuda_graph(checks, monkeypatch):
    monkeypatch.setattr(verify, "_capturing", lambda: True)
    _pool(torch.randn(1, 4, 7, 7))
    assert checks.op_checks == 0 and not checks.ops
    monkeypatch.setattr(verify, "_capturing", lambda: False)
    _pool(torch.randn(1, 4, 7, 7))  # the first eager call after it checks
    assert checks.op_checks == 1


def test_no_check_while_torch_compile_traces(checks, monkeypatch):
    seen = []
    real = first_use.first_use
    monkeypatch.setattr(first_use, "first_use",
                        lambda *a, **k: seen.append(torch.compiler.is_compiling()) or real(*a, **k))
    fn = torch.compile(_pool, backend="aot_eager", fullgraph=True)
    x = torch.randn(1, 4, 7, 7)
    torch._dynamo.reset()
    y = fn(x)
    fn(x)
    assert torch.equal(y, _pool(x))
    assert seen == [False]  # the compiled graph's first real call checked, once, eagerly; the eager call
    # after it has the same signature (defaults spelled or not): not checked again


def test_no_plan_is_made_while_capturing(checks, monkeypatch):
    """A conv pass first met inside a CUDA-graph capture runs its first candidate unchecked and
    makes no plan: the next eager call (the warm-up's job) verifies."""
    monkeypatch.setattr(FWD, "interpreter_candidates", [GOOD, UNWRITTEN_TILE])
    monkeypatch.setattr(verify, "_capturing", lambda: True)
    x, w, b = _problem()
    _assert_conv_close(_fwd(x, w, b), F.conv2d(x, w, b, padding=1), 144)
    assert not checks.plans and not plans._PLANS and not checks.excluded
    monkeypatch.setattr(verify, "_capturing", lambda: False)
    _fwd(x, w, b)
    assert list(checks.plans.values()) == ["verified"] and len(checks.excluded) == 1


def test_a_candidate_that_breaks_the_cuda_context_stops_the_process_with_a_clear_error(checks, capfd):
    """Nothing can run after an illegal address: no other candidate is tried, the error says
    which config and how to find such configs without losing a run (bench/gpu_report.py)."""
    tried = []

    def run(cfg):
        tried.append(cfg)
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    y = torch.zeros(4)
    check = verify.ConvCheck("fwd", "x (1, 1, 2, 2)", (y,), lambda: (y,), lambda: (torch.zeros(4),), lambda: None,
                             torch.float32, "ieee", 4)
    with pytest.raises(verify.ContextCorrupted):
        verify.verify_candidates(check, [GOOD, SKIPS_LAST_K], run, device=torch.device("cpu"))
    assert tried == [GOOD] and "gpu_report" in capfd.readouterr().err
    assert verify.failure_kind(RuntimeError("out of resource: shared memory, Required: 300000")) == "out of resources"
    assert verify.failure_kind(ValueError("arange's range must be a power of 2")) == "compile error"


def test_conv1s_padded_image_is_verified_against_the_unpadded_convolution(checks, monkeypatch, capfd):
    """conv1's path: the forward reads a zero-padded 4-channel image (3 -> 4), wgrad a column-
    block view of it (kernels/conv/input_layout.py); both checks compare with torch on the same
    storage. Here the forward's only candidate is wrong (the reference runs), wgrad's is right."""
    monkeypatch.setattr(FWD, "interpreter_candidates", [SKIPS_LAST_K])
    monkeypatch.setattr(WGRAD, "interpreter_candidates", [WGRAD_GOOD])
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 16, 16, generator=g).to(memory_format=torch.channels_last)
    w, b = torch.randn(8, 3, 5, 5, generator=g, requires_grad=True), torch.randn(8, generator=g, requires_grad=True)
    y = kernels.conv2d(x, w, b, stride=4, padding=2, relu=True)
    yr = F.relu(F.conv2d(x, w, b, stride=4, padding=2))
    _assert_conv_close(y, yr, 75)
    dy = torch.randn(y.shape, generator=g)
    for got, want in zip(torch.autograd.grad(y, (w, b), dy), torch.autograd.grad(yr, (w, b), dy)):
        _assert_conv_close(got, want, 2 * 4 * 4)
    assert sorted(checks.plans.values()) == ["reference", "verified"]
    assert "no fwd config passed" in capfd.readouterr().err


def _fresh_process(checks):
    path = checks.cache_path
    verify.reset()
    verify.STATE.interpreter, verify.STATE.cache_path = True, path
    plans._PLANS.clear()
    return verify.STATE


def test_an_adopted_reference_plan_runs_the_reference(checks, monkeypatch):
    """Rank 0 found no correct candidate: the plan it shares (pickled, as broadcast_object_list
    sends it) makes the adopting process run the reference, with no check of its own."""
    import pickle

    monkeypatch.setattr(FWD, "interpreter_candidates", [UNWRITTEN_TILE])
    x, w, b = _problem()
    _fwd(x, w, b)
    rows = pickle.loads(pickle.dumps(plans.export_plans()))
    assert [r[-1] for r in rows] == ["reference"]
    state = _fresh_process(checks)
    state.cache_path = checks.cache_path.with_name("other.json")  # this rank's cache knows nothing
    assert plans.adopt_plans(rows) == 1
    runs = []
    monkeypatch.setattr(verify, "verify_candidates", lambda *a, **k: runs.append(1))
    assert torch.equal(_fwd(x, w, b), F.conv2d(x, w, b, padding=1)) and not runs


def test_a_cached_choice_excluded_later_for_its_layer_is_verified_again(checks, monkeypatch):
    """bench/gpu_report.py writes what it finds (e.g. a crash) as the layer's exclusions: a plan
    the cache had chosen with that config is made again without it."""
    monkeypatch.setattr(FWD, "interpreter_candidates", [GOOD, UNWRITTEN_TILE])
    x, w, b = _problem()
    _fwd(x, w, b)
    cache = json.loads(checks.cache_path.read_text())
    (layer_key,) = [k for k in cache if k.startswith("class-")]
    verify.PlanCache(checks.cache_path).update(layer_key, excluded={verify.config_name(GOOD): "crashed"})
    other = Config(dict(BLOCK_M=64, BLOCK_N=32, BLOCK_K=16, GROUP_M=1), num_warps=4, num_stages=1)
    monkeypatch.setattr(FWD, "interpreter_candidates", [GOOD, UNWRITTEN_TILE, other])
    state = _fresh_process(checks)
    _assert_conv_close(_fwd(x, w, b), F.conv2d(x, w, b, padding=1), 144)
    assert list(state.plans.values()) == ["verified"] and not state.excluded  # neither GOOD nor UNWRITTEN_TILE tried
    plan = [v for k, v in json.loads(checks.cache_path.read_text()).items() if not k.startswith("class-")]
    assert [p["config"] for p in plan] == [verify.config_name(other)]


def test_the_report_workers_progress_lines_come_from_the_real_tuning(checks, monkeypatch):
    """bench/gpu_report.py's worker prints verify.STATE.progress's calls; its parent reads them
    back into the table (here from the interpreter's verified tuning of one pass)."""
    from bench import gpu_report

    monkeypatch.setattr(FWD, "interpreter_candidates", [UNWRITTEN_TILE, GOOD])
    lines = [gpu_report.VERIFY_TAG + json.dumps({"e": "group", "group": ["single", "conv3", "fwd", "fp32"]})]
    checks.progress = lambda *event: lines.append(gpu_report.progress_line(*event))
    _fwd(*_problem())
    results, seconds = {}, {}
    group, trying = gpu_report.parse_verify_lines(lines, results, seconds)
    assert trying is None and group == ["single", "conv3", "fwd", "fp32"]
    status = {name: s for (_g, name), (s, _why, _key) in results.items()}
    assert status == {verify.config_name(UNWRITTEN_TILE): "mismatch", verify.config_name(GOOD): "verified"}
    assert {key for (_s, _w, key) in results.values()} == {
        k for k in json.loads(checks.cache_path.read_text()) if k.startswith("class-")}

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
                         capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)
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
    # ours runs the paper's five conv layers as Triton kernels: forward and wgrad each, dgrad but conv1
    ops = single["single"]["ours"]["ops"]
    assert sum(n for op, n in ops.items() if op.startswith("triton:") and "conv" in op) >= 14
    assert single["conv_side"]["launches_per_step"] >= 14


def test_lean_step(single):
    """Issue 13's step: one dropout launch per layer per direction (fc6/fc7's ReLU inside it),
    no per-step casts (the loss reads the 16-bit logits and writes their gradient in one
    launch), one update launch, no seed draws or concatenations; at most 50 launches."""
    ours = single["single"]["ours"]
    ops = ours["ops"]
    assert ops["triton:_column_dropout_kernel"] == 4  # fc6, fc7 x forward, backward
    assert ops["triton:_sgd_step_kernel"] == 1
    assert ops["triton:_cross_entropy_kernel"] == 1
    assert ours["launches_by_kind"]["cast"] == 0
    assert not any(op.startswith(("torch_op:relu", "torch_op:threshold_backward", "torch_op:_log_softmax",
                                  "torch_op:nll_loss", "torch_op:argmax")) for op in ops), ops
    assert ours["launches_per_step"] <= 50
    assert not any(op.startswith(("torch_op:cat", "torch_op:randint")) for op in ops)
    # the eager step bypasses torch.library (kernels.runtime.dispatch.call); gradients land in the optimizer's
    # buffer without accumulation launches; conv3-5's ReLU gradient masks cost no launch of their own
    # (applied in conv4/conv5's dgrad epilogues and pool5's backward: alexnet/network/model.py relu_mask_moves)
    assert ours["launches_by_kind"]["custom_op"] == 0
    assert not any(op.startswith(("torch_op:add_", "torch_op:zero_", "torch_op:where")) for op in ops)
    assert "triton:_relu_grad_kernel" not in ops
    # conv1: its padded image written by the augmentation (the step's input is its view: no
    # zeroing, no copy), its weight's channel padding written into the forward's weight matrix
    # (zeroing + copy)
    assert ops.get("torch_op:new_zeros.default", 0) == 1
    assert not any(op.startswith(("torch_op:constant_pad_nd", "torch_op:scalar_tensor")) for op in ops)
    assert ours["launches_per_step"] < single["single"]["eager"]["launches_per_step"]


def test_column_of_the_sharded_model():
    result = run_instrument("--layout", "column", "--steps", "1")
    row = result["column"]["ours"]
    # three all-gathers forward, three reduce-scatters backward, one all-reduce of the logits
    assert row["launches_by_kind"]["collective"] == 7
    assert "single" not in result and "launches_per_step" not in result


# ------------------------------------------------------------------ the lean step's parts (interpreter)
def _linear_model(seed):
    import torch

    from alexnet.network.layers import Linear

    torch.manual_seed(seed)
    model = torch.nn.Sequential(Linear(12, 8, "relu"), Linear(8, 5))
    for layer in model:
        torch.nn.init.normal_(layer.weight, 0, 0.3)
        torch.nn.init.normal_(layer.bias, 0, 0.3)
    return model


def test_low_precision_copies_train_exactly_like_casting_every_step():
    """FlatPaperSGD(low_precision=...): the layers read the 16-bit copies the update kernel
    writes (no cast per step) and the fp32 weights follow exactly the cast-per-step run.
    fp16 here: the interpreter computes bf16 wrongly."""
    import torch
    import torch.nn.functional as F
    from helpers import DEVICE

    from alexnet.training.optim import FlatPaperSGD, param_groups

    dtype = torch.float16
    cast, kept = _linear_model(0).to(DEVICE), _linear_model(0).to(DEVICE)
    opt_cast = FlatPaperSGD(param_groups(cast), lr=0.05)
    opt_kept = FlatPaperSGD(param_groups(kept), lr=0.05, low_precision=dtype)
    opt_kept.attach(kept)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 12, generator=g).to(DEVICE, dtype)
    labels = torch.randint(0, 5, (6,), generator=g).to(DEVICE)
    for _ in range(3):
        for model, opt in ((cast, opt_cast), (kept, opt_kept)):
            opt.zero_grad()
            F.cross_entropy(model(x).float(), labels).backward()
            opt.step()
        for p, q in zip(cast.parameters(), kept.parameters(), strict=True):
            assert torch.equal(p, q)
            assert torch.equal(p.grad.to(dtype), opt_kept.gradient(q))
    for layer in kept:
        weight, _ = layer.compute_params
        assert weight.dtype == dtype and torch.equal(weight, layer.weight.to(dtype))
        assert weight.data_ptr() >= opt_kept.flat_low.data_ptr() and layer.weight.grad is None
    kept[0].weight.data.add_(1.0)  # writing the fp32 weights directly: refresh the copies
    opt_kept.refresh_low_precision()
    assert torch.equal(kept[0].compute_params[0], kept[0].weight.to(dtype))
    with pytest.raises(ValueError, match="low_precision"):
        FlatPaperSGD(param_groups(_linear_model(0)), low_precision=torch.float64)


# ------------------------------------------------------------------ --cuda-graph
def _runner_setup(device, capture, low_precision=None):
    import torch

    from alexnet.training.optim import FlatPaperSGD, param_groups
    from alexnet.training.step import training_step
    from alexnet.training.step_graph import StepRunner

    model = _linear_model(0).to(device)
    optimizer = FlatPaperSGD(param_groups(model), lr=0.05, low_precision=low_precision)
    if low_precision is not None:
        optimizer.attach(model)
    finite = torch.ones((), dtype=torch.bool, device=device)
    messages = []
    runner = StepRunner(training_step, model, optimizer, finite, capture=capture, warmup=2, log=messages.append)
    return model, optimizer, runner, messages


def _batches(device, n, dtype):
    import torch

    g = torch.Generator().manual_seed(2)
    return [(torch.randn(6, 12, generator=g).to(device, dtype), torch.randint(0, 5, (6,), generator=g).to(device))
            for _ in range(n)]


def test_cuda_graph_flag_runs_the_plain_step_on_the_cpu():
    """--cuda-graph on the CPU: a clear message, then exactly the plain step."""
    import torch

    from alexnet.train import parse_args
    from alexnet.training.optim import set_lr

    assert parse_args(["--cuda-graph"]).cuda_graph and not parse_args([]).cuda_graph
    plain_model, plain_opt, plain, _ = _runner_setup("cpu", capture=False)
    model, opt, runner, messages = _runner_setup("cpu", capture=True)
    assert not runner.capture and "CUDA device" in messages[0]
    for i, (x, y) in enumerate(_batches("cpu", 5, torch.float32)):
        if i == 3:
            set_lr(plain_opt, 0.01)
            set_lr(opt, 0.01)
        expected, got = plain(x, y), runner(x, y)
        assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
    for p, q in zip(plain_model.parameters(), model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert runner.graph is None and runner.calls == 5


def test_the_kernel_checks_skip_a_capture_and_run_at_the_eager_warm_up(monkeypatch):
    """The step's Triton ops (here the fused SGD) are checked against their references at
    their first eager call (kernels/runtime/verify.py), never while a CUDA graph is captured
    (simulated here: the capture test itself needs a GPU), and once only."""
    import torch

    from kernels.runtime import verify

    verify.reset()
    verify.STATE.interpreter = True
    try:
        _model, _opt, runner, _ = _runner_setup("cpu", capture=False)
        first, second, third = _batches("cpu", 3, torch.float32)
        monkeypatch.setattr(verify, "_capturing", lambda: True)
        runner(*first)
        assert verify.STATE.op_checks == 0
        monkeypatch.setattr(verify, "_capturing", lambda: False)
        runner(*second)
        checked = verify.STATE.op_checks
        assert checked == 1 and all(verify.STATE.ops.values())  # the fused SGD (this model keeps torch's loss)
        assert verify.implementations() == {"sgd_step_": "triton"}
        runner(*third)
        assert verify.STATE.op_checks == checked
    finally:
        verify.reset()


@pytest.mark.gpu
def test_cuda_graph_replays_the_step_exactly():
    """On a GPU: captured after warm-up, replayed, re-captured after an lr change, a short
    batch run plainly; the weights equal the plain run's bit for bit."""
    import torch

    from alexnet.training.optim import set_lr

    plain_model, plain_opt, plain, _ = _runner_setup("cuda", capture=False, low_precision=torch.bfloat16)
    model, opt, runner, messages = _runner_setup("cuda", capture=True, low_precision=torch.bfloat16)
    batches = _batches("cuda", 8, torch.bfloat16)
    batches.append((batches[0][0][:4], batches[0][1][:4]))  # a short last batch
    for i, (x, y) in enumerate(batches):
        if i == 5:
            set_lr(plain_opt, 0.01)
            set_lr(opt, 0.01)
        expected, got = plain(x, y), runner(x, y)
        assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
    torch.cuda.synchronize()
    for p, q in zip(plain_model.parameters(), model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert runner.graph is not None and runner.captured_lr == 0.01
    assert sum("captured" in m for m in messages) == 2


# ------------------------------------------------------------------ bench/gpu_report.py (its CPU half)
def test_gpu_report_dry_run_lists_every_stage_within_budget():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-m", "bench.gpu_report", "--dry-run"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    names = [line.split()[0] for line in out.stdout.splitlines() if line and not line.startswith((" ", "at most"))]
    assert names == ["env", "warm", "verify", "tests", "conv", "memory", "step", "loader", "host"]
    total = int(out.stdout.strip().splitlines()[-1].split()[2])
    assert total <= 25 * 60  # the verify stage (issue 23) added 5 minutes to the 20


def test_gpu_report_stages_are_time_boxed_and_failures_recorded(tmp_path):
    from bench.gpu_report import Stage, run_stage, write_markdown

    py = sys.executable
    writer = ("import json, os; json.dump({'rows': [{'name': 'a|b', 'ms': 1.23456, 'nested': {}}]}, "
              "open(os.environ['BENCH_JSON'], 'w'))")
    good = Stage("good", "writes rows", 60, (py, "-c", writer), "good.json")
    slow = Stage("slow", "hangs", 1, (py, "-c", "import time; time.sleep(60)"))
    bad = Stage("bad", "fails", 60, (py, "-c", "raise SystemExit('broken on purpose')"))
    records = [run_stage(s, tmp_path) for s in (good, slow, bad)]
    assert [r["status"] for r in records] == ["ok", "timeout", "failed (exit 1)"]
    assert records[1]["seconds"] < 30
    assert "broken on purpose" in records[2]["log_tail"]
    assert records[0]["result"]["rows"][0]["ms"] == 1.23456
    md = write_markdown({"started": "now", "device": "none", "stages": records})
    assert "| good | writes rows | ok |" in md and "| slow | hangs | timeout |" in md
    assert "| name | ms |" in md and "| a/b | 1.235 |" in md  # nested values left out, pipes escaped


def test_channels_last_weights_load_any_checkpoint():
    """Conv weights are stored channels_last when the model is (no re-layout per step); the
    state dict keeps torch's shapes, so weights move between the layouts unchanged."""
    from dataclasses import replace

    import torch
    from helpers import assert_close_verbose

    from alexnet.network.config import AlexNetConfig
    from alexnet.network.model import AlexNet

    config = AlexNetConfig(ops="reference", channels_last=False, dropout_seed=7, image_size=99)
    plain = AlexNet(config).eval()
    nhwc = AlexNet(replace(config, channels_last=True)).eval()
    assert all(getattr(nhwc, f"conv{i}").weight.is_contiguous(memory_format=torch.channels_last) for i in range(1, 6))
    nhwc.load_state_dict(plain.state_dict())
    assert nhwc.conv2.weight.is_contiguous(memory_format=torch.channels_last)  # loading keeps the layout
    # in float64: the two layouts sum in different orders (oneDNN picks its kernels by layout and
    # CPU), which in fp32 differs by ~1e-6 on these logits, beyond any tolerance that still checks
    x = torch.randn(2, 3, 99, 99, dtype=torch.float64)
    assert_close_verbose(nhwc.double()(x), plain.double()(x), rtol=1e-10, atol=1e-12, check_dtype=True,
                         reason="float64 logits of the two layouts, summed in other orders")
    nhwc.float()
    plain.float()
    back = AlexNet(config)
    back.load_state_dict(nhwc.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), plain.state_dict().values(), strict=True))

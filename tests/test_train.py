"""The training job (alexnet/train.py, alexnet/training/loop.py) and the evaluation command, end to end
on tiny stores: the paper's network at its smallest input (63 px), the reference ops on the CPU."""
import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import TINY_CROP, assert_close_verbose

import kernels
from alexnet import evaluate
from alexnet.train import DEMO, TrainConfig, parse_args
from alexnet.training import checkpoint
from alexnet.training.loop import Trainer, run
from kernels import reference

ROOT = Path(__file__).resolve().parents[1]
CROP = TINY_CROP


def config(store, out, **changes) -> TrainConfig:
    base = TrainConfig(data=str(store), out=str(out), image_size=CROP, batch_size=8, epochs=1, log_every=1000,
                       ops="reference", threads=1)
    return replace(base, **changes)


def test_cli_defaults_are_the_papers_and_the_demo_without_data(tmp_path):
    paper = TrainConfig()
    assert (paper.epochs, paper.batch_size, paper.lr, paper.momentum, paper.weight_decay) == (90, 128, 0.01, 0.9, 5e-4)
    assert (paper.image_size, paper.lr_reductions, paper.columns, paper.activation) == (224, 3, 2, "relu")
    assert paper.initial() == (0.01, 1.0) and parse_args(["--init-std", "0.03"]).initial() == (0.03, 0.1)
    demo = parse_args([])
    assert all(getattr(demo, k) == v for k, v in DEMO.items()) and demo.data is None
    given = parse_args(["--data", str(tmp_path), "--lr", "0.02", "--no-lrn", "--columns", "1", "--max-steps", "7"])
    assert (given.lr, given.lrn, given.columns, given.max_steps, given.batch_size) == (0.02, False, 1, 7, 128)
    assert parse_args(["--epochs", "3"]).epochs == 3 and parse_args(["--epochs", "3"]).batch_size == DEMO["batch_size"]


@pytest.mark.parametrize("argv, message", [
    (["--data", "/no/such/dir"], "no such file"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--momentum", "1.5"], "--momentum"),
])
def test_bad_arguments_are_refused_clearly(argv, message):
    with pytest.raises(SystemExit, match=message):
        parse_args(argv)


def test_batch_larger_than_the_dataset_is_refused(tiny_store, tmp_path):
    with pytest.raises(SystemExit, match="--batch-size 64 .* larger than the 48 training images.*<= 48"):
        Trainer(config(tiny_store, tmp_path, batch_size=64))


@pytest.mark.parametrize("ops", ["reference", "triton", "auto"])
def test_layers_augmentation_and_optimizer_follow_one_ops_choice(tiny_store, tmp_path, ops):
    """--ops reaches every choice through the model's resolved config.ops (the rule:
    alexnet/network/layers.py load_ops): the layers' functions, both loaders' augmentation (which
    function runs for each: tests/test_data.py) and the optimizer."""
    from alexnet.network.config import resolve_ops
    from alexnet.training.optim import FlatPaperSGD

    trainer = Trainer(config(tiny_store, tmp_path, ops=ops))
    try:
        chosen = resolve_ops(ops)
        assert trainer.model_config.ops == trainer.train_loader.ops == trainer.val_loader.ops == chosen
        assert trainer.model.conv1.conv2d is {"triton": kernels.conv2d, "reference": reference.conv2d}[chosen]
        assert isinstance(trainer.optimizer, FlatPaperSGD) == (chosen == "triton")
    finally:
        trainer.train_loader.close()
        trainer.val_loader.close()
        trainer.lock.close()


def test_not_a_dataset_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises((SystemExit, ValueError, FileNotFoundError), match="(?i)train|class|image"):
        Trainer(config(tmp_path / "empty", tmp_path / "out"))


def test_training_learns_and_the_checkpoint_evaluates(tiny_store, tmp_path, capsys):
    """The recipe (SGD with momentum and decay, dropout, augmentation) from the demo's start
    gets well below chance on stripes; the outputs are written; alexnet.training.evaluation reads the
    checkpoint."""
    out = tmp_path / "run"
    demo_start = {k: DEMO[k] for k in ("lr", "init")}
    summary = Trainer(config(tiny_store, out, epochs=10, **demo_start)).run()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, 11))
    assert summary["best_val_top1"] <= 0.2, records  # chance: 50%
    # one epoch is 6 steps of 8 images, so an epoch's mean loss is noisy (dropout, augmentation):
    # compare the later half's best epoch with the first, not the last epoch alone
    assert min(r["train_loss"] for r in records[5:]) < records[0]["train_loss"], records
    for name in ("checkpoint_last.pt", "checkpoint_best.pt", "curves.png"):
        assert (out / name).stat().st_size > 0
    # which implementation the ops ran: recorded in every row and checkpoint (issue 23)
    assert records[-1]["kernels"] == checkpoint.load(out / "checkpoint_last.pt")["kernels"] == {"ops": "reference"}
    capsys.readouterr()
    assert evaluate.main([str(out / "checkpoint_best.pt"), "--views", "ten", "--batch-size", "7"]) == 0
    line = capsys.readouterr().out
    assert "20 val images" in line and "ten view(s)" in line
    top1 = float(line.split("top-1 error ")[1].split("%")[0]) / 100
    assert top1 <= 0.3, line


def test_the_kernel_checks_are_switched_summarised_once_and_recorded(tiny_store, tmp_path, monkeypatch, capsys):
    """--no-verify turns the checks off (kernels/runtime/verify.py); with them on, the first step
    is followed by one summary line, and the run's record says which implementation each op ran.
    (The step itself is stubbed: the full network on the interpreter takes minutes per step.)"""
    from kernels import verify

    assert parse_args(["--no-verify"]).verify is False and parse_args([]).verify is True
    trainers = []
    try:
        verify.reset()
        trainers.append(Trainer(config(tiny_store, tmp_path / "off", ops="triton", verify=False)))
        assert not verify.STATE.enabled
        verify.reset()
        verify.STATE.interpreter = True  # the checks apply on the interpreter, as on a GPU
        trainer = Trainer(config(tiny_store, tmp_path / "on", ops="triton"))
        trainers.append(trainer)
        assert verify.STATE.enabled and verify.STATE.log_path == tmp_path / "on" / "verify.jsonl"
        monkeypatch.setattr(trainer, "runner", lambda images, labels: (torch.zeros(()), torch.zeros((), dtype=int)))
        verify.note_ran("relu_lrn", "reference")  # as a mismatch at first use records it
        capsys.readouterr()
        for _ in range(3):
            trainer.train_step(None, None)
        assert capsys.readouterr().out.count("kernel checks:") == 1
        assert trainer.kernels_record() == {"ops": "triton", "checked": True, "ran": {"relu_lrn": "reference"}}
        from alexnet import predict

        for command in (evaluate, predict):  # the other commands that run the kernels have the switch too
            verify.reset()
            with pytest.raises(SystemExit):  # (no such checkpoint: the switch is set before anything loads)
                command.main([str(tmp_path / "none.pt"), *(["x.png"] if command is predict else []), "--no-verify"])
            assert not verify.STATE.enabled, command
    finally:
        verify.reset()
        for t in trainers:
            t.train_loader.close()
            t.val_loader.close()
            t.lock.close()


def _weights(path):
    return checkpoint.load(path)["model"]


ON_GPU = pytest.mark.gpu(reason="needs a CUDA device: the full-width network on the Triton "
                               "interpreter would take minutes per step")


@pytest.mark.parametrize("ops", ["reference", pytest.param("triton", marks=ON_GPU)])
def test_resume_mid_epoch_continues_bit_identically(tiny_store, tmp_path, ops):
    """Stopping after 4 steps (mid-epoch: 6 steps per epoch) and resuming to 8 gives the
    very weights of an uninterrupted 8-step run: data order, augmentation, dropout and
    velocity all continue (with ops=triton: the Triton kernels and the flat fused SGD)."""
    straight = config(tiny_store, tmp_path / "straight", epochs=2, max_steps=8, ops=ops)
    assert run(straight) == 0
    split = config(tiny_store, tmp_path / "split", epochs=2, max_steps=4, ops=ops)
    assert run(split) == 0
    saved = checkpoint.load(tmp_path / "split" / "checkpoint_last.pt")
    assert saved["step"] == 4 and saved["loader"]["position"] == 4
    assert run(replace(split, max_steps=8, resume="auto")) == 0
    a, b = _weights(tmp_path / "straight" / "checkpoint_last.pt"), _weights(tmp_path / "split" / "checkpoint_last.pt")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_resume_refuses_another_recipe(tiny_store, tmp_path):
    assert run(config(tiny_store, tmp_path, max_steps=1)) == 0
    with pytest.raises(SystemExit, match="batch_size=8"):
        Trainer(config(tiny_store, tmp_path, batch_size=4, resume="auto"))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_store, tmp_path, capsys, monkeypatch):
    assert run(config(tiny_store, tmp_path, max_steps=2)) == 0
    good = _weights(tmp_path / "checkpoint_last.pt")
    cross_entropy = torch.nn.functional.cross_entropy
    poisoned = {"steps": 0}

    def nan_after_one_step(logits, labels):  # the second resumed step's loss is NaN
        poisoned["steps"] += 1
        return cross_entropy(logits, labels) * (float("nan") if poisoned["steps"] >= 2 else 1.0)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", nan_after_one_step)
    assert run(config(tiny_store, tmp_path, max_steps=5, resume="auto")) == 2
    assert "non-finite" in capsys.readouterr().out
    after = _weights(tmp_path / "checkpoint_last.pt")
    assert all(torch.equal(good[k], after[k]) for k in good)


def run_bounded(argv, env, timeout_s: float = 300):
    """subprocess.run in its own process group, all of which is killed if it runs too long
    (torchrun's ranks would otherwise outlive a killed launcher)."""
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{' '.join(argv[:6])}... ran over {timeout_s} s:\n{stdout[-2000:]}\n{stderr[-2000:]}")
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def test_two_ranks_train_like_one_process(tiny_store, tmp_path):
    """torchrun with two CPU ranks (gloo) trains the two-column model as the one-process
    grouped model does: same init, same data, same dropout streams, so the checkpoints
    agree up to float rounding; and the two-rank checkpoint evaluates on one device."""
    common = ["--data", str(tiny_store), "--image-size", str(CROP), "--batch-size", "8", "--epochs", "1",
              "--max-steps", "3", "--ops", "reference", "--threads", "1", "--lr", "0.003"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    one = run_bounded([sys.executable, "-m", "alexnet.train", *common, "--out", str(tmp_path / "one")], env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_bounded([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                       "-m", "alexnet.train", *common, "--out", str(tmp_path / "two")], env)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert "2 ranks (gloo): 1 replica(s) x 2 columns" in two.stdout
    a, b = _weights(tmp_path / "one" / "checkpoint_last.pt"), _weights(tmp_path / "two" / "checkpoint_last.pt")
    assert a.keys() == b.keys()
    for name in a:
        assert_close_verbose(b[name], a[name], rtol=1e-4, atol=1e-5, check_dtype=True,
                             reason=f"{name}: fp32 training, one process against two ranks (sums in other orders)")
    x = torch.randn(2, 3, CROP, CROP)
    logits = [checkpoint.model_from_checkpoint(tmp_path / run / "checkpoint_last.pt", ops="reference",
                                               device="cpu")[0](x) for run in ("one", "two")]
    assert_close_verbose(logits[1], logits[0], rtol=1e-4, atol=1e-5, check_dtype=True,
                         reason="fp32 logits of the two runs' weights")


def test_four_ranks_are_two_replicas_that_share_each_epoch(tiny_store, tmp_path):
    """2 pairs of ranks: each replica trains on its half of every epoch, the metrics count
    each image once, and the checkpoint evaluates on one device."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    four = run_bounded([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4",
                        "-m", "alexnet.train", "--data", str(tiny_store), "--image-size", str(CROP),
                        "--batch-size", "8", "--epochs", "1", "--ops", "reference", "--threads", "1",
                        "--out", str(tmp_path)], env)
    assert four.returncode == 0, four.stdout[-3000:] + four.stderr[-3000:]
    assert "4 ranks (gloo): 2 replica(s) x 2 columns" in four.stdout
    (record,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert record["images"] == 48 and record["step"] == 3  # 48 images: 24 per replica, 3 steps of 8
    assert evaluate.main([str(tmp_path / "checkpoint_last.pt"), "--views", "centre", "--ops", "reference"]) == 0


def test_a_run_leaves_the_tf32_switches_as_it_found_them(tiny_store, tmp_path):
    """The precision's TF32 setting holds while the run trains and is put back after: a run
    leaves no process-wide switch of torch's changed (issue 25)."""
    seen = []
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = matmul.allow_tf32, cudnn.allow_tf32
    trainer = Trainer(config(tiny_store, tmp_path, precision="tf32", epochs=1, max_steps=1))
    real = trainer.train_step

    def spy(*args):
        seen.append((matmul.allow_tf32, cudnn.allow_tf32))
        return real(*args)

    trainer.train_step = spy
    try:
        trainer.run()
    finally:
        trainer.train_loader.close()
        trainer.val_loader.close()
        trainer.lock.close()
    assert seen and all(s == (True, True) for s in seen)
    assert (matmul.allow_tf32, cudnn.allow_tf32) == before

"""alexnet.train's guards (alexnet/training/outdir.py, alexnet/training/loop.py): a used --out, a second
run, a mismatched store or checkpoint and bad numbers are refused before the first step
with one line; a non-finite run stops; metrics survive kills and torn lines."""
import json
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import TINY_CROP, stripes

from alexnet.base.errors import UsageError
from alexnet.data.store import write_arrays
from alexnet.train import TrainConfig, parse_args
from alexnet.train import main as train_main
from alexnet.training import loop as trainer_module
from alexnet.training.loop import NonFiniteLoss, Trainer, loss_remark, run
from alexnet.training.metrics import MetricsLog
from alexnet.training.outdir import acquire_lock


def config(store, out, **changes) -> TrainConfig:
    base = TrainConfig(data=str(store), out=str(out), image_size=TINY_CROP, batch_size=8, epochs=1, log_every=1000,
                       ops="reference", threads=1)
    return replace(base, **changes)


@pytest.mark.parametrize("argv, message", [
    (["--lr", "nan"], "--lr must be a finite"), (["--lr", "inf"], "--lr must be a finite"),
    (["--weight-decay", "nan"], "--weight-decay must be a finite"), (["--momentum", "nan"], "--momentum"),
    (["--resume", "/no/such.pt"], "no such file"), (["--resume", "auto", "--overwrite"], "contradict"),
])
def test_non_finite_numbers_and_missing_files_are_refused(argv, message):
    with pytest.raises(UsageError, match=message):
        parse_args(argv)


def test_bad_usage_is_one_line_and_exit_code_2(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert train_main(["--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert "is an existing file" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_used_out_is_refused_unless_resumed_or_overwritten(tiny_store, tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (tmp_path / "checkpoint_last.pt").write_bytes(b"an earlier run's")
    with pytest.raises(UsageError, match="already holds a run.*--resume auto.*--overwrite"):
        Trainer(config(tiny_store, tmp_path))
    trainer = Trainer(config(tiny_store, tmp_path, overwrite=True))
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "checkpoint_last.pt").exists()
    trainer.lock.close()


def test_a_second_run_into_one_out_is_locked_out(tiny_store, tmp_path):
    held = acquire_lock(tmp_path / ".lock", "busy")
    try:
        with pytest.raises(UsageError, match="another process is training into"):
            Trainer(config(tiny_store, tmp_path))
    finally:
        held.close()
    Trainer(config(tiny_store, tmp_path)).lock.close()  # free again once the holder is gone


def test_stale_checkpoint_temp_files_are_removed_at_start(tiny_store, tmp_path):
    (tmp_path / ".checkpoint_last.pt.x1y2z3w4.tmp").write_bytes(b"killed mid-write")  # mkstemp's 8 characters
    (tmp_path / ".notes.tmp").write_text("another program's: stays")  # train --out . must not delete it
    Trainer(config(tiny_store, tmp_path)).lock.close()
    assert [p.name for p in tmp_path.glob(".*.tmp")] == [".notes.tmp"]


def test_the_guard_catches_non_finite_weights_with_a_finite_loss(tiny_store, tmp_path):
    trainer = Trainer(config(tiny_store, tmp_path))
    trainer.check_finite()
    with torch.no_grad():
        next(trainer.model.parameters())[0].view(-1)[0] = float("inf")
    with pytest.raises(NonFiniteLoss, match="weights"):
        trainer.check_finite()
    trainer.lock.close()


def test_a_run_non_finite_from_the_start_says_no_checkpoint_exists(tiny_store, tmp_path, capsys, monkeypatch):
    cross_entropy = torch.nn.functional.cross_entropy
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda *a: cross_entropy(*a) * float("nan"))
    assert run(config(tiny_store, tmp_path, max_steps=1)) == 2
    out = capsys.readouterr().out
    assert "non-finite" in out and "no checkpoint had been written" in out and "intact" not in out


def test_a_diverging_loss_is_not_called_a_stall():
    assert "DIVERGING" in loss_remark(1e12, 1000) and "STALLED" not in loss_remark(1e12, 1000)
    assert loss_remark(6.9, 1000) == "" and loss_remark(2.0, 1000) == ""  # a stall is at_chance's, over epochs


def test_a_store_without_validation_images_is_refused_before_training(tmp_path):
    store = write_arrays(tmp_path / "store", {"train": stripes(16, 0)}, ["horizontal", "vertical"])
    with pytest.raises(UsageError, match="no validation images"):
        Trainer(config(store, tmp_path / "out"))


def test_out_store_prepared_from_another_folder_is_refused(tiny_store, tmp_path):
    """--data OTHER --out X must not silently train on X/store made from an earlier folder."""
    write_arrays(tmp_path / "out" / "store", {"train": stripes(16, 0), "val": stripes(4, 1)}, ["h", "v"])
    (tmp_path / "other").mkdir()
    with pytest.raises(UsageError, match="was prepared from arrays, not from --data"):
        Trainer(config(tmp_path / "other", tmp_path / "out"))


def test_resume_onto_another_store_is_refused_and_bad_checkpoints_are_one_line(tiny_store, tmp_path, capsys):
    assert run(config(tiny_store, tmp_path / "run", max_steps=1)) == 0
    other_classes = write_arrays(tmp_path / "a", {"train": stripes(48, 0), "val": stripes(20, 1)}, ["x", "y"])
    fewer = write_arrays(tmp_path / "b", {"train": stripes(48, 0), "val": stripes(12, 1)}, ["horizontal", "vertical"])
    with pytest.raises(UsageError, match="classes"):
        Trainer(config(other_classes, tmp_path / "run", resume="auto"))
    with pytest.raises(UsageError, match="another store"):
        Trainer(config(fewer, tmp_path / "run", resume="auto"))
    (tmp_path / "run" / "checkpoint_last.pt").write_bytes(b"PK\x03\x04 torn")
    capsys.readouterr()
    assert run(config(tiny_store, tmp_path / "run", resume="auto")) == 2
    err = capsys.readouterr().err
    assert "not a readable checkpoint" in err and "Traceback" not in err


@pytest.mark.slow
def test_metrics_row_is_written_before_the_checkpoint_and_marks_a_resumed_epoch(tiny_store, tmp_path, monkeypatch):
    """Stopped after 2 of 3 steps, resumed, killed while writing the epoch's checkpoint: the
    row is there (and says it covers steps after the resume); a resume from the older
    checkpoint redoes the epoch and replaces the row instead of adding a second one."""
    assert run(config(tiny_store, tmp_path, max_steps=2, batch_size=16)) == 0
    save = trainer_module.checkpoint.save

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module.checkpoint, "save", killed)
    assert run(config(tiny_store, tmp_path, resume="auto", batch_size=16)) == 130  # Ctrl-C: one line, exit 130
    (row,) = MetricsLog(tmp_path).read()
    assert row["epoch"] == 1 and row["resumed_mid_epoch"] and row["resumed_at_step"] == 2
    monkeypatch.setattr(trainer_module.checkpoint, "save", save)
    assert run(config(tiny_store, tmp_path, resume="auto", batch_size=16)) == 0
    assert [r["epoch"] for r in MetricsLog(tmp_path).read()] == [1]


def test_a_torn_last_metrics_line_is_skipped_with_a_warning(tmp_path):
    log = MetricsLog(tmp_path)
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 0.5}) + '\n{"epoch": 2, "tra')
    with pytest.warns(UserWarning, match="torn"):
        assert [r["epoch"] for r in log.read()] == [1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        log.truncate_after(1)
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1
    assert np.isclose(log.read()[0]["train_loss"], 0.5)


def test_store_arrays_that_disagree_with_store_json_are_refused(tmp_path):
    from alexnet.data.store import Store, StoreError

    store = write_arrays(tmp_path / "s", {"train": stripes(8, 0), "val": stripes(4, 1)}, ["h", "v"])
    np.save(store / "train_labels.npy", np.zeros(6, np.int64))  # two rows fewer than store.json says
    with pytest.raises(StoreError, match="train_labels.npy .* store.json says 8"):
        Store(store).split("train")
    np.save(store / "val_labels.npy", np.full(4, 7, np.int64))
    with pytest.raises(StoreError, match="labels outside 0..1"):
        Store(store).split("val")


def test_evaluate_and_figures_find_the_store_and_refuse_other_classes(tiny_store, tmp_path, monkeypatch, capsys):
    """The checkpoint records the store's absolute path: evaluate works from any directory
    although --data was relative; figures refuses a store with other classes."""
    from alexnet import evaluate, figures

    monkeypatch.chdir(tiny_store.parent)
    assert run(config(tiny_store.name, tmp_path / "run", max_steps=1)) == 0  # --data relative to the cwd
    monkeypatch.chdir(tmp_path)
    ckpt = str(tmp_path / "run" / "checkpoint_last.pt")
    assert evaluate.main([ckpt, "--views", "centre", "--ops", "reference"]) == 0
    assert f"20 val images of {tiny_store}" in capsys.readouterr().out
    other = write_arrays(tmp_path / "other", {"train": stripes(8, 0), "val": stripes(4, 1)}, ["x", "y"])
    with pytest.raises(SystemExit) as exit_info:
        figures.main(["predictions", ckpt, "--data", str(other), "--out", str(tmp_path / "p.png")])
    assert exit_info.value.code == 2 and "other classes" in capsys.readouterr().err


def test_a_damaged_store_is_one_line_not_a_traceback(tiny_store, tmp_path, capsys):
    import shutil

    damaged = tmp_path / "store"
    shutil.copytree(tiny_store, damaged)
    (damaged / "classes.json").write_text("[not json")
    assert run(config(damaged, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "cannot read the store" in err and "Traceback" not in err


def test_resume_auto_without_a_checkpoint_drops_rows_of_unsaved_epochs(tiny_store, tmp_path):
    """Killed after the first epoch's row but before its checkpoint: the restart must not
    add a second 'epoch 1'."""
    MetricsLog(tmp_path).append({"epoch": 1, "train_loss": 0.7, "train_top1": 0.5, "val_top1": 0.5,
                                 "val_top5": 0.0, "lr": 0.01})
    Trainer(config(tiny_store, tmp_path, resume="auto")).lock.close()
    assert MetricsLog(tmp_path).read() == []


def test_set_up_refusals_through_run_are_one_line_exit_2(tiny_store, tmp_path, capsys):
    assert run(config(tiny_store, tmp_path, batch_size=64)) == 2  # larger than the 48 training images
    err = capsys.readouterr().err
    assert "larger than the 48 training images" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_full_disk_while_checkpointing_is_a_clear_message(tiny_store, tmp_path, capsys, monkeypatch):
    import errno

    def no_space(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trainer_module.checkpoint, "save", no_space)
    assert run(config(tiny_store, tmp_path, max_steps=1)) == 1
    err = capsys.readouterr().err
    assert "disk full" in err and "Traceback" not in err

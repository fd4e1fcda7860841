"""Hangs, denial of service and tracebacks for user errors (issue 26): each case ends in one
clear line (exit code 2 for the commands), quickly, naming the file and the fix."""
import os
import shutil
import signal
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import TINY_CROP, stripes
from PIL import Image

from alexnet import figures, predict
from alexnet.data.store import Store, StoreError
from alexnet.network.model import AlexNet
from alexnet.prepare import main as prepare_main
from alexnet.train import TrainConfig, parse_args
from alexnet.training import checkpoint
from alexnet.training import loop as loop_module
from alexnet.training.loop import run


def _exit_2_one_line(call, capsys, *needles):
    with pytest.raises(SystemExit) as info:
        call()
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err), err
    for needle in needles:
        assert needle in err[-1], err


@pytest.fixture
def alarm():
    """Turn a hang into a failure (a FIFO read blocks forever)."""
    def hung(*_):
        raise TimeoutError("hung")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_predict_on_a_fifo_says_so_instead_of_hanging(tiny_checkpoint, tmp_path, capsys, alarm):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    assert predict.main([str(tiny_checkpoint), str(fifo), str(tmp_path), "--ops", "reference"]) == 1
    err = capsys.readouterr().err
    assert f"{fifo} is a FIFO, not an image file" in err and f"{tmp_path} is a folder" in err


def _edited(tiny_checkpoint, tmp_path, **model_config):
    ckpt = checkpoint.load(tiny_checkpoint)
    ckpt["model_config"] = {**ckpt["model_config"], **model_config}
    path = tmp_path / "edited.pt"
    checkpoint.save(ckpt, path)
    return path


def test_a_crafted_checkpoint_is_refused_before_its_model_is_built(tiny_checkpoint, tmp_path, monkeypatch):
    """A config asking for 200k classes with the small run's weights: the shapes are compared
    on the meta device; no real model of that size is allocated."""
    path = _edited(tiny_checkpoint, tmp_path, num_classes=200_000)
    built = []
    real_init = AlexNet.__init__

    def spy(self, config, *args, **kwargs):
        built.append(torch.empty(0).device.type)  # the default device: meta inside the check
        return real_init(self, config, *args, **kwargs)
    monkeypatch.setattr(AlexNet, "__init__", spy)
    with pytest.raises(checkpoint.CheckpointError, match="do not fit its model_config .*fc8"):
        checkpoint.model_from_checkpoint(path, ops="reference", device="cpu")
    assert built == ["meta"]


@pytest.mark.parametrize("edit, needle", [(dict(num_classes="many"), "model_config is not one"),
                                          (dict(activation="swish"), "model_config is not one")])
def test_edited_checkpoint_metadata_is_one_line(tiny_checkpoint, tmp_path, capsys, edit, needle):
    path = _edited(tiny_checkpoint, tmp_path, **edit)
    image = tmp_path / "x.png"
    Image.fromarray(stripes(1, 0)[0][0]).save(image)
    _exit_2_one_line(lambda: predict.main([str(path), str(image), "--ops", "reference"]), capsys, needle)


@pytest.mark.parametrize("device, needle", [("bad", "is not a device"), ("gpu:0", "is not a device"),
                                            ("cuda:7", "CUDA device")])
def test_predict_device_strings(tiny_checkpoint, tmp_path, capsys, device, needle):
    if torch.cuda.is_available() and device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    image = tmp_path / "x.png"
    Image.fromarray(stripes(1, 0)[0][0]).save(image)
    _exit_2_one_line(lambda: predict.main([str(tiny_checkpoint), str(image), "--device", device]), capsys, needle)


def _copy_store(tiny_store, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(tiny_store, copy)
    return copy


def test_store_mean_with_a_nan_names_the_file(tiny_store, tmp_path):
    store = _copy_store(tiny_store, tmp_path)
    mean = np.load(store / "mean.npy")
    mean[3, 4, 1] = np.nan
    np.save(store / "mean.npy", mean)
    with pytest.raises(StoreError, match=r"mean\.npy has non-finite values.*--force"):
        Store(store)


def test_truncated_images_name_the_file_and_the_fix(tiny_store, tmp_path):
    store = _copy_store(tiny_store, tmp_path)
    images = store / "train_images.npy"
    os.truncate(images, os.path.getsize(images) // 2)
    with pytest.raises(StoreError, match=r"train_images\.npy cannot be read .*truncated or damaged.*--force"):
        Store(store).split("train")


@pytest.mark.parametrize("argv, needle", [(["--timeout-s", "-1"], "--timeout-s must be > 0"),
                                          (["--timeout-s", "0"], "--timeout-s must be > 0")])
def test_train_numbers(argv, needle, tmp_path):
    with pytest.raises(SystemExit, match=needle):
        parse_args(argv + ["--out", str(tmp_path / "run")])


def test_train_out_under_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match="is a file, not a folder"):
        parse_args(["--out", str(tmp_path / "file" / "run")])


def test_figures_out_a_folder_or_under_a_file(tiny_checkpoint, tmp_path, capsys):
    _exit_2_one_line(lambda: figures.main(["filters", str(tiny_checkpoint), "--out", str(tmp_path)]), capsys,
                     "is a folder")
    (tmp_path / "file").write_text("x")
    _exit_2_one_line(lambda: figures.main(["filters", str(tiny_checkpoint), "--out", str(tmp_path / "file" / "f.png")]),
                     capsys, "cannot write")


def test_prepare_val_labels_a_directory(tmp_path, capsys):
    src = tmp_path / "src"
    rgb = np.zeros((20, 20, 3), np.uint8)
    (src / "train" / "a").mkdir(parents=True)
    (src / "val").mkdir()
    Image.fromarray(rgb).save(src / "train" / "a" / "x.png")
    Image.fromarray(rgb).save(src / "val" / "y.png")
    assert prepare_main([str(src), str(tmp_path / "out"), "--val-labels", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0] and str(tmp_path) in err[0]


def test_ctrl_c_in_train_says_how_to_resume(tiny_store, tmp_path, capsys, monkeypatch):
    config = TrainConfig(data=str(tiny_store), out=str(tmp_path), image_size=TINY_CROP, batch_size=8, epochs=1,
                         max_steps=1, ops="reference", threads=1)
    assert run(config) == 0

    def interrupted(self):
        raise KeyboardInterrupt
    monkeypatch.setattr(loop_module.Trainer, "run", interrupted)
    capsys.readouterr()
    assert run(replace(config, max_steps=2, resume="auto")) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint_last.pt, is intact" in err[0] and "--resume auto" in err[0]


def test_path_arguments_that_are_fifos_or_folders_are_one_line(tiny_checkpoint, tmp_path, capsys, alarm):
    """A FIFO given where a file is read (a checkpoint, --val-labels) would block forever."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(checkpoint.CheckpointError, match="not a regular file"):
        checkpoint.load(fifo)
    src = tmp_path / "src"
    (src / "train" / "a").mkdir(parents=True)
    (src / "val").mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(src / "train" / "a" / "x.png")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(src / "val" / "y.png")
    for labels in (fifo, tmp_path):
        assert prepare_main([str(src), str(tmp_path / "out"), "--val-labels", str(labels), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not a regular file" in err[0], err

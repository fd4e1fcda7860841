"""A checkpoint's own metadata wins (issue 26): predict --data, evaluate --data and figures
--data use a store only where it is the one the checkpoint was trained on (classes, image
size, fingerprint); else one line says what differs, exit code 2."""
import numpy as np
import pytest
from helpers import stripes
from PIL import Image

from alexnet import evaluate, figures, predict
from alexnet.data.store import write_arrays


@pytest.fixture(scope="module")
def other_stores(tmp_path_factory):
    """Stores that are not the checkpoint's: other classes; same classes at another image size;
    same classes and size with other counts (another fingerprint)."""
    root = tmp_path_factory.mktemp("others")
    (train_x, train_y), (val_x, val_y) = stripes(48, 0), stripes(20, 1)
    bigger = np.pad(train_x, ((0, 0), (0, 4), (0, 4), (0, 0)), mode="edge")
    return {
        "classes": write_arrays(root / "classes", {"train": (train_x, train_y), "val": (val_x, val_y)},
                                ["up", "down"]),
        "size": write_arrays(root / "size", {"train": (bigger, train_y), "val": (bigger[:20], val_y)},
                             ["horizontal", "vertical"]),
        "fingerprint": write_arrays(root / "fingerprint", {"train": (train_x[:40], train_y[:40]),
                                                           "val": (val_x, val_y)}, ["horizontal", "vertical"]),
    }


WHAT = {"classes": "other classes", "size": "px", "fingerprint": "fingerprint"}


def _one_line_exit_2(call, capsys, needle):
    with pytest.raises(SystemExit) as info:
        call()
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err) and needle in err[-1], err


@pytest.mark.parametrize("kind", ["classes", "size", "fingerprint"])
def test_predict_data_must_be_the_checkpoints_store(tiny_checkpoint, other_stores, tmp_path, capsys, kind):
    image = tmp_path / "x.png"
    Image.fromarray(stripes(1, 5)[0][0]).save(image)
    _one_line_exit_2(lambda: predict.main([str(tiny_checkpoint), str(image), "--data", str(other_stores[kind]),
                                           "--ops", "reference"]), capsys, WHAT[kind])


def test_predict_data_of_the_same_store_is_accepted(tiny_checkpoint, tiny_store, tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.fromarray(stripes(1, 5)[0][0]).save(image)
    assert predict.main([str(tiny_checkpoint), str(image), "--data", str(tiny_store), "--ops", "reference"]) == 0
    assert "horizontal" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["size", "fingerprint"])
def test_evaluate_data_must_be_the_checkpoints_store(tiny_checkpoint, other_stores, capsys, kind):
    _one_line_exit_2(lambda: evaluate.main([str(tiny_checkpoint), "--data", str(other_stores[kind]),
                                            "--views", "centre", "--ops", "reference"]), capsys, WHAT[kind])


def test_figures_data_must_be_the_checkpoints_store(tiny_checkpoint, other_stores, tmp_path, capsys):
    _one_line_exit_2(lambda: figures.main(["predictions", str(tiny_checkpoint), "--data", str(other_stores["size"]),
                                           "--out", str(tmp_path / "p.png")]), capsys, WHAT["size"])

"""The figure and experiment commands (alexnet/figures.py, alexnet/experiments.py) on a tiny
checkpoint and dataset on the CPU: each writes a valid PNG of the expected size."""

import numpy as np
import pytest
import torch
from helpers import TINY_CROP
from PIL import Image

from alexnet import experiments, figures
from alexnet.train import TrainConfig
from alexnet.training.loop import run


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(data=str(tiny_store), out=str(out), image_size=TINY_CROP, batch_size=8, epochs=1,
                         max_steps=2, ops="reference", threads=1)
    assert run(config) == 0
    return out / "checkpoint_last.pt"


def png_size(path):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.format, image.size


def test_filters_grid_has_a_block_per_column(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "filters.png"
    assert figures.main(["filters", str(tiny_checkpoint), "--out", str(out)]) == 0
    # 48 kernels per column in 6 rows of 8; each 11 px kernel drawn 4x with 2 px gaps
    cell = 11 * figures.KERNEL_SCALE + figures.GAP
    expected = (2 * 8 * cell + figures.BLOCK_GAP + figures.GAP, figures.TITLE_H + 6 * cell + figures.GAP)
    assert png_size(out) == ("PNG", expected)
    with Image.open(out) as image:  # the title band and the column labels hold dark text
        band = np.asarray(image.convert("L"))[:figures.TITLE_H]
    assert (band < 128).sum() > 50 and (band[:, expected[0] // 2 + 20:] < 128).sum() > 20
    printed = capsys.readouterr().out
    assert "column 1" in printed and "column 2" in printed


def test_colour_specificity_tells_grey_from_colour():
    grey = torch.randn(4, 1, 11, 11).expand(4, 3, 11, 11)
    one_colour = torch.zeros(4, 3, 11, 11)
    one_colour[:, 0] = torch.randn(4, 11, 11)
    assert figures.colour_specificity(grey).max() < 1e-12
    assert figures.colour_specificity(one_colour).min() > 0.6


def test_predictions_figure(tiny_checkpoint, tmp_path, capsys):
    """Without --data the figure finds the store the run trained on, as alexnet.training.evaluation does."""
    out = tmp_path / "predictions.png"
    assert figures.main(["predictions", str(tiny_checkpoint), "--out", str(out), "--count", "3"]) == 0
    assert png_size(out) == ("PNG", (660, 440))  # figsize (2.2 * 3, 4.4) inches at 100 dpi
    assert "top1_correct" in capsys.readouterr().out


def test_neighbours_figure(tiny_checkpoint, tiny_store, tmp_path):
    out = tmp_path / "neighbours.png"
    assert figures.main(["neighbours", str(tiny_checkpoint), "--data", str(tiny_store), "--out", str(out),
                         "--count", "2"]) == 0
    size, pad = 96, 4  # a row per query: the query and its six neighbours, each with its class below
    row = size + figures.LABEL_H + pad
    assert png_size(out) == ("PNG", (7 * (size + pad) + 2 * pad, figures.TITLE_H + 2 * row + pad))


def test_figures_refuse_a_folder_that_is_no_store(tiny_checkpoint, tmp_path):
    with pytest.raises(SystemExit):
        figures.main(["neighbours", str(tiny_checkpoint), "--data", str(tmp_path), "--out", str(tmp_path / "n.png")])


def test_missing_checkpoint_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        figures.main(["filters", str(tmp_path / "nope.pt")])


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_nearest_neighbours_match_brute_force(chunk):
    rng = np.random.default_rng(chunk)
    database = rng.normal(size=(53, 17))
    queries = np.concatenate([rng.normal(size=(4, 17)), database[[3, 40]]])  # two exact hits
    dist, idx = figures.nearest_neighbours(torch.from_numpy(queries).float(), torch.from_numpy(database).float(),
                                           k=6, chunk=chunk)
    brute = np.sqrt(((queries[:, None, :] - database[None, :, :]) ** 2).sum(-1))
    expected_idx = np.argsort(brute, axis=1, kind="stable")[:, :6]
    np.testing.assert_array_equal(idx.numpy(), expected_idx)
    np.testing.assert_allclose(dist.numpy(), np.take_along_axis(brute, expected_idx, 1), rtol=1e-4, atol=1e-3)
    assert idx[4, 0] == 3 and idx[5, 0] == 40


def test_relu_vs_tanh_writes_curves(tiny_store, tmp_path):
    result = experiments.relu_vs_tanh(str(tiny_store), epochs=2, batch_size=16, out=tmp_path)
    assert set(result["training_error"]) == {"relu", "tanh"}
    assert all(len(c) == 2 and all(0 <= e <= 1 for e in c) for c in result["training_error"].values())
    assert png_size(tmp_path / "relu_vs_tanh.png") == ("PNG", (600, 400))
    assert (tmp_path / "relu_vs_tanh.json").stat().st_size > 0


def test_ablation_trains_both_settings(tiny_store, tmp_path):
    base = TrainConfig(data=str(tiny_store), image_size=TINY_CROP, batch_size=16, epochs=1, ops="reference",
                       threads=1)
    result = experiments.ablation("overlap-pool", base, out=tmp_path)
    assert result["runs"]["paper"]["setting"] == "overlap_pool=True"
    assert result["runs"]["ablation"]["setting"] == "overlap_pool=False"
    assert all(0 <= run["val_top1"] <= 1 for run in result["runs"].values())
    assert result["paper_difference_pct_points"] == {"val_top1": 0.4, "val_top5": 0.3}
    assert (tmp_path / "overlap-pool" / "result.json").exists()

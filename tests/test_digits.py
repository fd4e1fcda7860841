"""Acceptance on real data nobody here made: scikit-learn's 1,797 handwritten digits (8x8
greyscale scans, shipped inside the package) written out as an ImageFolder tree of PNGs,
prepared, trained and evaluated by the real commands. The network must get far below chance
(90%): under 10% top-1 validation error.

The settings are what a user of a small dataset is told to use: `--image-size 64` (the store
is then prepared at 73 px, the crop's 256:224), `--init demo` with a lower lr, and no flips
(a mirrored digit is another glyph)."""
from pathlib import Path

import numpy as np
import pytest

from alexnet import evaluate, predict, train
from alexnet.store import Store

sklearn_datasets = pytest.importorskip("sklearn.datasets", reason="needs scikit-learn (pip install -e '.[dev]')")

# measured on a 2-core CPU (README): seeds 0 and 1 both end under 5% error with these
DIGITS_FLAGS = ["--image-size", "64", "--init", "demo", "--lr", "0.005", "--batch-size", "64", "--epochs", "6",
                "--lr-step", "5", "--no-flip", "--ops", "reference", "--threads", "2", "--log-every", "1000"]


def write_digits_tree(root: Path, val_share: float = 0.2, seed: int = 0) -> Path:
    """root/{train,val}/<digit>/<n>.png: 8x8 greyscale PNGs, a seeded 80/20 split."""
    from PIL import Image

    digits = sklearn_datasets.load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    n_val = round(len(order) * val_share)
    for rank, i in enumerate(order):
        split = "val" if rank < n_val else "train"
        folder = root / split / str(digits.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.rint(digits.images[i] * (255 / 16)).astype(np.uint8)  # 0..16 ink levels
        Image.fromarray(pixels, "L").save(folder / f"{i:04d}.png")
    return root


def test_digits_tree_is_a_balanced_imagefolder(tmp_path):
    root = write_digits_tree(tmp_path / "digits")
    counts = {split: sum(1 for _ in (root / split).rglob("*.png")) for split in ("train", "val")}
    assert counts == {"train": 1438, "val": 359}
    assert sorted(p.name for p in (root / "train").iterdir()) == [str(d) for d in range(10)]


@pytest.mark.slow
def test_digits_train_from_the_folder_learn(tmp_path, capsys):
    root = write_digits_tree(tmp_path / "digits")
    out = tmp_path / "run"
    assert train.main(["--data", str(root), "--out", str(out), *DIGITS_FLAGS]) == 0
    log = capsys.readouterr().out
    assert "at 73 px for 64 px crops" in log and "STALLED" not in log
    assert Store(out / "store").image_size == train.store_size_for(64) == 73

    # the real evaluation command finds the run's store (OUT/store) from the checkpoint
    assert evaluate.main([str(out / "checkpoint_last.pt"), "--views", "centre"]) == 0
    line = capsys.readouterr().out
    assert "359 val images" in line
    top1 = float(line.split("top-1 error ")[1].split("%")[0]) / 100
    assert top1 < 0.10, log + line

    # and the checkpoint alone classifies the PNG files
    files = sorted((root / "val").rglob("*.png"))[::36]
    assert predict.main([str(out / "checkpoint_last.pt"), *map(str, files), "--top", "3"]) == 0
    printed = capsys.readouterr().out.splitlines()
    guesses = [printed[i + 1].split()[1] for i, text in enumerate(printed) if text.endswith("view):")]
    assert len(guesses) == len(files)
    right = sum(guess == f.parent.name for guess, f in zip(guesses, files))
    assert right >= len(files) - 2, printed

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
from alexnet.data.store import Store

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


# ------------------------------------------------------------------ the flags small datasets need
@pytest.mark.parametrize("argv", [
    [],
    ["--seed", "3", "--no-flip", "--out", "runs/with space"],
    ["--data", "DATA", "--image-size", "64", "--init", "demo", "--lr", "0.005", "--no-lighting", "--lr-step", "5"],
    ["--data", "DATA", "--init-std", "0.03", "--columns", "1", "--eval-views", "ten"],
])
def test_command_line_gives_back_the_config(argv, tmp_path):
    import shlex

    argv = [str(tmp_path) if word == "DATA" else word for word in argv]  # an existing folder, not holding --out
    config = train.parse_args(argv)
    words = shlex.split(train.command_line(config))
    assert words[:3] == ["python", "-m", "alexnet.train"]
    assert train.parse_args(words[3:]) == config


def test_a_stall_is_only_a_stall_at_chance_and_says_how_to_restart(tmp_path, monkeypatch):
    from alexnet.training.loop import at_chance, stall_message

    chance = {"chance_top1": 0.9}
    assert at_chance({"train_loss": 2.30, "val_top1": 0.90, **chance}, 10)
    assert not at_chance({"train_loss": 2.29, "val_top1": 0.805, **chance}, 10)  # the demo's epoch 2: learning
    assert not at_chance({"train_loss": 2.10, "val_top1": 0.90, **chance}, 10)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits").mkdir()
    config = train.parse_args(["--data", "digits", "--image-size", "64", "--no-flip", "--out", "runs/d"])
    message = stall_message(config, 2)
    assert "STALLED at chance for 2 epochs" in message
    assert message.endswith("python -m alexnet.train --data digits --out runs/d --lr 0.002 --image-size 64 "
                            "--init demo --no-flip")
    again = stall_message(train.parse_args(["--data", "digits", "--init", "demo", "--lr", "0.005"]), 3)
    assert again.endswith("--data digits --lr 0.001 --init demo")


def test_a_folder_is_prepared_at_the_crops_size_and_mismatches_are_refused(tmp_path):
    from PIL import Image

    from alexnet.training.session import Session, resolve_store

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / "tree" / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(
                    tmp_path / "tree" / split / cls / f"{i}.png")
    config = train.TrainConfig(data=str(tmp_path / "tree"), out=str(tmp_path / "run"), image_size=63, threads=1)
    store = resolve_store(config, Session(config))
    assert store.image_size == train.store_size_for(63) == 72 and store.path == tmp_path / "run" / "store"
    with pytest.raises(SystemExit, match="prepared by an earlier run with another --image-size"):
        resolve_store(train.TrainConfig(**{**vars(config), "image_size": 100}), Session(config))
    with pytest.raises(SystemExit, match=r"--image-size 40 does not fit the 72 px images.*--image-size 46`.*"
                                         r"between 54 and 72"):
        resolve_store(train.TrainConfig(**{**vars(config), "data": str(store.path), "image_size": 40}),
                      Session(config))

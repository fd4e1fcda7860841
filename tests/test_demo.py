"""alexnet.data.demo: the synthetic dataset is deterministic, balanced, decodable and prepared once."""
import hashlib

import numpy as np
import pytest
from PIL import Image

from alexnet.data import demo
from alexnet.data.store import Store


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.jpg"))}


def test_generate_is_deterministic_and_balanced(tmp_path):
    a = demo.generate(tmp_path / "a", seed=3, train_per_class=2, val_per_class=1)
    b = demo.generate(tmp_path / "b", seed=3, train_per_class=2, val_per_class=1)
    c = demo.generate(tmp_path / "c", seed=4, train_per_class=2, val_per_class=1)
    da, db, dc = _digest(a), _digest(b), _digest(c)
    assert da == db  # same bytes
    assert da.keys() == dc.keys() and all(da[k] != dc[k] for k in da)  # another seed: other images
    assert len(da) == 30
    for split, n in (("train", 2), ("val", 1)):
        assert sorted(p.name for p in (a / split).iterdir()) == sorted(demo.CLASSES)
        for cls in demo.CLASSES:
            assert len(list((a / split / cls).glob("*.jpg"))) == n
    sizes = set()
    for path in a.rglob("*.jpg"):
        with Image.open(path) as img:
            img.load()
            assert img.mode == "RGB" and img.format == "JPEG"
            assert 180 <= min(img.size) and max(img.size) <= 400
            sizes.add(img.size)
    assert len(sizes) > 20  # varied sizes and aspect ratios


def test_colour_does_not_give_the_class_away():
    """Mean colours of two classes overlap: the class is in the shape."""
    means = {cls: [np.asarray(demo.draw_image(cls, np.random.default_rng([0, i])), float).mean()
                   for i in range(12)] for cls in ("circle", "stripes")}
    lo, hi = sorted(means.values(), key=np.mean)
    assert max(lo) > min(hi)


def test_ensure_demo_store_builds_once(tmp_path, monkeypatch):
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "cache"))
    path = demo.ensure_demo_store(train_per_class=2, val_per_class=1, workers=1, log=lambda *a: None)
    assert path.is_relative_to(tmp_path / "cache")
    store = Store(path)
    assert store.classes == sorted(demo.CLASSES) and store.image_size == 256
    assert np.bincount(store.split("train").labels).tolist() == [2] * 10
    assert len(store.split("val")) == 10

    def fail(*args, **kwargs):
        raise AssertionError("the demo was built again")

    monkeypatch.setattr(demo, "generate", fail)
    assert demo.ensure_demo_store(train_per_class=2, val_per_class=1) == path
    with pytest.raises(AssertionError, match="built again"):  # other counts: another dataset
        demo.ensure_demo_store(tmp_path / "cache", train_per_class=3, val_per_class=1, workers=1)
    small = demo.ensure_demo_store(image_size=64, train_per_class=2, val_per_class=1, workers=1, log=print)
    assert small != path and Store(small).image_size == 64  # the same images, prepared at another size
    assert Store(small).split("val").files() == store.split("val").files()


def test_the_demo_schedule_is_fixed_so_validation_noise_cannot_end_it(tmp_path):
    """No arguments: a fixed lr schedule (lr / 10 once, after epoch 24 of 30), the demo's init;
    with --data the paper's plateau schedule and init stay the defaults."""
    from types import SimpleNamespace

    from alexnet.train import parse_args
    from alexnet.training.loop import Trainer
    from alexnet.training.optim import PlateauSchedule

    config = parse_args([])
    assert (config.lr_step, config.epochs, config.lr, config.init, config.initial()) == (24, 30, 0.002, "demo",
                                                                                        (0.02, 0.1))
    paper = parse_args(["--data", str(tmp_path)])
    assert (paper.lr_step, paper.patience, paper.init, paper.initial()) == (0, 5, "paper", (0.01, 1.0))
    fake = SimpleNamespace(config=config, schedule=PlateauSchedule(lr=config.lr))
    events = [Trainer.fixed_step(fake, epoch) for epoch in range(1, config.epochs + 1)]
    assert events.count("fixed") == 29 and "lr / 10" in events[23]
    assert fake.schedule.lr == pytest.approx(0.0002) and not fake.schedule.finished

"""alexnet.predict: a checkpoint alone classifies image files, as evaluation classifies the
store's images; unreadable files are reported clearly."""
import numpy as np
import pytest
import torch
from helpers import TINY_CROP, assert_close_verbose
from PIL import Image

from alexnet import predict
from alexnet.data.store import Store
from alexnet.train import TrainConfig
from alexnet.training import checkpoint
from alexnet.training.evaluation import predict as predict_views
from alexnet.training.loop import run


@pytest.fixture(scope="module")
def tiny_run(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(data=str(tiny_store), out=str(out), image_size=TINY_CROP, batch_size=8, epochs=1,
                         max_steps=2, ops="reference", threads=1, init="demo", lr=0.002)
    assert run(config) == 0
    return out / "checkpoint_last.pt", Store(tiny_store)


def test_checkpoint_carries_what_inference_needs(tiny_run):
    path, store = tiny_run
    ckpt = checkpoint.load(path)
    assert ckpt["classes"] == list(store.classes) and ckpt["image_size"] == TINY_CROP
    assert ckpt["store_image_size"] == store.image_size
    assert_close_verbose(ckpt["mean_image"], torch.from_numpy(store.mean), rtol=0, atol=0, check_dtype=True,
                         reason="the store's mean image, copied: bit for bit")


@pytest.mark.parametrize("views", ["centre", "ten"])
def test_image_files_classify_as_the_stores_images(tiny_run, tmp_path, views):
    """PNGs of a store's images (already at the store's size: preparing them again is the
    identity) get the probabilities evaluation gives the store's arrays."""
    path, store = tiny_run
    val = store.split("val")
    files = []
    for i in (0, 7, 13):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(np.asarray(val.images[i])).save(files[-1])
    classifier = predict.Classifier(path, ops="reference", device="cpu")
    images = np.stack([classifier.load(f) for f in files])
    np.testing.assert_array_equal(images, np.asarray(val.images[[0, 7, 13]]))
    expected = predict_views(classifier.model, torch.from_numpy(images), torch.from_numpy(store.mean), views,
                             TINY_CROP)
    got = classifier.probabilities(images, views)
    assert_close_verbose(got, expected, rtol=1.3e-6, atol=1e-5, check_dtype=True,
                         reason="fp32 probabilities by the same model on the same pixels (torch's fp32 defaults)")
    top = classifier.top(images, views, k=5)
    assert [len(t) for t in top] == [2, 2, 2]  # two classes: top-5 is both
    for row, probs in zip(top, got):
        assert [name for name, _ in row][0] == store.classes[int(probs.argmax())]
        assert sum(p for _, p in row) == pytest.approx(1.0, abs=1e-5)


def test_command_prints_top_classes_and_reports_unreadable_files(tiny_run, tmp_path, capsys):
    path, store = tiny_run
    good = tmp_path / "good.jpg"
    Image.fromarray(np.asarray(store.split("val").images[3])).save(good)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code = predict.main([str(path), str(good), str(tmp_path / "broken.png"), str(tmp_path / "missing.png"),
                         "--views", "ten", "--top", "1", "--ops", "reference"])
    captured = capsys.readouterr()
    assert code == 1
    assert f"{good} (ten views):" in captured.out
    lines = captured.out.splitlines()
    assert len(lines) == 2 and lines[1].split()[1] in store.classes and lines[1].endswith("%")
    assert "cannot read" in captured.err and "broken.png" in captured.err
    assert "missing.png: no such file" in captured.err and "2 of 3 image(s)" in captured.err


def test_old_checkpoint_needs_data(tiny_run, tmp_path, capsys):
    path, store = tiny_run
    ckpt = checkpoint.load(path)
    for key in ("mean_image", "store_image_size"):
        del ckpt[key]
    old = tmp_path / "old.pt"
    checkpoint.save(ckpt, old)
    image = tmp_path / "x.png"
    Image.fromarray(np.asarray(store.split("val").images[0])).save(image)
    with pytest.raises(SystemExit):
        predict.main([str(old), str(image)])
    assert "carries no mean image" in capsys.readouterr().err
    assert predict.main([str(old), str(image), "--data", str(store.path), "--ops", "reference"]) == 0


def test_postscript_named_jpg_is_refused_with_its_format(tiny_run, tmp_path, capsys, monkeypatch):
    """predict decodes only the accepted raster formats (issue 26): PostScript bytes named x.jpg
    never reach Pillow's EPS plugin (Ghostscript); the message names the format found."""
    from PIL import EpsImagePlugin

    def refuse(*args, **kwargs):
        raise AssertionError("the EPS plugin was reached")
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", refuse)
    path, _ = tiny_run
    eps = tmp_path / "x.jpg"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nshowpage\n%%EOF\n")
    assert predict.main([str(path), str(eps), "--ops", "reference"]) == 1
    err = capsys.readouterr().err
    assert f"cannot read {eps}: UnsupportedFormat: its bytes are EPS" in err

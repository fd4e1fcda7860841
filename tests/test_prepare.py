"""alexnet.data.prepare / alexnet.data.sources / alexnet.data.store: source trees to a store, on generated files."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet.data.prepare import prepare
from alexnet.data.sources import SourceError, load_image, read_labels_file
from alexnet.data.store import OWNER, Store, is_store
from alexnet.prepare import main

SIZE = 48  # stored side in these tests (the paper's 256 is the default; the code is the same)


def _rgb(rng, h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _jpeg_bytes(img: Image.Image, **kw) -> bytes:
    import io
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def make_tree(root: Path, rng) -> dict:
    """A train/val tree with every awkward kind of file; returns {relative path: kind}."""
    kinds = {}

    def put(rel, data=None, img=None, fmt=None, kind="ok"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if img is not None:
            img.save(path, fmt)
        else:
            path.write_bytes(data)
        kinds[rel] = kind

    for split, per_class in (("train", 3), ("val", 1)):
        for c, cls in enumerate(("cat", "dog", "eel")):
            for i in range(per_class):
                h, w = (int(v) for v in rng.integers(40, 90, 2))
                fmt = "PNG" if (c + i) % 2 else "JPEG"
                put(f"{split}/{cls}/{cls}{i}.{fmt.lower()}", img=Image.fromarray(_rgb(rng, h, w)), fmt=fmt)
    put("train/cat/grey.png", img=Image.fromarray(rng.integers(0, 256, (50, 70), dtype=np.uint8), "L"), fmt="PNG")
    put("train/cat/grey16.png", img=Image.fromarray(rng.integers(0, 65536, (60, 50)).astype(np.uint16)), fmt="PNG")
    put("train/dog/cmyk.jpg", img=Image.fromarray(rng.integers(0, 256, (64, 80, 4), dtype=np.uint8), "CMYK"),
        fmt="JPEG")
    put("train/dog/rgba.png", img=Image.fromarray(rng.integers(0, 256, (70, 60, 4), dtype=np.uint8), "RGBA"),
        fmt="PNG")
    put("train/eel/palette.png", img=Image.fromarray(_rgb(rng, 55, 66)).convert("P"), fmt="PNG")
    put("train/eel/thin.png", img=Image.fromarray(_rgb(rng, 500, 10)), fmt="PNG")  # 10 wide, 500 high
    put("train/eel/WIDE.JPEG", img=Image.fromarray(_rgb(rng, 10, 500)), fmt="JPEG")
    put("train/cat/corrupt.jpg", data=rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(), kind="bad")
    full = _jpeg_bytes(Image.fromarray(_rgb(rng, 80, 80)), quality=90)
    put("train/dog/truncated.jpg", data=full[: len(full) // 2], kind="bad")
    put("train/dog/empty.png", data=b"", kind="bad")
    put("train/eel/notes.txt", data=b"not an image", kind="ignored")
    put("train/eel/.hidden.jpg", data=b"hidden files are not looked at", kind="hidden")
    return kinds


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    kinds = make_tree(root, np.random.default_rng(0))
    return root, kinds


@pytest.fixture(scope="module")
def store(tree, tmp_path_factory):
    root, _ = tree
    out = tmp_path_factory.mktemp("out") / "store"
    prepare(root, out, workers=1, image_size=SIZE, progress=False, log=lambda *a: None)
    return Store(out)


def test_store_contents(tree, store):
    root, kinds = tree
    report = json.loads((store.path / "report.json").read_text())
    train = report["splits"]["train"]
    bad = sorted(f for f, k in kinds.items() if k == "bad")
    assert sorted(s["file"] for s in train["skipped_files"]) == bad
    assert all(s["reason"] for s in train["skipped_files"])
    assert train["ignored_files"] == ["train/eel/notes.txt"]
    assert store.classes == ["cat", "dog", "eel"]
    for name in ("train", "val"):
        split = store.split(name)
        expected = sorted(f for f, k in kinds.items() if k == "ok" and f.startswith(name + "/"))
        assert sorted(split.files()) == expected  # every good file once, skipped ones gone
        assert split.images.shape == (len(expected), SIZE, SIZE, 3) and split.images.dtype == np.uint8
        for row, f in enumerate(split.files()):  # rows moved into the holes kept their labels
            assert store.classes[split.labels[row]] == f.split("/")[1]
            np.testing.assert_array_equal(split.images[row], load_image(root / f, SIZE))


def test_mean_and_pca_match_numpy(store):
    images = np.asarray(store.split("train").images, dtype=np.float64)
    np.testing.assert_allclose(store.mean, images.mean(axis=0), rtol=1e-6)
    pixels = images.reshape(-1, 3)
    cov = np.cov(pixels.T, bias=True)
    np.testing.assert_allclose(store.pca.mean_rgb, pixels.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(store.pca.covariance, cov, rtol=1e-10)
    values, vectors = np.linalg.eigh(cov)
    np.testing.assert_allclose(store.pca.eigenvalues, values[::-1], rtol=1e-10)
    for i in range(3):  # eigenvectors up to sign
        v, ref = store.pca.eigenvectors[:, i], vectors[:, 2 - i]
        np.testing.assert_allclose(v * np.sign(v @ ref), ref, atol=1e-8)
    np.testing.assert_allclose(store.pca.eigenvectors @ np.diag(store.pca.eigenvalues) @ store.pca.eigenvectors.T,
                               cov, rtol=1e-9)


def test_colour_modes(tmp_path):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (40, 40), dtype=np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png", 40)  # same size: the resize is the identity
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    np.testing.assert_array_equal(out[..., 0], grey)
    grey16 = rng.integers(0, 65536, (40, 40)).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(load_image(tmp_path / "g16.png", 40)[..., 0], np.rint(grey16 / 257.0))
    rgba = rng.integers(0, 256, (40, 40, 4), dtype=np.uint8)
    rgba[:20, :, 3] = 0  # transparent top half: white
    rgba[20:, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png", 40)
    assert (out[:20] == 255).all()
    np.testing.assert_array_equal(out[20:], rgba[20:, :, :3])
    cmyk = Image.fromarray(rng.integers(0, 256, (40, 40, 4), dtype=np.uint8), "CMYK")
    cmyk.save(tmp_path / "c.jpg", quality=100)
    expected = np.asarray(Image.open(tmp_path / "c.jpg").convert("RGB"), np.int16)
    assert np.abs(load_image(tmp_path / "c.jpg", 40).astype(np.int16) - expected).max() <= 1


@pytest.mark.parametrize("w,h", [(400, 200), (150, 325), (10, 500), (30, 30)])
def test_geometry_shorter_side_then_centre(tmp_path, w, h):
    """Equal to resizing the whole image so the shorter side is SIZE and cropping the centre
    (sizes chosen so that the resized sides and the crop are whole pixels), and the centre
    of the source lands in the centre."""
    rng = np.random.default_rng(2)
    # smooth and away from 0 and 255: Lanczos overshoot is never clipped between Pillow's two passes
    img = np.asarray(Image.fromarray(rng.integers(30, 226, (6, 6, 3), dtype=np.uint8)).resize(
        (w, h), Image.Resampling.BILINEAR))
    Image.fromarray(img).save(tmp_path / "x.png")
    s = SIZE / min(w, h)
    rw, rh = round(w * s), round(h * s)
    assert (rw, rh) == (w * s, h * s) and (rw - SIZE) % 2 == 0 and (rh - SIZE) % 2 == 0
    full = Image.fromarray(img).resize((rw, rh), Image.Resampling.LANCZOS)
    left, top = (rw - SIZE) // 2, (rh - SIZE) // 2
    expected = np.asarray(full, np.int16)[top:top + SIZE, left:left + SIZE]
    got = load_image(tmp_path / "x.png", SIZE).astype(np.int16)
    assert np.abs(got - expected).max() <= 2  # fixed-point rounding between passes
    # a marker: the source's central square split into a white top half and a black bottom half
    # (sides scaled up so this is a downscale, where Lanczos reaches 3 output pixels across)
    k = -(-SIZE // min(w, h))
    w, h = w * k, h * k
    side = min(w, h)
    marked = np.full((h, w, 3), (255, 0, 0), np.uint8)  # red outside the central square
    y0, x0 = (h - side) // 2, (w - side) // 2
    marked[y0:y0 + side // 2, x0:x0 + side] = 255
    marked[y0 + side // 2:y0 + side, x0:x0 + side] = 0
    Image.fromarray(marked).save(tmp_path / "m.png")
    got = load_image(tmp_path / "m.png", SIZE).astype(int)
    inner = slice(4, SIZE - 4)  # away from the edges, where Lanczos reaches across
    assert (got[4:SIZE // 2 - 4, inner] >= 250).all()
    assert (got[SIZE // 2 + 4:SIZE - 4, inner] <= 5).all()


def test_flat_val_with_labels_file(tmp_path):
    rng = np.random.default_rng(3)
    for cls in ("ant", "bee"):
        (tmp_path / "src/train" / cls).mkdir(parents=True)
        Image.fromarray(_rgb(rng, 30, 40)).save(tmp_path / f"src/train/{cls}/0.png")
    (tmp_path / "src/val").mkdir()
    names = [f"v{i}.JPEG" for i in range(4)]
    for n in names:
        Image.fromarray(_rgb(rng, 40, 30)).save(tmp_path / "src/val" / n, "JPEG")
    truth = ["bee", "ant", "ant", "bee"]
    (tmp_path / "idx.txt").write_text("2\n1\n1\n2\n")  # 1-based, into the sorted classes
    (tmp_path / "ids.txt").write_text("1\n2\n2\n1\n")  # 1-based, into the class index file:
    (tmp_path / "order.txt").write_text("bee\nant\n")  # index k names line k (ILSVRC's IDs)
    (tmp_path / "named.csv").write_text("ImageId,PredictionString\n" +
                                        "".join(f"{n[:-5]},{c} 1 2 3 4\n" for n, c in zip(names, truth)))
    cases = [("idx.txt", None), ("ids.txt", tmp_path / "order.txt"), ("named.csv", None)]
    for i, (labels, index) in enumerate(cases):
        out = tmp_path / f"out{i}"
        prepare(tmp_path / "src", out, workers=1, image_size=24, val_labels=tmp_path / labels,
                class_index=index, progress=False, log=lambda *a: None)
        val = Store(out).split("val")
        assert val.files() == [f"val/{n}" for n in names]
        assert [Store(out).classes[k] for k in val.labels] == truth

    files = [f"val/{n}" for n in names]
    (tmp_path / "short.txt").write_text("1\n2\n")
    with pytest.raises(SourceError, match="2 class indices for 4 images"):
        read_labels_file(tmp_path / "short.txt", files, ["ant", "bee"])
    (tmp_path / "bad.txt").write_text("v0 ant\nv1 cow\n")
    with pytest.raises(SourceError, match="cow"):
        read_labels_file(tmp_path / "bad.txt", files, ["ant", "bee"])
    (tmp_path / "partial.txt").write_text("v0 ant\nv1 bee\n")
    with pytest.raises(SourceError, match="no label for 2 images"):
        read_labels_file(tmp_path / "partial.txt", files, ["ant", "bee"])
    with pytest.raises(SourceError, match="--val-labels"):
        prepare(tmp_path / "src", tmp_path / "nolabels", workers=1, progress=False)


def test_rerun_is_safe(tree, tmp_path, capsys):
    root, _ = tree
    out = tmp_path / "store"
    (tmp_path / "store.partial").mkdir()  # left over by an interrupted run (prepare's: its marker): cleaned
    (tmp_path / "store.partial" / "junk").write_text("x")
    (tmp_path / "store.partial" / OWNER).write_text("")
    assert main([str(root), str(out), "--workers", "1", "--image-size", "16", "--quiet"]) == 0
    assert is_store(out) and not (tmp_path / "store.partial").exists()
    stamp = (out / "store.json").stat().st_mtime_ns
    assert main([str(root), str(out), "--image-size", "16", "--quiet"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (out / "store.json").stat().st_mtime_ns == stamp
    assert main([str(root), str(out), "--workers", "1", "--image-size", "16", "--quiet", "--force"]) == 0
    assert (out / "store.json").stat().st_mtime_ns != stamp and is_store(out)

    other = tmp_path / "mine"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    assert main([str(root), str(other), "--quiet"]) == 2
    assert "not a store" in capsys.readouterr().err
    assert sorted(os.listdir(other)) == ["precious.txt"]
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "SRC/train/<class>" in capsys.readouterr().out


def test_interrupted_build_leaves_nothing(tree, tmp_path, monkeypatch):
    import alexnet.data.prepare as prep

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prep, "load_image", interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare(tree[0], tmp_path / "store", workers=1, progress=False)
    assert os.listdir(tmp_path) == []


def test_parallel_workers_match_serial(tree, store, tmp_path):
    out = prepare(tree[0], tmp_path / "par", workers=2, image_size=SIZE, progress=False, log=lambda *a: None)
    par = Store(out)
    for name in ("train", "val"):
        np.testing.assert_array_equal(par.split(name).images, store.split(name).images)
        np.testing.assert_array_equal(par.split(name).labels, store.split(name).labels)
    np.testing.assert_array_equal(par.mean, store.mean)
    np.testing.assert_array_equal(par.pca.covariance, store.pca.covariance)

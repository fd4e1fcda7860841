"""alexnet.data.prepare / alexnet.data.sources against hostile or unlucky source trees: FIFOs, link
loops, corrupt JPEGs that decode, odd names, empty folders, a full disk, a second prepare,
a killed parent."""
import errno
import fcntl
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import alexnet.data.prepare as prep
from alexnet.data.prepare import PrepareError, prepare
from alexnet.data.sources import CorruptImage, SourceError, load_image
from alexnet.data.store import Store
from alexnet.prepare import main

ROOT = Path(__file__).resolve().parents[1]
SIZE = 16


def _jpeg(rng, h=40, w=48, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def small_tree(root: Path, classes=("a", "b"), per_class=2, val=True, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", 1)) if val else (("train", per_class),):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (root / split / c / f"{c}{i}.jpg").write_bytes(_jpeg(rng))
    return root


def quiet(**kw):
    return dict(workers=1, image_size=SIZE, progress=False, log=lambda *a: None, **kw)


@pytest.fixture
def alarm():
    """Turn a hang into a failure: SIGALRM interrupts a blocking open() or read()."""
    def fire(*_):
        raise TimeoutError("hung")
    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_fifos_link_loops_and_duplicate_links_are_skipped(tmp_path, alarm):
    src = small_tree(tmp_path / "src")
    os.mkfifo(src / "train" / "a" / "blocks.jpg")
    os.symlink("..", src / "train" / "a" / "loop")  # train/a/loop/a/loop/... forever
    os.symlink(".", src / "train" / "b" / "self")
    os.symlink(src / "train" / "a" / "a0.jpg", src / "train" / "b" / "again.jpg")
    store = Store(prepare(src, tmp_path / "out", **quiet()))
    assert sorted(store.split("train").files()) == ["train/a/a0.jpg", "train/a/a1.jpg", "train/b/b0.jpg",
                                                   "train/b/b1.jpg"]
    ignored = " ".join(json.loads((tmp_path / "out" / "report.json").read_text())["splits"]["train"]["ignored_files"])
    assert "blocks.jpg (not a regular file" in ignored and "again.jpg (already seen" in ignored


def test_jpegs_cut_short_but_closed_with_an_end_marker_are_skipped_and_reported(tmp_path):
    src = small_tree(tmp_path / "src")
    rng = np.random.default_rng(1)
    full = _jpeg(rng, 64, 80)
    (src / "train" / "a" / "half_grey.jpg").write_bytes(full[: len(full) // 2] + b"\xff\xd9")
    tall = bytearray(_jpeg(rng, 64, 80))
    sof = tall.find(b"\xff\xc0")
    tall[sof + 5:sof + 7] = (128).to_bytes(2, "big")  # the header claims twice the rows the data holds
    (src / "train" / "b" / "tall_header.jpg").write_bytes(bytes(tall))
    for name in ("half_grey.jpg", "tall_header.jpg"):
        with pytest.raises(CorruptImage, match="ends before the image"):
            load_image(next(src.rglob(name)), SIZE)
    prepare(src, tmp_path / "out", **quiet())
    skipped = json.loads((tmp_path / "out" / "report.json").read_text())["splits"]["train"]["skipped_files"]
    assert sorted(Path(s["file"]).name for s in skipped) == ["half_grey.jpg", "tall_header.jpg"]


def test_float_tiff_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0.0, 1.0, 32 * 32, dtype=np.float32).reshape(32, 32)
    Image.fromarray(ramp, "F").save(tmp_path / "unit.tif")
    np.testing.assert_allclose(load_image(tmp_path / "unit.tif", 32)[..., 0], np.rint(ramp * 255), atol=1)
    Image.fromarray(ramp * 4000 - 1000, "F").save(tmp_path / "wide.tif")  # -1000..3000: stretched
    np.testing.assert_allclose(load_image(tmp_path / "wide.tif", 32)[..., 0], np.rint(ramp * 255), atol=1)


def test_names_with_newlines_and_non_utf8_bytes_keep_their_rows(tmp_path):
    src = small_tree(tmp_path / "src")
    rng = np.random.default_rng(2)
    weird = ["two\nlines.jpg", os.fsdecode(b"caf\xe9.jpg")]
    for name in weird:
        (src / "train" / "a" / name).write_bytes(_jpeg(rng))
    store = Store(prepare(src, tmp_path / "out", **quiet()))
    files = store.split("train").files()
    assert len(files) == len(store.split("train")) == 6
    assert {f"train/a/{n}" for n in weird} <= set(files)
    for row, f in enumerate(files):
        assert store.split("train").labels[row] == (0 if f.startswith("train/a/") else 1)


def test_non_utf8_class_names_are_refused_before_any_decoding(tmp_path, monkeypatch):
    src = small_tree(tmp_path / "src")
    os.rename(src / "train" / "b", src / "train" / os.fsdecode(b"b\xff"))
    monkeypatch.setattr(prep, "load_image", lambda *a: pytest.fail("decoded before the names were checked"))
    with pytest.raises(SourceError, match="not valid UTF-8"):
        prepare(src, tmp_path / "out", **quiet())


def test_empty_class_folder_and_missing_val_are_refused(tmp_path):
    src = small_tree(tmp_path / "src")
    (src / "train" / "empty").mkdir()
    with pytest.raises(SourceError, match="empty holds no images"):
        prepare(src, tmp_path / "out", **quiet())
    no_val = small_tree(tmp_path / "noval", val=False)
    with pytest.raises(PrepareError, match="no validation images"):
        prepare(no_val, tmp_path / "out", **quiet())
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_bad_image_size_is_one_clear_line(tmp_path, capsys):
    src = small_tree(tmp_path / "src")
    assert main([str(src), str(tmp_path / "out"), "--image-size", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--image-size must be a positive" in err and "Traceback" not in err


def test_an_existing_store_of_another_source_or_size_is_not_nothing_to_do(tmp_path):
    one, two = small_tree(tmp_path / "one"), small_tree(tmp_path / "two", seed=1)
    out = prepare(one, tmp_path / "out", **quiet())
    with pytest.raises(PrepareError, match="is a store of .*one, not of .*two"):
        prepare(two, out, **quiet())
    with pytest.raises(PrepareError, match="holds 16 px images, not 24 px"):
        prepare(one, out, **{**quiet(), "image_size": 24})
    logged = []
    prepare(one, out, **{**quiet(), "log": logged.append})
    assert "nothing to do" in logged[0]


def test_a_second_prepare_into_the_same_place_is_refused(tmp_path):
    src = small_tree(tmp_path / "src")
    (tmp_path / "stores").mkdir()
    held = os.open(tmp_path / "stores", os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        with pytest.raises(PrepareError, match="another alexnet.prepare is building"):
            prepare(src, tmp_path / "stores" / "out", **quiet())
    finally:
        os.close(held)
    prepare(src, tmp_path / "stores" / "out", **quiet())


def test_a_full_disk_says_disk_full_and_leaves_nothing(tmp_path, monkeypatch):
    src = small_tree(tmp_path / "src")
    real_usage = prep.shutil.disk_usage
    monkeypatch.setattr(prep.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=1000))
    with pytest.raises(PrepareError, match="disk full: 6 images of 16 px need"):
        prepare(src, tmp_path / "out", **quiet())
    monkeypatch.setattr(prep.shutil, "disk_usage", real_usage)

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(prep.os, "posix_fallocate", no_space)
    with pytest.raises(PrepareError, match="disk full"):
        prepare(src, tmp_path / "out", **quiet())
    assert sorted(os.listdir(tmp_path)) == ["src"]


WORKER_SCRIPT = """
import multiprocessing as mp, os, sys, time
from alexnet.data.prepare import _worker_main
if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()  # no task ever comes: the worker waits, as on a hung parent
    p = ctx.Process(target=_worker_main, args=(tasks, results, ".", {}, 16, os.getpid()), daemon=True)
    p.start()
    time.sleep(1.0)  # the worker has set its death signal
    print(p.pid, flush=True)
    time.sleep(600)
"""


@pytest.mark.slow
def test_workers_die_with_a_killed_parent(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    try:
        worker = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)  # no cleanup runs: what a scheduler's kill or the OOM killer does
        parent.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _alive(worker):
            time.sleep(0.1)
        assert not _alive(worker), "the worker outlived its parent"
    finally:
        try:
            os.killpg(parent.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_pillow_told_to_accept_truncated_files_is_refused(tmp_path, monkeypatch):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(PrepareError, match="LOAD_TRUNCATED_IMAGES"):
        prepare(small_tree(tmp_path / "src"), tmp_path / "out", **quiet())

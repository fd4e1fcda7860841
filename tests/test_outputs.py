"""A command deletes or overwrites only what it made (issue 26): --resume auto beside a best
checkpoint without a last one, outputs inside inputs, prepare's OUT.partial / OUT.old that
it did not make, a symbolic link as prepare's OUT. Each refusal is one line, exit code 2."""
import os

import numpy as np
import pytest
from helpers import TINY_CROP
from PIL import Image

from alexnet.base.errors import UsageError
from alexnet.data.store import is_store
from alexnet.prepare import main as prepare_main
from alexnet.train import main as train_main
from alexnet.train import parse_args


def _source(root):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            Image.fromarray(rgb).save(root / split / cls / "x.png")
    return root


def _one_line(capsys, *needles):
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_resume_auto_refuses_a_best_checkpoint_without_a_last_one(tiny_store, tmp_path, capsys):
    (tmp_path / "checkpoint_best.pt").write_bytes(b"the best epoch of a long run")
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    argv = ["--data", str(tiny_store), "--out", str(tmp_path), "--resume", "auto", "--image-size", str(TINY_CROP),
            "--batch-size", "8", "--epochs", "1", "--ops", "reference", "--threads", "1"]
    assert train_main(argv) == 2
    _one_line(capsys, "checkpoint_best.pt but no checkpoint_last.pt", "--resume", "--overwrite")
    assert (tmp_path / "checkpoint_best.pt").read_bytes() == b"the best epoch of a long run"
    assert (tmp_path / "metrics.jsonl").read_text() == '{"epoch": 1}\n{"epoch": 2}\n'


@pytest.mark.parametrize("where", ["same", "inside"])
def test_train_out_inside_its_data_is_refused(tiny_store, where):
    out = tiny_store if where == "same" else tiny_store / "runs" / "a"
    with pytest.raises(UsageError, match="outputs never go into an input"):
        parse_args(["--data", str(tiny_store), "--out", str(out)])


def test_train_out_through_a_link_into_its_data_is_refused(tiny_store, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tiny_store)
    with pytest.raises(UsageError, match="lies inside --data|is --data"):
        parse_args(["--data", str(tiny_store), "--out", str(link / "run")])


@pytest.mark.parametrize("layout", ["out-in-src", "src-in-out", "same"])
def test_prepare_out_and_src_must_not_overlap(tmp_path, capsys, layout):
    if layout == "src-in-out":
        out = tmp_path / "store"
        out.mkdir()
        src = _source(out / "src")
    else:
        src = _source(tmp_path / "src")
        out = src if layout == "same" else src / "store"
    before = sorted(p for p in src.rglob("*"))
    assert prepare_main([str(src), str(out), "--workers", "1", "--image-size", "8", "--quiet"]) == 2
    _one_line(capsys, "overlap")
    assert sorted(p for p in src.rglob("*")) == before


@pytest.mark.parametrize("suffix", [".partial", ".old"])
def test_prepare_leaves_a_partial_or_old_folder_it_did_not_make(tmp_path, capsys, suffix):
    src = _source(tmp_path / "src")
    out = tmp_path / "store"
    theirs = tmp_path / f"store{suffix}"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("months of work")
    assert prepare_main([str(src), str(out), "--workers", "1", "--image-size", "8", "--quiet"]) == 2
    _one_line(capsys, f"store{suffix}", "not made by alexnet.prepare")
    assert (theirs / "thesis.tex").read_text() == "months of work"
    from alexnet.data.store import OWNER

    (theirs / OWNER).write_text("")  # prepare's own leftover: cleaned, the build goes on
    assert prepare_main([str(src), str(out), "--workers", "1", "--image-size", "8", "--quiet"]) == 0
    assert is_store(out) and (out / OWNER).is_file() and not theirs.exists() or suffix == ".old"
    assert prepare_main([str(src), str(out), "--workers", "1", "--image-size", "8", "--quiet", "--force"]) == 0
    assert is_store(out) and not theirs.exists()


def test_prepare_force_on_a_symlinked_out_is_one_line(tmp_path, capsys):
    src = _source(tmp_path / "src")
    real = tmp_path / "real"
    assert prepare_main([str(src), str(real), "--workers", "1", "--image-size", "8", "--quiet"]) == 0
    link = tmp_path / "link"
    link.symlink_to(real)
    assert prepare_main([str(src), str(link), "--workers", "1", "--image-size", "8", "--quiet", "--force"]) == 2
    _one_line(capsys, "symbolic link", os.path.realpath(real))
    assert is_store(real) and link.is_symlink()


def test_prepare_summary_names_links_reached_twice_and_unicode_twins(tmp_path):
    """Issue 26: not only in report.json: the summary says a folder was reached twice through
    links, and that two class names differ only in Unicode normalisation."""
    from alexnet.data.prepare import prepare

    src = _source(tmp_path / "src")
    rgb = np.zeros((20, 20, 3), np.uint8)
    (src / "train" / "a" / "sub").mkdir()
    Image.fromarray(rgb).save(src / "train" / "a" / "sub" / "y.png")
    (src / "train" / "a" / "again").symlink_to(src / "train" / "a" / "sub")
    for name in ("caf\u00e9", "cafe\u0301"):  # NFC and NFD of one word
        for split in ("train", "val"):
            (src / split / name).mkdir()
            Image.fromarray(rgb).save(src / split / name / "z.png")
    lines = []
    prepare(src, tmp_path / "store", workers=1, image_size=8, progress=False, log=lines.append)
    text = "\n".join(lines)
    assert "reached a folder or file a second time through links" in text and "train/a/" in text
    assert "differ only in Unicode normalisation" in text


def test_figures_and_experiments_out_inside_their_data_is_refused(tiny_store, tmp_path, capsys):
    from alexnet import experiments, figures

    (tmp_path / "ckpt.pt").write_bytes(b"not read: the overlap is refused first")
    for call in (lambda: figures.main(["predictions", str(tmp_path / "ckpt.pt"), "--data", str(tiny_store),
                                       "--out", str(tiny_store / "p.png")]),
                 lambda: experiments.main(["relu-vs-tanh", "--data", str(tiny_store), "--out",
                                           str(tiny_store / "exp")])):
        with pytest.raises(SystemExit) as info:
            call()
        assert info.value.code == 2
        assert "outputs never go into an input" in capsys.readouterr().err

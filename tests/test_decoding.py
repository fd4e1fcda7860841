"""Which bytes the project decodes (issue 26): only the raster formats it accepts, by Pillow's
format name, whatever a file is called. A PostScript file named x.jpg must never reach
Pillow's EPS plugin (which renders by running Ghostscript): load_image, prepare's workers and
predict refuse it, naming the format its bytes are. Pixels are decoded as stored: no EXIF
orientation applied, in prepare and predict alike (README, Reliability)."""
import io
import json

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image

from alexnet.data.prepare import prepare
from alexnet.data.sources import RASTER_FORMATS, UnsupportedFormat, load_image

EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n"
       b"newpath 0 0 moveto 16 16 lineto stroke\nshowpage\n%%EOF\n")


@pytest.fixture
def eps_never_opened(monkeypatch):
    """Fail the test if Pillow's EPS plugin parses a file or would start Ghostscript."""
    def refuse(*args, **kwargs):
        raise AssertionError("the EPS plugin was reached")
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", refuse)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", refuse)


def test_postscript_named_jpg_is_refused_unopened(tmp_path, eps_never_opened):
    path = tmp_path / "x.jpg"
    path.write_bytes(EPS)
    with pytest.raises(UnsupportedFormat, match="its bytes are EPS, not one of the raster formats"):
        load_image(path, 32)


def test_every_accepted_format_still_loads(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    for fmt in ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM"):
        assert fmt in RASTER_FORMATS
        path = tmp_path / f"a.{fmt.lower()}"
        Image.fromarray(rgb).save(path, fmt)
        assert load_image(path, 16).shape == (16, 16, 3)


def test_prepare_skips_postscript_and_says_what_it_was(tmp_path, eps_never_opened):
    src = tmp_path / "src"
    rgb = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (src / split / cls).mkdir(parents=True)
            Image.fromarray(rgb).save(src / split / cls / "ok.png")
    (src / "train" / "a" / "x.jpg").write_bytes(EPS)
    prepare(src, tmp_path / "store", workers=1, image_size=16, progress=False, log=lambda *a: None)
    report = json.loads((tmp_path / "store" / "report.json").read_text())
    skipped = report["splits"]["train"]["skipped_files"]
    assert [s["file"] for s in skipped] == ["train/a/x.jpg"]
    assert "UnsupportedFormat" in skipped[0]["reason"] and "EPS" in skipped[0]["reason"]


def test_exif_orientation_is_not_applied(tmp_path):
    """The stored pixels, not the EXIF-rotated view: the same in prepare and predict (both
    call load_image)."""
    rgb = np.zeros((32, 64, 3), np.uint8)
    rgb[:, :32] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG", exif=exif)
    path = tmp_path / "rotated.png"
    path.write_bytes(buf.getvalue())
    out = load_image(path, 32)
    assert out[:, :8].min() == 255 and out[:, -8:].max() == 0  # the white half still on the left

"""Reading an ImageNet-style source tree: which files, which labels, and one image as pixels.

Accepted layouts of SRC (the torchvision ImageFolder convention, and ILSVRC's flat val):

    SRC/train/<class>/**/<image>     required; the sorted class folder names are the classes
    SRC/val/<class>/**/<image>       class folders named like train's, or
    SRC/val/<image>                  a flat folder plus a labels file (see `read_labels_file`)

Images are regular files with an image extension (`IMAGE_EXTENSIONS`, any case); other
files are listed as ignored, hidden files are not looked at. Symbolic links are followed,
but every directory and every file is visited once (by device and inode), so a link loop
ends and a link to `.` does not store each image again; FIFOs, sockets and devices are
ignored (a FIFO named x.jpg would block the reader forever). A train class folder without
images is refused (it would be a class no image teaches), as are class names that are not
valid UTF-8. `load_image` turns any Pillow-readable
image (JPEG, PNG, ...; greyscale, 16-bit, palette, CMYK, with alpha) into the paper's
input (section 2): RGB, shorter side resized to `size`, the central size x size patch.
"""
from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
# The raster formats `load_image` decodes, by Pillow's name, whatever the file is called: the
# formats of IMAGE_EXTENSIONS (MPO: a JPEG with extra pictures, as cameras write). Any other
# (PostScript/EPS above all, which Pillow renders by running Ghostscript) is refused unopened.
RASTER_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")


class SourceError(ValueError):
    """SRC (or a labels file) is not laid out as described in this module's docstring."""


class UnsupportedFormat(ValueError):
    """An image file whose bytes are not one of RASTER_FORMATS (named in the message)."""


@dataclass
class SplitSource:
    name: str
    files: list[str] = field(default_factory=list)  # relative to SRC, sorted
    labels: list[int] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # non-image files


def _walk(folder: Path, seen: set | None = None, skipped: list | None = None):
    """Non-hidden regular files under folder, recursively (following links), as sorted paths
    relative to it. `seen` holds the (device, inode) of every directory and file already
    visited (shared across calls: one image reached by two paths is taken once); `skipped`
    collects (path, reason) of what was passed over."""
    seen = set() if seen is None else seen
    skipped = [] if skipped is None else skipped
    found = []

    def visit(directory: str, rel: str):
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as err:
            skipped.append((rel or ".", f"unreadable folder: {err.strerror}"))
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = os.path.join(rel, entry.name) if rel else entry.name
            try:
                st = os.stat(entry.path)  # follows links
            except OSError as err:
                skipped.append((path, f"cannot stat: {err.strerror} (a dangling link?)"))
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                skipped.append((path, "already seen by another path (a link loop or duplicate link)"))
                continue
            seen.add(key)
            if stat.S_ISDIR(st.st_mode):
                visit(entry.path, path)
            elif stat.S_ISREG(st.st_mode):
                found.append(path)
            else:
                skipped.append((path, "not a regular file (FIFO, socket or device)"))

    root = os.stat(folder)
    seen.add((root.st_dev, root.st_ino))
    visit(str(folder), "")
    return sorted(found)


def _inode(path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _subdirs(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def scan_class_folders(src: Path, split: str, classes: list[str]) -> SplitSource:
    out = SplitSource(split)
    index = {c: i for i, c in enumerate(classes)}
    # SRC, the split folder and every class folder count as seen from the start: a link back
    # to one of them (a loop, or into another class) is not followed
    names = _subdirs(src / split)
    seen = {_inode(p) for p in [src, src / split] + [src / split / n for n in names]}
    for name in names:
        if name not in index:
            raise SourceError(f"{src / split / name}: class {name!r} is not among train's {len(classes)} classes")
        skipped: list = []
        images = 0
        for rel in _walk(src / split / name, seen, skipped):
            path = f"{split}/{name}/{rel}"
            if _is_image(rel):
                out.files.append(path)
                out.labels.append(index[name])
                images += 1
            else:
                out.ignored.append(path)
        out.ignored += [f"{split}/{name}/{rel} ({why})" for rel, why in skipped]
        if split == "train" and images == 0:
            raise SourceError(f"{src / split / name} holds no images: a class without training images cannot be "
                              "learned; remove the folder or add images")
    return out


def read_labels_file(path, files: list[str], classes: list[str], class_index: list[str] | None = None) -> list[int]:
    """Labels of `files` (names in a flat folder, sorted) from a labels file in either form:

    - one integer per line: the 1-based class index of the i-th file in sorted file-name
      order (ILSVRC's `ILSVRC2012_validation_ground_truth.txt`). Index k names the class on
      line k of `class_index` (one class name per line); without it, classes[k-1]. ILSVRC's
      indices are its ILSVRC2012_IDs, which are NOT the sorted order of the class folder
      names: pass the class names in ID order as class_index.
    - "<file> <class>" per line, separated by whitespace or a comma, the file named with or
      without its extension, the class by name (a first line that is neither, like a CSV
      header "ImageId,PredictionString", is skipped; tokens after the class are ignored).
    Blank lines and lines starting with '#' are ignored.
    """
    lines = [ln.strip() for ln in Path(path).read_text().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    index = {c: i for i, c in enumerate(classes)}
    if lines and all(re.fullmatch(r"\d+", ln) for ln in lines):
        names = class_index if class_index is not None else classes
        if len(lines) != len(files):
            raise SourceError(f"{path}: {len(lines)} class indices for {len(files)} images")
        labels = []
        for ln_no, ln in enumerate(lines, 1):
            k = int(ln)
            if not 1 <= k <= len(names):
                raise SourceError(f"{path}:{ln_no}: class index {k} outside 1..{len(names)}")
            if names[k - 1] not in index:
                raise SourceError(f"{path}:{ln_no}: class {names[k - 1]!r} (index {k}) is not a train class")
            labels.append(index[names[k - 1]])
        return labels

    by_name = {}
    for i, f in enumerate(files):
        base = os.path.basename(f)
        by_name[base] = by_name[os.path.splitext(base)[0]] = i
    labels = [None] * len(files)
    for ln_no, ln in enumerate(lines, 1):
        tokens = re.split(r"[\s,]+", ln)
        if len(tokens) < 2 or tokens[1] not in index:
            if ln_no == 1 and (len(tokens) < 2 or tokens[0] not in by_name):
                continue  # a header line
            raise SourceError(f"{path}:{ln_no}: expected '<file> <class>' with a train class, got {ln!r}")
        if tokens[0] in by_name:  # labels of files that are not there are not an error
            labels[by_name[tokens[0]]] = index[tokens[1]]
    missing = [files[i] for i, lab in enumerate(labels) if lab is None]
    if missing:
        raise SourceError(f"{path}: no label for {len(missing)} images, e.g. {missing[:3]}")
    return labels


def scan_source(src, val_labels=None, class_index=None) -> tuple[list[str], list[SplitSource]]:
    """(classes, [train, val]) found in SRC (val only when SRC/val exists)."""
    src = Path(src)
    if not (src / "train").is_dir():
        raise SourceError(f"{src} has no train/ folder (expected SRC/train/<class>/<images>)")
    classes = _subdirs(src / "train")
    if not classes:
        raise SourceError(f"{src / 'train'} has no class folders")
    check_names(classes, "class folder")
    splits = [scan_class_folders(src, "train", classes)]
    val = src / "val"
    if val.is_dir():
        if _subdirs(val):
            if val_labels is not None:
                raise SourceError(f"{val} has class folders: a labels file is only for a flat val folder")
            splits.append(scan_class_folders(src, "val", classes))
        else:
            skipped: list = []
            names = _walk(val, {_inode(src), _inode(val)}, skipped)
            flat = SplitSource("val", files=[f"val/{f}" for f in names if _is_image(f)],
                               ignored=[f"val/{f}" for f in names if not _is_image(f)]
                               + [f"val/{f} ({why})" for f, why in skipped])
            if flat.files:
                if val_labels is None:
                    raise SourceError(f"{val} holds images but no class folders: pass the labels file (--val-labels)")
                index_names = Path(class_index).read_text().split() if class_index is not None else None
                flat.labels = read_labels_file(val_labels, flat.files, classes, index_names)
            splits.append(flat)
    elif val_labels is not None:
        raise SourceError(f"a labels file was given but {val} does not exist")
    return classes, splits


def check_names(names, what: str) -> None:
    """Refuse names that are not valid UTF-8 (os.listdir hands their bytes over as surrogate
    escapes): a class name is written to classes.json and printed in every figure."""
    bad = [n for n in names if not _utf8(n)]
    if bad:
        shown = ", ".join(repr(os.fsencode(n)) for n in bad[:3])
        raise SourceError(f"{len(bad)} {what} name(s) are not valid UTF-8 ({shown}): rename them "
                          "(e.g. with convmv) and run again")


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def display(name: str) -> str:
    """A file name printable on any terminal (non-UTF-8 bytes as \\x escapes)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# ------------------------------------------------------------------------------- decoding
class CorruptImage(ValueError):
    """A file that decodes, but not to the picture it claims to hold."""


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow image as 8-bit RGB: 16-bit/int greyscale scaled to 0..255, float
    greyscale scaled (not clipped: 0..1 data times 255, any other range stretched from its
    minimum and maximum), transparency composited over white, CMYK/palette/greyscale converted."""
    if img.mode == "F":
        a = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        low, high = float(a.min()), float(a.max())
        if low < 0.0 or high > 1.0:  # not the 0..1 convention: stretch the data's own range
            a = (a - low) / (high - low) if high > low else np.zeros_like(a)
        img = Image.fromarray(np.rint(a * 255.0).astype(np.uint8), "L")
    elif img.mode.startswith("I"):
        a = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or a.max() > 255:
            a = a / 257.0  # 16-bit range to 8-bit
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img.convert("RGB")


def _check_not_grey_filled(img: Image.Image, full_width: int) -> None:
    """Raise CorruptImage for a JPEG whose data ended early but with an end marker (a cut
    download closed with FFD9, or a header declaring more pixels than the data holds):
    libjpeg then only warns, which Pillow does not pass on, and fills every missing 8x8
    block with zero coefficients, i.e. exactly (128, 128, 128). So a last block (bottom
    right, in decoded pixels) that is exactly that grey marks the file. A real photo whose
    last block is exactly 128 grey in every pixel and channel is refused too: a deliberate
    choice (README, Reliability)."""
    if img.mode not in ("RGB", "L"):
        return
    width, height = img.size
    block = max(1, round(8 * width / full_width))  # an 8x8 block at the draft scale
    top, left = ((height - 1) // block) * block, ((width - 1) // block) * block
    corner = np.asarray(img.crop((left, top, width, height)))
    if corner.size and (corner == 128).all():
        raise CorruptImage("the JPEG data ends before the image does (its last blocks are libjpeg's grey fill): "
                           "truncated or corrupt")


def sniff_format(path) -> str | None:
    """The Pillow format whose signature the file's first bytes match (no plugin is run:
    only the plugins' `accept` tests of the header), or None."""
    with open(path, "rb") as f:
        head = f.read(64)
    Image.init()
    for name, (_, accept) in Image.OPEN.items():
        try:
            if accept is not None and accept(head):
                return name
        except Exception:  # noqa: BLE001  (an accept test that cannot judge 64 bytes)
            continue
    return None


def open_raster(path) -> Image.Image:
    """Image.open restricted to RASTER_FORMATS (whatever the file's name); a file of another
    format raises UnsupportedFormat naming the format its bytes are."""
    mode = os.stat(path).st_mode  # FileNotFoundError for a missing file, as open's
    if not stat.S_ISREG(mode):  # a FIFO would block the reader forever, a device read without end
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise ValueError(f"{path} is {kind}, not an image file")
    Image.init()  # every plugin registered; MPO is its own plugin only in some Pillow versions
    try:
        return Image.open(path, formats=[f for f in RASTER_FORMATS if f in Image.OPEN])
    except UnidentifiedImageError:
        found = sniff_format(path)
        if found is not None and found not in RASTER_FORMATS:
            raise UnsupportedFormat(f"its bytes are {found}, not one of the raster formats read here "
                                    f"({', '.join(RASTER_FORMATS)}); refused unopened") from None
        raise


def load_image(path, size: int = 256) -> np.ndarray:
    """uint8 (size, size, 3): the image's shorter side resized to `size` (Lanczos), then its
    central size x size patch. Only RASTER_FORMATS are decoded (`open_raster`), pixels as
    stored: no EXIF orientation is applied and no colour profile converted (README,
    Reliability), in prepare and predict alike. Raises on unreadable or truncated files
    (also on JPEGs cut short and closed with an end marker: see `_check_not_grey_filled`)."""
    with open_raster(path) as img:
        w, h = img.size
        side = min(w, h)
        # Central square in source pixels (exact, fractional for odd differences); resizing
        # just this box to size x size equals resizing the whole image and cropping.
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        if img.format == "JPEG":
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale while that keeps >= 2x the target
            # resolution (what Pillow's thumbnail does): big JPEGs decode several times faster.
            goal = 2 * size / side
            drafted = img.draft(None, (max(1, math.ceil(w * goal)), max(1, math.ceil(h * goal))))
            if drafted is not None:
                scale = drafted[1][2] / w
                box = tuple(v * scale for v in box)
        img.load()  # decode now: errors (truncation, corrupt data) surface here
        if img.format == "JPEG":
            _check_not_grey_filled(img, w)
        rgb = _to_rgb(img)
        out = rgb.resize((size, size), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
        return np.asarray(out, dtype=np.uint8)

"""The prepared dataset store: what `python -m alexnet.prepare` writes and training reads.

A store is a directory:

    store.json            format version, image size, per-split counts, the source it was
                          made from; written LAST: a directory is a complete store iff this
                          file exists. `Store.fingerprint` hashes it with the classes: a
                          checkpoint records it, so a mismatched store is refused
    classes.json          class names, in label order (label i = classes[i])
    {split}_images.npy    uint8 (N, 256, 256, 3): RGB, shorter side resized to 256, central
                          256x256 crop (paper section 2); memory-mappable (np.load mmap_mode)
    {split}_labels.npy    int64 (N,)
    {split}_files.txt     the source file of each row, relative to SRC, one JSON string per
                          line (a name may hold a newline or bytes that are not UTF-8)
    mean.npy              float32 (256, 256, 3): mean image over the training split
    pca.npz               RGB statistics over every training pixel (values 0..255):
                          mean_rgb (3,), covariance (3, 3), eigenvalues (3,) descending,
                          eigenvectors (3, 3) with eigenvector i in column i (paper section 4.1)
    report.json           counts, skipped files with reasons, ignored files, timings

`StoreWriter` builds a store in a temporary sibling directory and renames it into place at
the end, so an interrupted build never leaves a directory that looks complete.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
MARKER = "store.json"
# Written first into OUT.partial by StoreWriter, so it travels into OUT and into OUT.old: the
# sign that prepare made a folder of that name, which alone lets it delete one (`owned`).
OWNER = ".made-by-alexnet-prepare"


def owned(path) -> bool:
    """True if `path` is a real folder (not a link) that StoreWriter made (holds OWNER)."""
    path = Path(path)
    return path.is_dir() and not path.is_symlink() and (path / OWNER).is_file()


def refuse_unowned(out) -> None:
    """FileExistsError (one line) if OUT.partial or OUT.old exists but prepare did not make it:
    prepare deletes those names only when they are its own."""
    out = Path(out)
    for suffix in (".partial", ".old"):
        other = out.with_name(out.name + suffix)
        if (other.exists() or other.is_symlink()) and not owned(other):
            raise FileExistsError(f"{other} exists and was not made by alexnet.prepare (no {OWNER} in it); it is "
                                  f"left alone: move or remove it yourself, or choose another OUT")
FILES_ENCODING = "json-lines"  # store.json's "files": how {split}_files.txt is written (absent: plain lines)


class StoreError(ValueError):
    """A store whose files disagree with each other or with store.json."""


def is_store(path) -> bool:
    """True if `path` is a complete store (its marker exists)."""
    return (Path(path) / MARKER).is_file()


@dataclass(frozen=True)
class PCA:
    """Principal components of the training set's RGB pixel values (0..255 scale)."""
    mean_rgb: np.ndarray      # (3,)
    covariance: np.ndarray    # (3, 3)
    eigenvalues: np.ndarray   # (3,) descending
    eigenvectors: np.ndarray  # (3, 3), column i is the eigenvector of eigenvalues[i]


@dataclass(frozen=True)
class Split:
    """One split of a store: images (memory-mapped) and labels, row i belonging together."""
    name: str
    images: np.ndarray  # uint8 (N, H, W, 3), np.memmap
    labels: np.ndarray  # int64 (N,)
    path: Path          # the directory of the store
    files_encoding: str | None = FILES_ENCODING

    def __len__(self) -> int:
        return len(self.labels)

    def files(self) -> list[str]:
        """Source file of each row (relative to the SRC the store was prepared from)."""
        text = (self.path / f"{self.name}_files.txt").read_text(encoding="utf-8")
        if self.files_encoding == FILES_ENCODING:
            return [json.loads(line) for line in text.split("\n") if line]
        return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")  # stores written before


class Store:
    """A complete store opened for reading: `Store(path).split("train").images[i]`."""

    def __init__(self, path):
        self.path = Path(path)
        if not is_store(self.path):
            what = "does not exist" if not self.path.exists() else f"has no {MARKER} (not a complete store)"
            raise FileNotFoundError(f"{self.path} {what}; build one with `python -m alexnet.prepare SRC {self.path}`")
        try:
            self.meta = json.loads((self.path / MARKER).read_text())
            if self.meta.get("format") != FORMAT_VERSION:
                raise StoreError(f"{self.path}: store format {self.meta.get('format')!r}, this code reads "
                                 f"{FORMAT_VERSION}")
            self.classes: list[str] = json.loads((self.path / "classes.json").read_text())
            if self.meta.get("num_classes", len(self.classes)) != len(self.classes):
                raise StoreError(f"{self.path}: classes.json names {len(self.classes)} classes, store.json says "
                                 f"{self.meta['num_classes']}{REBUILD}")
            self.mean: np.ndarray = np.load(self.path / "mean.npy")
            with np.load(self.path / "pca.npz") as z:
                self.pca = PCA(*(z[k] for k in ("mean_rgb", "covariance", "eigenvalues", "eigenvectors")))
            missing = [k for k in ("splits", "image_size") if k not in self.meta]
            if missing:
                raise StoreError(f"{self.path}: store.json has no {', '.join(missing)}{REBUILD}")
            size = int(self.meta["image_size"])
            if self.mean.shape != (size, size, 3) or self.mean.dtype.kind != "f" or not np.isfinite(self.mean).all():
                what = "non-finite values" if self.mean.shape == (size, size, 3) else f"shape {self.mean.shape}"
                raise StoreError(f"{self.path / 'mean.npy'} has {what}, expected a finite {size}x{size}x3 mean image"
                                 f"{REBUILD}")
            for name in ("mean_rgb", "covariance", "eigenvalues", "eigenvectors"):
                if not np.isfinite(getattr(self.pca, name)).all():
                    raise StoreError(f"{self.path / 'pca.npz'}: its {name} has non-finite values{REBUILD}")
        except StoreError:
            raise
        except (OSError, ValueError, KeyError, AttributeError) as err:  # a missing or garbled file of the store
            raise StoreError(f"{self.path}: cannot read the store ({type(err).__name__}: {err}){REBUILD}") from None
        self._splits: dict[str, Split] = {}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def source(self) -> str | None:
        """What the store was made from: the resolved SRC folder of `prepare`, "arrays", or
        None for stores written before this was recorded (then report.json's, if any)."""
        if "source" in self.meta:
            return self.meta["source"]
        try:
            return json.loads((self.path / "report.json").read_text()).get("source")
        except (OSError, ValueError):
            return None

    @property
    def fingerprint(self) -> str:
        """A hash of what the store holds: source, image size, counts per split, classes."""
        what = {"source": self.source, "image_size": self.image_size, "splits": self.meta["splits"],
                "classes": self.classes}
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def splits(self) -> list[str]:
        return list(self.meta["splits"])

    def split(self, name: str) -> Split:
        if name not in self.meta["splits"]:
            raise KeyError(f"{self.path} has no split {name!r}; it has {self.splits}")
        if name not in self._splits:
            arrays = []
            for kind in ("images", "labels"):
                file = self.path / f"{name}_{kind}.npy"
                try:
                    arrays.append(np.load(file, mmap_mode="r" if kind == "images" else None))
                except (OSError, ValueError, EOFError) as err:  # truncated (mmap past its end), missing, garbled
                    raise StoreError(f"{file} cannot be read ({type(err).__name__}: {err}): truncated or "
                                     f"damaged{REBUILD}") from None
            images, labels = arrays
            self._check_split(name, images, labels)
            self._splits[name] = Split(name, images, labels, self.path, self.meta.get("files"))
        return self._splits[name]

    def _check_split(self, name: str, images: np.ndarray, labels: np.ndarray) -> None:
        """Raise StoreError unless the arrays agree with store.json and with each other."""
        n, size = self.meta["splits"][name], self.image_size
        if images.dtype != np.uint8 or images.shape != (n, size, size, 3):
            raise StoreError(f"{self.path}: {name}_images.npy is {images.dtype} {images.shape}, store.json says "
                             f"uint8 {(n, size, size, 3)}{REBUILD}")
        if labels.shape != (n,) or labels.dtype.kind not in "iu":
            raise StoreError(f"{self.path}: {name}_labels.npy is {labels.dtype} {labels.shape}, store.json says "
                             f"{n} integer labels{REBUILD}")
        if n and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise StoreError(f"{self.path}: {name}_labels.npy has labels outside 0..{self.num_classes - 1}{REBUILD}")

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in self.meta["splits"].items())
        return f"Store({str(self.path)!r}, classes={self.num_classes}, {counts})"


# --------------------------------------------------------------------------------- writing
class PixelStats:
    """Exact integer sums over images, for the mean image and the RGB covariance. Partial
    sums (one per worker) merge with `+=`; every sum fits int64 for ImageNet-sized splits
    (the pixel Gram matrix, the largest, stays below 255^2 * 1.3e6 * 65536 < 2^63)."""

    def __init__(self, size: int):
        self.count = 0
        self.image_sum = np.zeros((size, size, 3), np.int64)
        self.rgb_sum = np.zeros(3, np.int64)
        self.gram = np.zeros((3, 3), np.int64)

    def add(self, image: np.ndarray) -> None:
        self.count += 1
        self.image_sum += image
        x = image.reshape(-1, 3).astype(np.float64)  # BLAS; one image's sums are exact in float64
        self.rgb_sum += x.sum(axis=0).astype(np.int64)
        self.gram += (x.T @ x).astype(np.int64)

    def __iadd__(self, other: "PixelStats") -> "PixelStats":
        self.count += other.count
        self.image_sum += other.image_sum
        self.rgb_sum += other.rgb_sum
        self.gram += other.gram
        return self

    def mean_image(self) -> np.ndarray:
        return (self.image_sum / max(self.count, 1)).astype(np.float32)

    def pca(self) -> "PCA":
        n_pixels = self.count * self.image_sum.shape[0] * self.image_sum.shape[1]
        return pca_from_sums(n_pixels, self.rgb_sum, self.gram)


def pca_from_sums(n_pixels: int, rgb_sum, gram) -> PCA:
    """Mean, covariance and principal components of RGB pixels from exact integer sums:
    n_pixels, rgb_sum[c] = sum of x_c, gram[c, d] = sum of x_c * x_d. The covariance is the
    population one (divide by n), formed in Python integers, so it is exact before rounding."""
    s = [int(v) for v in rgb_sum]
    g = [[int(v) for v in row] for row in gram]
    n = int(n_pixels)
    cov = np.array([[(n * g[i][j] - s[i] * s[j]) / (n * n) for j in range(3)] for i in range(3)])
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
    # Fix each eigenvector's sign (its largest-magnitude component positive) so stores are reproducible.
    signs = np.sign(eigenvectors[np.abs(eigenvectors).argmax(axis=0), np.arange(3)])
    eigenvectors = eigenvectors * np.where(signs == 0, 1.0, signs)
    return PCA(np.array(s, np.float64) / n, cov, np.clip(eigenvalues, 0.0, None), eigenvectors)


def shrink_npy(path, n_rows: int) -> None:
    """Cut an .npy file to its first n_rows rows in place: rewrite the header's shape (padded
    to the same length, so the data does not move) and truncate the file."""
    with open(path, "r+b") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        data_offset = f.tell()
        if n_rows == shape[0]:
            return
        if fortran or n_rows > shape[0]:
            raise ValueError(f"cannot shrink {path} from {shape[0]} to {n_rows} rows")
        new_shape = (n_rows, *shape[1:])
        header = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": new_shape})
        prefix = 6 + 2 + (2 if version == (1, 0) else 4)  # magic, version, header length
        room = data_offset - prefix - 1
        if len(header) > room:
            raise ValueError(f"new header does not fit in {path}")
        f.seek(prefix)
        f.write((header.ljust(room) + "\n").encode("latin1"))
        f.truncate(data_offset + n_rows * int(np.prod(new_shape[1:], dtype=np.int64)) * dtype.itemsize)


REBUILD = " (the store is damaged or was changed; rebuild it with `python -m alexnet.prepare SRC OUT --force`)"


class StoreWriter:
    """Builds a store in `{out}.partial` and moves it to `out` in `finish` (see module doc).
    `source` is recorded in store.json (the resolved SRC folder, or a description)."""

    def __init__(self, out, image_size: int = 256, source: str | None = None):
        self.out = Path(out)
        self.tmp = self.out.with_name(self.out.name + ".partial")
        self.image_size = image_size
        self.source = source
        refuse_unowned(self.out)
        if self.tmp.exists():  # left over by an interrupted run (ours: refuse_unowned checked)
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        (self.tmp / OWNER).write_text("made by alexnet.prepare, which deletes OUT.partial and OUT.old only with "
                                      "this file in them\n")
        self.counts: dict[str, int] = {}

    def create_images(self, split: str, n: int) -> np.memmap:
        """A writable uint8 (n, S, S, 3) memmap for the split's images."""
        shape = (n, self.image_size, self.image_size, 3)
        return np.lib.format.open_memmap(self.tmp / f"{split}_images.npy", mode="w+", dtype=np.uint8, shape=shape)

    def images_path(self, split: str) -> Path:
        return self.tmp / f"{split}_images.npy"

    def write_split(self, split: str, labels, files: list[str]) -> None:
        """Labels and source files of the split; cuts the images file to len(labels) rows
        (rows past them are the unused space of skipped files)."""
        labels = np.asarray(labels, dtype=np.int64)
        shrink_npy(self.images_path(split), len(labels))
        np.save(self.tmp / f"{split}_labels.npy", labels)
        # JSON strings: a newline in a name cannot shift the rows; non-UTF-8 bytes (surrogate
        # escapes from os.listdir) are written as \\udcXX escapes and read back unchanged
        (self.tmp / f"{split}_files.txt").write_text("".join(json.dumps(f) + "\n" for f in files), encoding="ascii")
        self.counts[split] = len(labels)

    def finish(self, classes: list[str], mean: np.ndarray, pca: PCA, report: dict) -> Path:
        """Write the statistics and the marker, then move the store into place (replacing a
        complete store at `out`, or an empty directory)."""
        (self.tmp / "classes.json").write_text(json.dumps(list(classes), indent=0) + "\n")
        np.save(self.tmp / "mean.npy", np.asarray(mean, dtype=np.float32))
        np.savez(self.tmp / "pca.npz", mean_rgb=pca.mean_rgb, covariance=pca.covariance,
                 eigenvalues=pca.eigenvalues, eigenvectors=pca.eigenvectors)
        (self.tmp / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        for name in os.listdir(self.tmp):  # data on disk before the marker says it is there
            with open(self.tmp / name, "rb") as f:
                os.fsync(f.fileno())
        meta = {"format": FORMAT_VERSION, "image_size": self.image_size, "num_classes": len(classes),
                "splits": self.counts, "source": self.source, "files": FILES_ENCODING}
        (self.tmp / MARKER).write_text(json.dumps(meta, indent=1) + "\n")
        old = None
        if self.out.exists():
            if any(self.out.iterdir()) and not is_store(self.out):
                raise FileExistsError(f"{self.out} appeared during the build and is not a store; left it alone")
            old = self.out.with_name(self.out.name + ".old")
            refuse_unowned(self.out)  # an OUT.old that appeared during the build and is not ours stays
            if old.exists():
                shutil.rmtree(old)
            os.rename(self.out, old)
        os.rename(self.tmp, self.out)
        if old is not None:
            shutil.rmtree(old)
        return self.out

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def write_arrays(out, splits: dict, classes: list[str]) -> Path:
    """A store from in-memory arrays: splits = {name: (uint8 (N, S, S, 3), labels (N,))},
    statistics over splits["train"]. For tests, benchmarks and synthetic data."""
    size = splits["train"][0].shape[1]
    writer = StoreWriter(out, size, source="arrays")
    stats = PixelStats(size)
    for name, (images, labels) in splits.items():
        writer.create_images(name, len(images))[:] = images
        writer.write_split(name, labels, [f"{name}/{i}" for i in range(len(images))])
    for image in splits["train"][0]:
        stats.add(image)
    return writer.finish(classes, stats.mean_image(), stats.pca(), {"source": "arrays"})

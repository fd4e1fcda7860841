"""The embedded demo dataset: a small synthetic ImageNet-style tree, generated deterministically.

Ten classes of procedurally drawn objects and textures, each image a JPEG of random size
(sides 180..400 px, so aspect ratios up to ~2:1):

    circle, square, triangle, star, cross, ring, crescent    one large shape
    stripes, checkerboard, dots                               a large textured patch

drawn at a random scale, position and rotation on a random background (flat, a gradient or
smooth colour noise), in random colours chosen independently of the class: the class is in
the shape, never in the colour, so the mean colour says nothing and learning has to find
edges and corners. The shapes are large and high-contrast: a small CNN gets from 88% to under
50% validation error in a minute on a 2-core CPU.

`generate(root)` writes root/train/<class>/*.jpg and root/val/<class>/*.jpg; every image
comes from its own seed (seed, split, class, index), so the same arguments give the same
bytes. `ensure_demo_store()` generates the tree once into a cache directory
(ALEXNET_CACHE or ~/.cache/alexnet-triton, under demo/v<VERSION>-seed<S>-<train>x<val>/
images), prepares it with the same code as ImageNet (`alexnet.data.prepare`) into store-<size>
beside it and returns the store's path; later calls reuse both.

    python -m alexnet.demo            # build (or find) the demo store and print its path
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

VERSION = 1  # bump when the images change, so caches of older versions are not reused
CLASSES = ("circle", "square", "triangle", "star", "cross", "ring", "crescent", "stripes", "checkerboard", "dots")
SPLITS = {"train": 0, "val": 1}
SUPERSAMPLE = 2  # masks are drawn at 2x and downsampled: antialiased edges


def _colour(rng) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float64)


def _background(rng, w: int, h: int) -> Image.Image:
    """A flat colour, a linear gradient at a random angle, or smooth colour noise."""
    kind = rng.choice(3, p=[0.4, 0.4, 0.2])
    if kind == 0:
        return Image.new("RGB", (w, h), tuple(int(v) for v in _colour(rng)))
    if kind == 1:  # a linear gradient: exact at 16x16, and bilinear resizing keeps it linear
        a = rng.uniform(0, 2 * math.pi)
        y, x = np.mgrid[0:16, 0:16] / 15.0
        t = x * math.cos(a) * w + y * math.sin(a) * h
        t = ((t - t.min()) / max(t.max() - t.min(), 1e-9))[..., None]
        small = (1 - t) * _colour(rng) + t * _colour(rng)
        return Image.fromarray(np.rint(small).astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR)
    cells = rng.integers(0, 256, (rng.integers(2, 6), rng.integers(2, 6), 3)).astype(np.uint8)
    return Image.fromarray(cells).resize((w, h), Image.Resampling.BICUBIC)


def _polygon(cx, cy, radii, angle, n):
    """Vertices of a polygon with n * len(radii) corners cycling through radii."""
    k = n * len(radii)
    return [(cx + radii[i % len(radii)] * math.cos(angle + 2 * math.pi * i / k),
             cy + radii[i % len(radii)] * math.sin(angle + 2 * math.pi * i / k)) for i in range(k)]


def _texture(cls: str, rng, w: int, h: int) -> np.ndarray:
    """bool (h, w) pattern of a texture class, at a random period and orientation."""
    period = rng.uniform(0.08, 0.16) * min(w, h)
    a = rng.uniform(0, math.pi)
    y, x = np.mgrid[0:h, 0:w] + rng.uniform(0, period, (2, 1, 1))
    u, v = (x * math.cos(a) + y * math.sin(a)) / period, (-x * math.sin(a) + y * math.cos(a)) / period
    if cls == "stripes":
        return (u % 1.0) < 0.5
    if cls == "checkerboard":
        return (np.floor(u) + np.floor(v)) % 2 == 0
    return (u % 1.0 - 0.5) ** 2 + (v % 1.0 - 0.5) ** 2 < rng.uniform(0.2, 0.35) ** 2  # dots


def _mask(cls: str, rng, w: int, h: int) -> Image.Image:
    """Greyscale (L) coverage of the class's object, 255 inside."""
    s = SUPERSAMPLE
    side = min(w, h)
    r = rng.uniform(0.28, 0.4) * side * s  # object radius; the prepared 256x256 crop keeps it
    cx = (w / 2 + rng.uniform(-0.08, 0.08) * side) * s
    cy = (h / 2 + rng.uniform(-0.08, 0.08) * side) * s
    a = rng.uniform(0, 2 * math.pi)
    img = Image.new("L", (w * s, h * s), 0)
    d = ImageDraw.Draw(img)
    if cls in ("circle", "ring", "crescent"):
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        if cls == "ring":
            q = r * rng.uniform(0.45, 0.65)
            d.ellipse([cx - q, cy - q, cx + q, cy + q], fill=0)
        elif cls == "crescent":
            off, q = r * rng.uniform(0.35, 0.55), r * rng.uniform(0.8, 0.95)
            ox, oy = cx + off * math.cos(a), cy + off * math.sin(a)
            d.ellipse([ox - q, oy - q, ox + q, oy + q], fill=0)
    elif cls == "square":
        d.polygon(_polygon(cx, cy, [r], a, 4), fill=255)
    elif cls == "triangle":
        d.polygon(_polygon(cx, cy, [r * 1.15], a, 3), fill=255)
    elif cls == "star":
        d.polygon(_polygon(cx, cy, [r * 1.1, r * rng.uniform(0.4, 0.5)], a, 5), fill=255)
    elif cls == "cross":
        t = r * rng.uniform(0.28, 0.38)
        for arm in (0.0, math.pi / 2):
            c, si = math.cos(a + arm), math.sin(a + arm)
            d.polygon([(cx + x * c - y * si, cy + x * si + y * c) for x, y in
                       ((-r * 1.1, -t), (r * 1.1, -t), (r * 1.1, t), (-r * 1.1, t))], fill=255)
    else:  # a texture inside a large disc or rotated square patch
        if rng.integers(2):
            d.ellipse([cx - 1.3 * r, cy - 1.3 * r, cx + 1.3 * r, cy + 1.3 * r], fill=255)
        else:
            d.polygon(_polygon(cx, cy, [1.4 * r], a, 4), fill=255)
        region = np.asarray(img.resize((w, h), Image.Resampling.BOX))
        return Image.fromarray(region * _texture(cls, rng, w, h).astype(np.uint8), "L")
    return img.resize((w, h), Image.Resampling.BOX)


def draw_image(cls: str, rng) -> Image.Image:
    """One demo image of class `cls` from the numpy Generator `rng`."""
    w, h = (int(v) for v in rng.integers(180, 401, 2))
    bg = _background(rng, w, h)
    bg_mean = np.asarray(bg.resize((8, 8), Image.Resampling.BOX), np.float64).mean(axis=(0, 1))
    fg = _colour(rng)
    while np.linalg.norm(fg - bg_mean) < 120:  # visible against the background
        fg = _colour(rng)
    img = Image.composite(Image.new("RGB", (w, h), tuple(int(v) for v in fg)), bg, _mask(cls, rng, w, h))
    noise = rng.normal(0.0, rng.uniform(2, 6), (h, w, 1)).astype(np.float32)
    return Image.fromarray(np.clip(np.asarray(img, np.float32) + noise, 0, 255).round().astype(np.uint8), "RGB")


def generate(root, *, seed: int = 0, train_per_class: int = 80, val_per_class: int = 20) -> Path:
    """Write the demo tree at `root` (atomically: root.partial, then renamed); returns root."""
    root = Path(root)
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c, cls in enumerate(CLASSES):
            folder = tmp / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                rng = np.random.default_rng([seed, SPLITS[split], c, i])
                quality = int(rng.integers(75, 96))
                draw_image(cls, rng).save(folder / f"{cls}_{i:04d}.jpg", "JPEG", quality=quality)
    os.rename(tmp, root)
    return root


def default_cache() -> Path:
    return Path(os.environ.get("ALEXNET_CACHE") or Path.home() / ".cache" / "alexnet-triton")


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive lock, so that processes started together (torchrun) build the demo once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            import fcntl
            fcntl.flock(f, fcntl.LOCK_EX)
        except ImportError:  # no fcntl (Windows): a single process is assumed
            pass
        yield


def ensure_demo_store(cache_dir=None, *, seed: int = 0, train_per_class: int = 80, val_per_class: int = 20,
                      image_size: int = 256, workers: int | None = None, progress: bool = False, log=print) -> Path:
    """Path of the prepared demo store (images prepared at image_size, the paper's 256 by
    default), generating the images and preparing them on first use."""
    from alexnet.data.prepare import prepare
    from alexnet.data.store import is_store

    base = Path(cache_dir) if cache_dir is not None else default_cache()
    folder = base / "demo" / f"v{VERSION}-seed{seed}-{train_per_class}x{val_per_class}"
    store = folder / f"store-{image_size}"
    if is_store(store):
        return store
    with _lock(base / "demo" / ".lock"):
        if is_store(store):  # built by another process while we waited
            return store
        images = folder / "images"
        if not (images / "val").is_dir():
            log(f"generating the demo dataset in {images}")
            generate(images, seed=seed, train_per_class=train_per_class, val_per_class=val_per_class)
        return prepare(images, store, workers=workers, image_size=image_size, progress=progress, log=log)

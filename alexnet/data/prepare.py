"""Prepare an ImageNet-style folder tree as a store of 256x256 images: `python -m alexnet.prepare SRC OUT`.

    python -m alexnet.prepare /data/imagenet /data/imagenet-256
    python -m alexnet.prepare /data/ilsvrc /data/imagenet-256 \\
        --val-labels ILSVRC2012_validation_ground_truth.txt --class-index ilsvrc2012_wnids.txt

Every image becomes the paper's input (section 2): RGB, shorter side resized to 256, the
central 256x256 patch, stored as uint8 (the layouts SRC may have are in alexnet/data/sources.py,
the store's files in alexnet/data/store.py). Over the training split it also computes the mean
image and the PCA of the RGB pixel values (section 4.1).

Decoding runs in `--workers` processes (default: every core this process may use); each
writes its rows straight into the memory-mapped output and keeps exact integer sums for the
statistics, merged at the end. A file that cannot be read (corrupt, truncated, not an image)
is skipped and listed with the reason in OUT/report.json; the rows of skipped files are
filled with the split's last rows, so row order is sorted file order apart from those moves.

OUT is built in OUT.partial and renamed into place when complete. Running again over a
complete store of the same SRC and image size does nothing (or rebuilds it with --force); a
store of another SRC or size, and an OUT that exists, is not empty and is not a store, are
refused. While it builds, prepare holds an flock on OUT's parent folder: a second prepare
there is refused instead of deleting the first one's OUT.partial.

Workers die with prepare (Linux: PR_SET_PDEATHSIG; elsewhere they notice their parent is
gone), so a killed prepare leaves no orphan decoding forever. The images files are
allocated in full up front (posix_fallocate): a disk too small fails at once with "disk
full", not as a SIGBUS in a worker hours later.
"""
from __future__ import annotations

import errno
import os
import queue
import shutil
import signal
import sys
import time
import traceback
import unicodedata
from pathlib import Path

import numpy as np
from tqdm import tqdm

from alexnet.base.paths import within
from alexnet.data.sources import display, load_image, scan_source
from alexnet.data.store import PixelStats, Store, StoreWriter, is_store, refuse_unowned

CHUNK = 64  # images per task: small enough to balance the load, large enough to amortise messages


class PrepareError(RuntimeError):
    pass


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class _Worker:
    """Decodes chunks of files into the split memmaps; keeps training-set sums."""

    def __init__(self, src: str, image_paths: dict[str, str], size: int):
        self.src, self.image_paths, self.size = Path(src), image_paths, size
        self.images: dict[str, np.memmap] = {}
        self.stats = PixelStats(size)

    def run(self, task) -> tuple[str, int, list]:
        """task = (split, first row, [file relative to SRC]); returns (split, n, [(row, file, reason)])."""
        split, start, files = task
        if split not in self.images:
            self.images[split] = np.load(self.image_paths[split], mmap_mode="r+")
        out, failed = self.images[split], []
        for row, rel in enumerate(files, start):
            try:
                image = load_image(self.src / rel, self.size)
            except Exception as e:  # any unreadable file is skipped, never fatal
                failed.append((row, rel, f"{type(e).__name__}: {e}"))
                continue
            out[row] = image
            if split == "train":
                self.stats.add(image)
        return split, len(files), failed

    def close(self) -> PixelStats:
        for m in self.images.values():
            m.flush()
        self.images.clear()
        return self.stats


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel kill this process when its parent dies (Linux), and exit now if the
    parent is already gone (it may have died before the call)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(1)


def _worker_main(tasks, results, src, image_paths, size, parent_pid=None):
    if parent_pid is not None:
        die_with_parent(parent_pid)
    worker = _Worker(src, image_paths, size)
    try:
        for task in iter(tasks.get, None):
            results.put(("chunk", worker.run(task)))
        results.put(("stats", worker.close()))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def _run_tasks(tasks: list, src, image_paths: dict, size: int, workers: int, bar) -> tuple[dict, PixelStats]:
    """Run every task; returns ([(row, file, reason)] per split, training-set sums)."""
    failed: dict[str, list] = {}
    stats = PixelStats(size)

    def done(result):
        split, n, fails = result
        failed.setdefault(split, []).extend(fails)
        bar.update(n)
        if fails:
            bar.set_postfix(skipped=sum(len(v) for v in failed.values()))

    if workers <= 1:
        worker = _Worker(src, image_paths, size)
        for task in tasks:
            done(worker.run(task))
        stats += worker.close()
        return failed, stats

    import multiprocessing as mp
    ctx = mp.get_context("spawn")  # no fork of a (possibly multi-threaded) parent
    task_q, result_q = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_worker_main, args=(task_q, result_q, str(src), image_paths, size, os.getpid()),
                         daemon=True) for _ in range(workers)]
    for p in procs:
        p.start()
    try:
        for task in tasks:
            task_q.put(task)
        for _ in procs:
            task_q.put(None)
        finished = 0
        while finished < len(procs):
            try:
                kind, value = result_q.get(timeout=5.0)
            except queue.Empty:
                codes = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if -signal.SIGBUS in codes:
                    raise PrepareError("a worker was killed by SIGBUS writing the images file: the disk is full "
                                       "(or the file was truncated); nothing was written") from None
                if codes:
                    raise PrepareError(f"a worker process died (exit {codes[0]}; out of memory?); "
                                       "nothing was written") from None
                continue
            if kind == "error":
                raise PrepareError(f"a worker failed:\n{value}")
            if kind == "chunk":
                done(value)
            else:
                stats += value
                finished += 1
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
    return failed, stats


def prepare(src, out, *, workers: int | None = None, force: bool = False, val_labels=None, class_index=None,
            image_size: int = 256, progress: bool = True, log=print) -> Path:
    """Build the store for SRC at OUT (see the module docstring); returns OUT."""
    src, out = Path(src), Path(out)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise PrepareError(f"--image-size must be a positive number of pixels, got {image_size!r}")
    if out.is_symlink():  # --force would swap the link, not the store, and leave the target behind
        raise PrepareError(f"OUT {out} is a symbolic link (to {os.path.realpath(out)}): pass the real folder")
    if src.exists() and (within(out, src) or within(src, out)):
        raise PrepareError(f"OUT {out} and SRC {src} overlap (one is, or lies inside, the other): a rebuild of OUT "
                           "would delete source images, or OUT would be scanned as source; choose another OUT")
    refuse_unowned(out)
    for flag, given in (("--val-labels", val_labels), ("--class-index", class_index)):
        if given is not None and not os.path.isfile(given):  # a folder, or a FIFO that would block the read
            what = "no such file" if not os.path.exists(given) else "not a regular file (a folder, FIFO or device)"
            raise PrepareError(f"{flag} {given}: {what}")
    if is_store(out) and not force:
        _check_same_source(Store(out), src, image_size)
        log(f"{out} is already a complete store of {src}; nothing to do (--force rebuilds it)")
        return out
    if out.exists() and not is_store(out) and (not out.is_dir() or any(out.iterdir())):
        raise PrepareError(f"{out} exists and is not a store (no store.json); refusing to write there: "
                           "remove it or choose another OUT")
    out.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(out):
        return _prepare_locked(src, out, workers, val_labels, class_index, image_size, progress, log)


def _check_same_source(store: Store, src: Path, image_size: int) -> None:
    source = store.source
    if source is not None and source != str(src.resolve()):
        raise PrepareError(f"{store.path} is a store of {source}, not of {src.resolve()}: choose another OUT, "
                           "or --force to rebuild it from SRC")
    if store.image_size != image_size:
        raise PrepareError(f"{store.path} holds {store.image_size} px images, not {image_size} px: choose another "
                           "OUT, or --force to rebuild it")


class _build_lock:
    """An exclusive flock on OUT's parent folder while OUT.partial is built."""

    def __init__(self, out: Path):
        self.out = out

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.out.parent, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise PrepareError(f"another alexnet.prepare is building a store in {self.out.parent}; "
                               "wait for it to finish") from None
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # releases the lock


def _reserve(path, what: str) -> None:
    """Allocate a file's blocks now: ENOSPC here, not SIGBUS in a worker's memmap later."""
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDWR)
    try:
        if hasattr(os, "posix_fallocate") and size:
            os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise PrepareError(f"disk full: {what} needs {size / 1e9:.2f} GB at {path}") from None
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without fallocate: go on
            raise
    finally:
        os.close(fd)


def _check_free_space(out: Path, n_images: int, image_size: int) -> None:
    need = n_images * image_size * image_size * 3
    free = shutil.disk_usage(out.parent).free
    if need > free:
        raise PrepareError(f"disk full: {n_images:,} images of {image_size} px need {need / 1e9:.2f} GB, "
                           f"{out.parent} has {free / 1e9:.2f} GB free")


def _prepare_locked(src, out, workers, val_labels, class_index, image_size, progress, log) -> Path:
    from PIL import ImageFile

    if ImageFile.LOAD_TRUNCATED_IMAGES:  # set by other code in this process: truncated files would be stored
        raise PrepareError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process: truncated images would "
                           "be stored as valid; leave it False")
    t0 = time.time()
    classes, splits = scan_source(src, val_labels, class_index)
    if not splits[0].files:
        raise PrepareError(f"{src / 'train'} holds no images")
    if len(splits) < 2 or not splits[1].files:
        raise PrepareError(f"{src} has no validation images (SRC/val/<class>/<images>, or a flat SRC/val with "
                           "--val-labels): training validates after every epoch")
    _check_free_space(out, sum(len(s.files) for s in splits), image_size)
    writer = StoreWriter(out, image_size, source=str(src.resolve()))
    try:
        image_paths, tasks = {}, []
        for s in splits:
            writer.create_images(s.name, len(s.files))
            image_paths[s.name] = str(writer.images_path(s.name))
            _reserve(image_paths[s.name], f"the {s.name} images")
            for start in range(0, len(s.files), CHUNK):
                tasks.append((s.name, start, s.files[start:start + CHUNK]))
        workers = max(1, min(workers or default_workers(), len(tasks)))
        total = sum(len(s.files) for s in splits)
        with tqdm(total=total, unit="img", desc=f"preparing {src}", disable=not progress, smoothing=0.05) as bar:
            failed, stats = _run_tasks(tasks, src, image_paths, image_size, workers, bar)

        report = {"source": str(src.resolve()), "image_size": image_size, "num_classes": len(classes),
                  "workers": workers, "splits": {}}
        for s in splits:
            skipped = sorted(failed.get(s.name, []))
            labels, files = _compact(np.load(image_paths[s.name], mmap_mode="r+"), s, skipped)
            writer.write_split(s.name, labels, files)
            report["splits"][s.name] = {
                "files": len(s.files), "images": len(labels), "skipped": len(skipped), "ignored": len(s.ignored),
                "per_class": np.bincount(labels, minlength=len(classes)).tolist(),
                "skipped_files": [{"file": f, "reason": r} for _, f, r in skipped], "ignored_files": s.ignored}
        if stats.count == 0:
            first = report["splits"]["train"]["skipped_files"][0]
            raise PrepareError(f"no readable image in {src / 'train'}; e.g. {display(first['file'])}: "
                               f"{first['reason']}")
        empty = [c for c, n in zip(classes, report["splits"]["train"]["per_class"]) if n == 0]
        if empty:
            raise PrepareError(f"no readable training image in class(es) {', '.join(empty[:5])}: "
                               f"see the skipped files in the log")
        if "val" in report["splits"] and report["splits"]["val"]["images"] == 0:
            raise PrepareError(f"no readable image in {src / 'val'}: training validates after every epoch")
        report["seconds"] = round(time.time() - t0, 1)
        writer.finish(classes, stats.mean_image(), stats.pca(), report)
    except OSError as err:
        writer.abort()
        if err.errno == errno.ENOSPC:
            raise PrepareError(f"disk full while writing {out}.partial ({err}); nothing was written") from None
        raise
    except BaseException:
        writer.abort()
        raise
    for name, v in report["splits"].items():
        for s in v["skipped_files"][:5]:
            log(f"skipped {display(s['file'])}: {s['reason']}")
        if v["skipped"] > 5:
            log(f"... and {v['skipped'] - 5} more in {name}")
    for warning in _name_warnings(classes, splits):
        log(warning)
    summary = ", ".join(f"{k} {v['images']:,} images ({v['skipped']} skipped)" for k, v in report["splits"].items())
    log(f"wrote {out}: {len(classes)} classes, {summary} in {report['seconds']:.0f} s; report: {out / 'report.json'}")
    return out


def _name_warnings(classes: list[str], splits) -> list[str]:
    """What the summary must say beyond report.json: paths reached twice through links (each
    file was stored once, under its first path) and class names that differ only in Unicode
    normalisation (two classes that print alike: NFC and NFD forms of one name)."""
    out = []
    for s in splits:
        twice = [f for f in s.ignored if f.endswith("(already seen by another path (a link loop or duplicate link))")]
        if twice:
            out.append(f"note: {len(twice)} path(s) in {s.name} reached a folder or file a second time through links "
                       f"(each taken once), e.g. {display(twice[0].split(' (')[0])}; see report.json")
    forms: dict[str, list[str]] = {}
    for c in classes:
        forms.setdefault(unicodedata.normalize("NFC", c), []).append(c)
    for names in forms.values():
        if len(names) > 1:
            out.append(f"note: class names {', '.join(repr(n) for n in names)} differ only in Unicode normalisation "
                       f"(they print alike but are {len(names)} classes); rename one folder if they are one class")
    return out


def _compact(images: np.memmap, split, skipped: list) -> tuple[np.ndarray, list[str]]:
    """Move the last good rows into the rows of skipped files; returns (labels, files) of the
    first len(files) - len(skipped) rows, which then hold every good image."""
    labels, files = np.asarray(split.labels, np.int64), list(split.files)
    n_good = len(files) - len(skipped)
    bad = {row for row, _, _ in skipped}
    holes = [r for r in sorted(bad) if r < n_good]
    movers = [r for r in range(n_good, len(files)) if r not in bad]
    for hole, row in zip(holes, movers):
        images[hole] = images[row]
        labels[hole], files[hole] = labels[row], files[row]
    images.flush()
    return labels[:n_good], files[:n_good]

"""Prepare an ImageNet-style folder tree as a store of 256x256 images: `python -m alexnet.prepare SRC OUT`.

    python -m alexnet.prepare /data/imagenet /data/imagenet-256
    python -m alexnet.prepare /data/ilsvrc /data/imagenet-256 \\
        --val-labels ILSVRC2012_validation_ground_truth.txt --class-index ilsvrc2012_wnids.txt

Every image becomes the paper's input (section 2): RGB, shorter side resized to 256, the
central 256x256 patch, stored as uint8 (the layouts SRC may have are in alexnet/sources.py,
the store's files in alexnet/store.py). Over the training split it also computes the mean
image and the PCA of the RGB pixel values (section 4.1).

Decoding runs in `--workers` processes (default: every core this process may use); each
writes its rows straight into the memory-mapped output and keeps exact integer sums for the
statistics, merged at the end. A file that cannot be read (corrupt, truncated, not an image)
is skipped and listed with the reason in OUT/report.json; the rows of skipped files are
filled with the split's last rows, so row order is sorted file order apart from those moves.

OUT is built in OUT.partial and renamed into place when complete. Running again over a
complete store does nothing (or rebuilds it with --force); an OUT that exists, is not empty
and is not a store is refused.
"""
from __future__ import annotations

import argparse
import os
import queue
import sys
import time
import traceback
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .sources import SourceError, load_image, scan_source
from .store import PixelStats, StoreWriter, is_store

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


def _worker_main(tasks, results, src, image_paths, size):
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
    procs = [ctx.Process(target=_worker_main, args=(task_q, result_q, str(src), image_paths, size), daemon=True)
             for _ in range(workers)]
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
                if any(p.exitcode not in (None, 0) for p in procs):
                    raise PrepareError("a worker process died (out of memory?); nothing was written") from None
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
    if is_store(out) and not force:
        log(f"{out} is already a complete store; nothing to do (--force rebuilds it)")
        return out
    if out.exists() and not is_store(out) and (not out.is_dir() or any(out.iterdir())):
        raise PrepareError(f"{out} exists and is not a store (no store.json); refusing to write there: "
                           "remove it or choose another OUT")
    t0 = time.time()
    classes, splits = scan_source(src, val_labels, class_index)
    if not splits[0].files:
        raise PrepareError(f"{src / 'train'} holds no images")
    writer = StoreWriter(out, image_size)
    try:
        image_paths, tasks = {}, []
        for s in splits:
            writer.create_images(s.name, len(s.files))
            image_paths[s.name] = str(writer.images_path(s.name))
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
            raise PrepareError(f"no readable image in {src / 'train'}; e.g. {first['file']}: {first['reason']}")
        report["seconds"] = round(time.time() - t0, 1)
        writer.finish(classes, stats.mean_image(), stats.pca(), report)
    except BaseException:
        writer.abort()
        raise
    for name, v in report["splits"].items():
        for s in v["skipped_files"][:5]:
            log(f"skipped {s['file']}: {s['reason']}")
        if v["skipped"] > 5:
            log(f"... and {v['skipped'] - 5} more in {name}")
    summary = ", ".join(f"{k} {v['images']:,} images ({v['skipped']} skipped)" for k, v in report["splits"].items())
    log(f"wrote {out}: {len(classes)} classes, {summary} in {report['seconds']:.0f} s; report: {out / 'report.json'}")
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m alexnet.prepare", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Turn an ImageNet-style folder tree into the store AlexNet trains from: every image's\n"
                    "shorter side resized to 256 and its central 256x256 patch kept (paper section 2), as\n"
                    "memory-mappable uint8 arrays, with the training set's mean image and RGB PCA.",
        epilog="SRC layouts:\n"
               "  SRC/train/<class>/<images>   required; class names = sorted folder names\n"
               "  SRC/val/<class>/<images>     or a flat SRC/val/<images> with --val-labels\n"
               "Images: JPEG, PNG (and other Pillow formats), any size, aspect ratio and colour mode.\n"
               "Unreadable files are skipped and listed in OUT/report.json. OUT is written atomically;\n"
               "re-running over a complete OUT does nothing unless --force.")
    p.add_argument("src", metavar="SRC", help="source folder with train/ (and val/)")
    p.add_argument("out", metavar="OUT", help="store directory to create")
    p.add_argument("--workers", type=int, default=None,
                   help=f"decoding processes (default: all usable cores, here {default_workers()})")
    p.add_argument("--val-labels", metavar="FILE",
                   help="labels for a flat val/ folder: lines '<file> <class>' (whitespace or comma separated), "
                        "or one 1-based class index per line in sorted file-name order "
                        "(ILSVRC2012_validation_ground_truth.txt)")
    p.add_argument("--class-index", metavar="FILE",
                   help="class names in index order, one per line, for an index-style --val-labels "
                        "(ILSVRC: the WNIDs in ILSVRC2012_ID order); default: the sorted class names")
    p.add_argument("--image-size", type=int, default=256, help="stored image side (default: 256, the paper's)")
    p.add_argument("--force", action="store_true", help="rebuild OUT even if it is a complete store")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        prepare(args.src, args.out, workers=args.workers, force=args.force, val_labels=args.val_labels,
                class_index=args.class_index, image_size=args.image_size, progress=not args.quiet)
    except (PrepareError, SourceError, FileNotFoundError, FileExistsError) as e:
        print(f"alexnet.prepare: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

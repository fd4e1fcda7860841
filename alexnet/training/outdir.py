"""Checks made before the first step, and the output directory's lock.

A run claims its output directory: it holds an exclusive `fcntl.flock` on `OUT/.lock` for
as long as it trains (released by the kernel when the process dies, so a killed run never
leaves a stale lock), and it refuses a directory that already holds a run (a checkpoint,
metrics.jsonl or verify.jsonl) unless told to continue it (--resume) or to replace it (--overwrite), as git
refuses to clone into a non-empty directory. A user error is one clear line and exit code 2
(`UsageError`), never a traceback after an epoch.
"""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from alexnet.base.errors import UsageError

RUN_FILES = ("checkpoint_last.pt", "checkpoint_best.pt", "metrics.jsonl", "curves.png", "verify.jsonl")
LOCK_NAME = ".lock"


def check_output_dir(out, prog: str = "alexnet.train") -> None:
    """OUT must be a directory we can create or write into."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{prog}: --out {out} is an existing file, not a directory")
    existing = out
    while not existing.exists():  # the nearest ancestor that exists decides whether OUT can be made
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{prog}: --out {out}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{prog}: --out {out}: {existing} is not writable")


def used_run_files(out) -> list[str]:
    out = Path(out)
    return [name for name in RUN_FILES if (out / name).exists()]


def claim_output_dir(out, *, resume: bool, overwrite: bool, prog: str = "alexnet.train"):
    """Lock OUT for this run (returns the open lock file: keep it referenced until the run
    ends) and refuse a used OUT unless resuming or overwriting; --overwrite deletes the
    earlier run's checkpoints, metrics, curves and kernel-check log (nothing else) once the lock is held."""
    check_output_dir(out, prog)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lock = acquire_lock(out / LOCK_NAME, f"{prog}: another process is training into {out} (it holds {out / LOCK_NAME})")
    try:
        used = refuse_used_output_dir(out, resume=resume, overwrite=overwrite, prog=prog)
    except UsageError:
        lock.close()
        raise
    if used and overwrite and not resume:
        for name in used:
            (out / name).unlink(missing_ok=True)
    return lock


def refuse_used_output_dir(out, *, resume: bool, overwrite: bool, prog: str = "alexnet.train") -> list[str]:
    """UsageError if OUT holds a run and neither resume nor overwrite is asked for; returns
    the run's files. (Every rank of a distributed run checks: all stop, none waits.)"""
    used = used_run_files(out)
    if used and not resume and not overwrite:
        raise UsageError(f"{prog}: {out} already holds a run ({', '.join(used)}): continue it with --resume auto, "
                         "start afresh with --overwrite (deletes those files), or choose another --out")
    return used


def check_resume_auto(out, prog: str = "alexnet.train") -> None:
    """--resume auto continues OUT/checkpoint_last.pt, and starts afresh where OUT holds no
    checkpoint (a first epoch killed before its checkpoint). A checkpoint_best.pt without a
    checkpoint_last.pt is neither: starting afresh would rewrite metrics.jsonl and later
    overwrite that best checkpoint, so refuse and say what to pass."""
    out = Path(out)
    if (out / "checkpoint_best.pt").exists() and not (out / "checkpoint_last.pt").exists():
        raise UsageError(f"{prog}: --resume auto: {out} holds checkpoint_best.pt but no checkpoint_last.pt; continue "
                         f"from the best epoch with --resume {out / 'checkpoint_best.pt'}, start afresh with "
                         "--overwrite (deletes it), or choose another --out")


def acquire_lock(path, busy_message: str):
    """An exclusive, non-blocking flock on `path` (created if needed); UsageError if held."""
    try:
        f = open(path, "a+")
    except OSError as err:  # a read-only folder or filesystem: say so before any work is done
        raise UsageError(f"cannot write {path}: {err.strerror}") from None
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        f.close()
        if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise UsageError(busy_message) from None
        raise
    return f

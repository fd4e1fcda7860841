"""Writing files so that a crash never leaves a truncated or half-written one: the one home
of the project's file-writing helpers (checkpoints, metrics.jsonl and its plot use them).

Writes go to a temporary file in the same directory, are flushed and fsync'ed, then renamed
over the destination (rename is atomic on POSIX), and the directory entry is fsync'ed too.
A kill between the two leaves a hidden `.NAME.XXXXXXXX.tmp` file: `remove_stale_temps` deletes
those of the names the caller writes, nothing else (the trainer calls it with its run files
while it holds the output directory's lock: another program's `.x.tmp` beside them stays).
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "remove_stale_temps"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temps(directory: str | os.PathLike, names) -> list[Path]:
    """Delete the temporary files that `atomic_write_bytes` left for the files `names` of
    `directory` when a kill interrupted it (`.NAME.` + mkstemp's 8 characters + `.tmp`), and
    nothing else; call only while no other process writes them. Returns what was removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    ours = re.compile("|".join(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}\.tmp" for name in names))
    removed = []
    for tmp in directory.glob(".*.tmp"):
        if ours.fullmatch(tmp.name) and tmp.is_file() and not tmp.is_symlink():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed

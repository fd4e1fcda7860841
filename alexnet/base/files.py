"""Writing files so that a crash never leaves a truncated or half-written one: the one home
of the project's file-writing helpers (checkpoints, metrics.jsonl and its plot use them).

Writes go to a temporary file in the same directory, are flushed and fsync'ed, then renamed
over the destination (rename is atomic on POSIX), and the directory entry is fsync'ed too.
A kill between the two leaves a hidden `.NAME.*.tmp` file: `remove_stale_temps` deletes
those (the trainer calls it while it holds the output directory's lock).
"""
from __future__ import annotations

import os
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


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of writes that a kill interrupted (`.NAME.*.tmp`); call
    only while no other process writes into `directory`. Returns what was removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for tmp in directory.glob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed

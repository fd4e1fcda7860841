"""Where a command's outputs may go: never onto or inside one of its inputs (a later
`prepare --force` of a store, or a cleanup of a source tree, would then delete the run).

    refuse_overlap("alexnet.train", ("--out", out), [("--data", data)])

raises UsageError (one line, exit code 2) when the output is, or lies inside, an input;
with `both_ways` also when an input lies inside the output (prepare --force deletes OUT).
Paths are compared resolved (symbolic links followed), so a link cannot hide the overlap.
"""
from __future__ import annotations

import os
from pathlib import Path

from alexnet.base.errors import UsageError

__all__ = ["refuse_overlap", "within"]


def within(inner, outer) -> bool:
    """True if `inner` is `outer` or lies inside it (both resolved)."""
    inner, outer = Path(os.path.realpath(inner)), Path(os.path.realpath(outer))
    return inner == outer or outer in inner.parents


def refuse_overlap(prog: str, output: tuple[str, object], inputs, *, both_ways: bool = False) -> None:
    """UsageError if the output (flag, path) is or lies inside any input (flag, path; None
    skipped), or with both_ways an input inside the output."""
    out_flag, out = output
    if out is None:
        return
    for flag, path in inputs:
        if path is None:
            continue
        if within(out, path):
            where = "is" if os.path.realpath(out) == os.path.realpath(path) else "lies inside"
            raise UsageError(f"{prog}: {out_flag} {out} {where} {flag} {path}: outputs never go into an input "
                             f"(a rebuild or cleanup of {path} would delete them); choose another {out_flag}")
        if both_ways and within(path, out):
            raise UsageError(f"{prog}: {flag} {path} lies inside {out_flag} {out}, which this command may replace: "
                             f"choose another {out_flag}")

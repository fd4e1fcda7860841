"""Per-epoch metrics as JSON lines, and PNG plots of the curves redrawn after every epoch.

Every change rewrites metrics.jsonl atomically (a temporary file renamed over it), so a
kill leaves the old or the new file, never half a row. A file torn some other way (copied
mid-write, a full disk under an older version) is still read: an unparseable line is
skipped with a warning, and the next write drops it.
"""
from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

from alexnet.base.files import atomic_write_bytes  # noqa: E402


class MetricsLog:
    """Append-only `metrics.jsonl` (one JSON object per epoch) plus `curves.png`."""

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "metrics.jsonl"
        self.plot_path = self.out_dir / "curves.png"

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        rows = []
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    row = None
                if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
                    warnings.warn(f"{self.path}:{number}: skipped a line that is not a metrics record "
                                  f"(torn write?): {line[:60]!r}", stacklevel=2)
                    continue
                rows.append(row)
        return rows

    def _write(self, rows: list[dict]) -> None:
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in rows).encode())

    def truncate_after(self, epoch: int) -> None:
        """Drop records of epochs after `epoch` (a resumed run rewrites them)."""
        self._write([r for r in self.read() if r["epoch"] <= epoch])

    def append(self, record: dict) -> None:
        """Add the record (atomically: the whole file is rewritten; a few rows per epoch)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._write(self.read() + [record])
        self.plot()

    def plot(self) -> None:
        keys = ("train_loss", "train_top1", "val_top1", "val_top5", "lr")
        rows = [r for r in self.read() if all(isinstance(r.get(k), (int, float)) for k in keys)]
        if not rows:
            return
        epochs = [r["epoch"] for r in rows]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        axes[0].plot(epochs, [r["train_loss"] for r in rows], marker="o")
        axes[0].set(title="training loss", xlabel="epoch", ylabel="cross-entropy")
        for key, label in [("train_top1", "train top-1"), ("val_top1", "val top-1"), ("val_top5", "val top-5")]:
            axes[1].plot(epochs, [100 * r[key] for r in rows], marker="o", label=label)
        if "chance_top1" in rows[-1]:
            axes[1].axhline(100 * rows[-1]["chance_top1"], color="grey", linestyle="--", label="chance top-1")
        axes[1].set(title="error", xlabel="epoch", ylabel="error (%)")
        axes[1].legend()
        axes[2].plot(epochs, [r["lr"] for r in rows], marker="o")
        axes[2].set(title="learning rate", xlabel="epoch", yscale="log")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        plt.close(fig)
        atomic_write_bytes(self.plot_path, buffer.getvalue())

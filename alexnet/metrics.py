"""Per-epoch metrics as JSON lines, and PNG plots of the curves redrawn after every epoch."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

from .checkpoint import atomic_write_bytes  # noqa: E402


class MetricsLog:
    """Append-only `metrics.jsonl` (one JSON object per epoch) plus `curves.png`."""

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "metrics.jsonl"
        self.plot_path = self.out_dir / "curves.png"

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def truncate_after(self, epoch: int) -> None:
        """Drop records of epochs after `epoch` (a resumed run rewrites them)."""
        rows = [r for r in self.read() if r["epoch"] <= epoch]
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in rows).encode())

    def append(self, record: dict) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.plot()

    def plot(self) -> None:
        rows = self.read()
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

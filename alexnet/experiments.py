"""The paper's quantitative claims as commands, on the demo dataset by default:

    python -m alexnet.experiments relu-vs-tanh [--data CIFAR10_DIR|STORE] [--epochs 30]
        Figure 1: a four-layer CNN with ReLUs vs the same with tanh units; training error per
        epoch, the epoch each first reaches 25%, and the ratio (the paper: ReLU 6x faster).
    python -m alexnet.experiments lrn            LRN on vs off        (paper: -1.4% top-1, -1.2% top-5)
    python -m alexnet.experiments overlap-pool   3x3/2 vs 2x2/2 pools (paper: -0.4% top-1, -0.3% top-5)
    python -m alexnet.experiments columns        two columns vs one with half the kernels
                                                                      (paper: -1.7% top-1, -1.2% top-5)

Each ablation trains AlexNet twice with `python -m alexnet.train`'s loop and settings (the
demo's without --data), once per setting, and prints the errors and their difference beside
the paper's. Outputs (metrics, checkpoints, a PNG) go under --out.
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ABLATIONS = {  # name: (flag, value for the paper's setting, value for the ablation, paper's gain top-1, top-5)
    "lrn": ("lrn", True, False, 1.4, 1.2),
    "overlap-pool": ("overlap_pool", True, False, 0.4, 0.3),
    "columns": ("columns", 2, 1, 1.7, 1.2),
}


# ------------------------------------------------------------------ Figure 1: ReLU vs tanh
class FourLayerCNN(nn.Module):
    """Three 5x5 conv layers (32, 32, 64 maps, each followed by 3x3/2 max-pooling) and one
    fully connected layer: a four-layer CNN for 32x32 images like the paper's Figure 1 net."""

    def __init__(self, activation: str, classes: int = 10):
        super().__init__()
        self.act = torch.relu if activation == "relu" else torch.tanh
        self.convs = nn.ModuleList([nn.Conv2d(3, 32, 5, padding=2), nn.Conv2d(32, 32, 5, padding=2),
                                    nn.Conv2d(32, 64, 5, padding=2)])
        self.fc = nn.Linear(64 * 3 * 3, classes)

    def forward(self, x):
        for conv in self.convs:
            x = F.max_pool2d(self.act(conv(x)), 3, 2)  # 32 -> 15 -> 7 -> 3
        return self.fc(x.flatten(1))


def load_small_images(data: str | None, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Training images (N, 3, 32, 32) float in 0..1 and labels: CIFAR-10's python batches if
    `data` holds data_batch_1..5, else a prepared store (the demo's by default) resized to 32x32."""
    if data is not None and (Path(data) / "data_batch_1").exists():
        xs, ys = [], []
        for i in range(1, 6):
            with open(Path(data) / f"data_batch_{i}", "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            xs.append(np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32))
            ys.extend(batch[b"labels"])
        return torch.from_numpy(np.concatenate(xs)).float() / 255, torch.tensor(ys)
    from alexnet.data.demo import ensure_demo_store
    from alexnet.data.store import Store

    store = Store(data if data is not None else ensure_demo_store(image_size=128))
    split = store.split("train")
    images = torch.from_numpy(np.array(split.images)).permute(0, 3, 1, 2).float() / 255
    images = F.interpolate(images, size=(size, size), mode="area")
    return images, torch.from_numpy(split.labels.astype(np.int64))


def relu_vs_tanh(data=None, epochs: int = 30, batch_size: int = 128, lr: dict | None = None, seed: int = 0,
                 out="experiments/relu-vs-tanh", target: float = 0.25) -> dict:
    """Train the four-layer CNN with each activation (SGD, momentum 0.9, no regularisation, as
    the paper's Figure 1) and record the training error of every epoch."""
    lr = lr or {"relu": 0.05, "tanh": 0.05}
    images, labels = load_small_images(data)
    images = images - images.mean(dim=(0, 2, 3), keepdim=True)
    classes = int(labels.max()) + 1
    curves = {}
    for activation in ("relu", "tanh"):
        torch.manual_seed(seed)
        model = FourLayerCNN(activation, classes)
        opt = torch.optim.SGD(model.parameters(), lr=lr[activation], momentum=0.9)
        errors = []
        for _ in range(epochs):
            order = torch.randperm(len(labels))
            wrong = 0
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                logits = model(images[idx])
                loss = F.cross_entropy(logits, labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                wrong += int((logits.argmax(1) != labels[idx]).sum())
            errors.append(wrong / len(labels))
        curves[activation] = errors
    reached = {a: next((i + 1 for i, e in enumerate(c) if e <= target), None) for a, c in curves.items()}
    ratio = reached["tanh"] / reached["relu"] if reached["relu"] and reached["tanh"] else None
    result = {"training_error": curves, "epochs_to_25pct": reached, "tanh_over_relu": ratio, "paper_ratio": 6.0,
              "lr": lr, "images": len(labels)}
    _plot_curves(curves, target, Path(out) / "relu_vs_tanh.png")
    _write(result, Path(out) / "relu_vs_tanh.json")
    return result


def _plot_curves(curves: dict, target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for activation, style in (("relu", "-"), ("tanh", "--")):
        ax.plot(range(1, len(curves[activation]) + 1), curves[activation], style, label=activation)
    ax.axhline(target, color="grey", linewidth=0.8)
    ax.set(xlabel="epochs", ylabel="training error rate", title="four-layer CNN: ReLU vs tanh (Figure 1)")
    ax.legend()
    fig.savefig(path)
    plt.close(fig)


def _write(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))


# ------------------------------------------------------------------ ablations
def ablation(name: str, base=None, out="experiments") -> dict:
    """Train with the paper's setting and with the ablation; errors and differences (in
    percentage points, ablation minus paper) beside the paper's reported gains."""
    from alexnet.training.loop import Trainer
    from alexnet.training.recipe import DEMO, TrainConfig

    flag, paper_value, ablated_value, paper_top1, paper_top5 = ABLATIONS[name]
    base = base or TrainConfig(**DEMO)
    runs = {}
    for label, value in (("paper", paper_value), ("ablation", ablated_value)):
        config = replace(base, **{flag: value}, out=str(Path(out) / name / label), resume=None,
                         overwrite=True)  # a rerun replaces the earlier result
        trainer = Trainer(config)
        try:
            summary = trainer.run()
        finally:
            trainer.train_loader.close()
            trainer.val_loader.close()
        runs[label] = {"setting": f"{flag}={value}", "val_top1": summary.get("val_top1"),
                       "val_top5": summary.get("val_top5")}
    diff = {k: 100 * (runs["ablation"][k] - runs["paper"][k]) if runs["paper"][k] is not None else None
            for k in ("val_top1", "val_top5")}
    result = {"ablation": name, "runs": runs, "difference_pct_points": diff,
              "paper_difference_pct_points": {"val_top1": paper_top1, "val_top5": paper_top5}}
    _write(result, Path(out) / name / "result.json")
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m alexnet.experiments", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="experiment", required=True)
    p = sub.add_parser("relu-vs-tanh", help="Figure 1")
    p.add_argument("--data", help="CIFAR-10 python folder (data_batch_1..5) or a prepared store; default: the demo")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr-relu", type=float, default=0.05)
    p.add_argument("--lr-tanh", type=float, default=0.05)
    p.add_argument("--out", default="experiments/relu-vs-tanh")
    for name in ABLATIONS:
        q = sub.add_parser(name, help=f"ablation: {name}")
        q.add_argument("--data", help="a prepared store or ImageNet-style folder; default: the demo")
        q.add_argument("--epochs", type=int, help="epochs per run (default: the demo's or the paper's)")
        q.add_argument("--out", default="experiments")
    args = ap.parse_args(argv)
    from alexnet.base.errors import UsageError
    from alexnet.base.paths import refuse_overlap

    try:
        refuse_overlap("alexnet.experiments", ("--out", args.out), [("--data", args.data)])
    except UsageError as err:
        ap.error(err.message.split(": ", 1)[1])
    if args.experiment == "relu-vs-tanh":
        result = relu_vs_tanh(args.data, args.epochs, lr={"relu": args.lr_relu, "tanh": args.lr_tanh}, out=args.out)
        print(f"epochs to {25}% training error: relu {result['epochs_to_25pct']['relu']}, "
              f"tanh {result['epochs_to_25pct']['tanh']}; tanh/relu = {result['tanh_over_relu']} "
              f"(the paper: 6); curves in {args.out}")
        return 0
    from alexnet.training.recipe import DEMO, TrainConfig

    base = TrainConfig(data=args.data) if args.data else TrainConfig(**DEMO)
    if args.epochs:
        base = replace(base, epochs=args.epochs)
    result = ablation(args.experiment, base, args.out)
    d, p = result["difference_pct_points"], result["paper_difference_pct_points"]
    print(f"{args.experiment}: removing it changes val top-1 by {d['val_top1']:+.1f} points and top-5 by "
          f"{d['val_top5']:+.1f} (the paper: +{p['val_top1']} / +{p['val_top5']}); details in "
          f"{Path(args.out) / args.experiment / 'result.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

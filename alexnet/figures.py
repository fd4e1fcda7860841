"""The paper's qualitative figures (section 6.1) from a checkpoint, as PNG files:

    python -m alexnet.figures filters CHECKPOINT [--out filters.png]
        Figure 3: the 96 conv1 kernels, the 48 of each column (GPU) in a block of its own,
        and per column how colour-specific its kernels are.
    python -m alexnet.figures predictions CHECKPOINT [--data STORE] [--count 8]
        Figure 4 (left): validation images with their top-5 labels as bars, the true one marked.
    python -m alexnet.figures neighbours CHECKPOINT [--data STORE] [--count 5]
        Figure 4 (right): validation images and the six training images whose fc7 features
        (4096-d, the last hidden layer) are nearest in Euclidean distance.

Without --data, predictions and neighbours use the store the run trained on (as
`alexnet.training.evaluation` does: the one at --data, OUT/store for a folder, the demo's cache).
Every figure is titled and labelled: which block is which GPU column, which image is the
query, the class of every image.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from alexnet.data.store import Store
from alexnet.training.checkpoint import matching_store, model_from_checkpoint
from alexnet.training.evaluation import crop_views, predict

KERNEL_SCALE, GAP, BLOCK_GAP = 4, 2, 12  # the filters grid: pixels per weight, between kernels, between columns
TITLE_H, LABEL_H = 30, 14  # PIL figures: the title band on top, a text line under an image


def _font():
    from PIL import ImageFont

    return ImageFont.load_default()


def with_title(image: Image.Image, title: str, labels: dict[int, str] | None = None) -> Image.Image:
    """`image` below a white band of TITLE_H px holding `title` and, at x positions, `labels`."""
    out = Image.new("RGB", (image.width, image.height + TITLE_H), "white")
    out.paste(image, (0, TITLE_H))
    draw = ImageDraw.Draw(out)
    draw.text((GAP + 2, 2), title, fill="black", font=_font())
    for x, text in (labels or {}).items():
        draw.text((x, TITLE_H - LABEL_H), text, fill="black", font=_font())
    return out


# ------------------------------------------------------------------ Figure 3
def colour_specificity(weight: torch.Tensor) -> torch.Tensor:
    """Per kernel (K, 3, h, w): the share of its energy (around its mean) that is not grey,
    i.e. that differs between the R, G and B planes. 0: the same pattern in every colour
    (colour-agnostic); near 1: patterns that exist in one colour only."""
    w = weight.double()
    centred = w - w.mean(dim=(1, 2, 3), keepdim=True)
    colour = w - w.mean(dim=1, keepdim=True)  # what remains after removing the grey (channel-mean) part
    return colour.square().sum(dim=(1, 2, 3)) / centred.square().sum(dim=(1, 2, 3)).clamp_min(1e-30)


def stretch(kernel: np.ndarray) -> np.ndarray:
    """(3, h, w) weights to (h, w, 3) uint8, each kernel stretched the same way: its own
    largest |weight| maps to the ends of 0..255, zero to mid-grey."""
    scale = np.abs(kernel).max() or 1.0
    return np.clip(127.5 + 127.5 * kernel / scale, 0, 255).round().astype(np.uint8).transpose(1, 2, 0)


def filters_image(weight: torch.Tensor, columns: int = 2, per_row: int = 8) -> Image.Image:
    """The conv1 kernels (K, 3, h, w) as a grid: one block per column, side by side."""
    k, _, h, w = weight.shape
    per_column = k // columns
    rows = -(-per_column // per_row)
    cell_h, cell_w = h * KERNEL_SCALE + GAP, w * KERNEL_SCALE + GAP
    block_w = per_row * cell_w
    canvas = np.full((rows * cell_h + GAP, columns * block_w + (columns - 1) * BLOCK_GAP + GAP, 3), 255, np.uint8)
    weights = weight.detach().float().cpu().numpy()
    for i in range(k):
        col, j = divmod(i, per_column)
        r, c = divmod(j, per_row)
        tile = stretch(weights[i]).repeat(KERNEL_SCALE, 0).repeat(KERNEL_SCALE, 1)
        y, x = GAP + r * cell_h, GAP + col * (block_w + BLOCK_GAP) + c * cell_w
        canvas[y:y + h * KERNEL_SCALE, x:x + w * KERNEL_SCALE] = tile
    return Image.fromarray(canvas)


def filters(checkpoint_path, out) -> dict:
    model, _ = model_from_checkpoint(checkpoint_path, ops="reference", device="cpu")
    weight = model.conv1.weight.detach()
    columns = model.config.columns
    spec = colour_specificity(weight)
    per_column = {f"column {c + 1}": float(part.mean()) for c, part in enumerate(spec.chunk(columns))}
    block_w = 8 * (weight.shape[3] * KERNEL_SCALE + GAP)
    labels = {GAP + c * (block_w + BLOCK_GAP): f"column {c + 1} (GPU {c + 1}): colour-specificity "
              f"{per_column[f'column {c + 1}']:.2f}" for c in range(columns)}
    k, _, h, w = weight.shape
    title = f"conv1: the {k} kernels ({h}x{w}x3) of {Path(checkpoint_path).name}, one block per GPU column"
    with_title(filters_image(weight, columns), title, labels).save(out)
    return {"png": str(out), "colour_specificity": per_column}


# ------------------------------------------------------------------ Figure 4 (left)
@torch.no_grad()
def top5(model, store: Store, indices, device, views: str = "centre") -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, classes) of the 5 best classes of validation images `indices`."""
    split = store.split("val")
    images = torch.from_numpy(np.array(split.images[np.sort(indices)])).to(device)
    mean = torch.from_numpy(store.mean).to(device)
    probs = predict(model, images, mean, views, model.config.image_size, ops=model.config.ops)
    return probs.topk(min(5, probs.shape[1]), dim=1)


def _centre(image: np.ndarray, size: int) -> np.ndarray:
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[top:top + size, left:left + size]


def predictions(checkpoint_path, data, out, count: int = 8, seed: int = 0, device=None) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, ckpt = model_from_checkpoint(checkpoint_path, device=device)
    model.eval()
    store = matching_store(ckpt, data)
    split = store.split("val")
    indices = np.sort(np.random.default_rng(seed).choice(len(split), min(count, len(split)), replace=False))
    if len(indices) == 0:
        raise SystemExit(f"alexnet.figures: {store.path} has no validation images")
    values, classes = top5(model, store, indices, device)
    fig, axes = plt.subplots(2, len(indices), figsize=(2.2 * len(indices), 4.4), dpi=100,
                             gridspec_kw={"height_ratios": [1.2, 1]})
    axes = np.asarray(axes).reshape(2, -1)
    correct = 0
    for j, i in enumerate(indices):
        label = int(split.labels[i])
        axes[0, j].imshow(_centre(split.images[i], model.config.image_size))
        axes[0, j].set_title(f"true: {store.classes[label]}", fontsize=8)
        axes[0, j].axis("off")
        names = [store.classes[c] for c in classes[j].tolist()]
        hit = [c == label for c in classes[j].tolist()]
        correct += hit[0]
        axes[1, j].barh(range(len(names))[::-1], values[j].cpu().numpy(),
                        color=["tab:red" if h else "tab:blue" for h in hit])
        axes[1, j].set_yticks(range(len(names))[::-1], [n[:14] for n in names], fontsize=6)
        axes[1, j].set_xlim(0, 1)
        axes[1, j].tick_params(axis="x", labelsize=6)
        axes[1, j].set_xlabel("probability", fontsize=6)
    fig.suptitle(f"top-5 predictions of {Path(checkpoint_path).name} on validation images, centre crop "
                 f"(bar of the true class in red): {correct}/{len(indices)} right", fontsize=9)
    fig.savefig(out)
    plt.close(fig)
    return {"png": str(out), "top1_correct": f"{correct}/{len(indices)}"}


# ------------------------------------------------------------------ Figure 4 (right)
@torch.no_grad()
def fc7_features(model, store: Store, split_name: str, device, batch_size: int = 128) -> torch.Tensor:
    """fc7 activations (N, 4096) of a split's centre crops, in eval mode, on `device`."""
    split = store.split(split_name)
    mean = torch.from_numpy(store.mean).to(device)
    size = model.config.image_size
    model.eval()
    out = []
    for start in range(0, len(split), batch_size):
        images = torch.from_numpy(np.array(split.images[start:start + batch_size])).to(device)
        (x,) = crop_views(images, mean, "centre", size, ops=model.config.ops)
        out.append(model.features(x).float())
    return torch.cat(out)


def nearest_neighbours(queries: torch.Tensor, database: torch.Tensor, k: int = 6, chunk: int = 65536):
    """(distances, indices), each (Q, k), of the k rows of `database` (N, D) nearest to each
    query (Q, D) in Euclidean distance, ascending. Batched on the tensors' device: the
    database goes through in chunks of `chunk` rows (|q|^2 - 2 q.x + |x|^2 as one matmul),
    keeping a running top-k, so memory stays bounded for N in the millions."""
    k = min(k, database.shape[0])
    q = queries.double()
    q_sq = q.square().sum(1, keepdim=True)
    best_d = torch.full((q.shape[0], 0), 0.0, dtype=torch.float64, device=q.device)
    best_i = torch.zeros((q.shape[0], 0), dtype=torch.int64, device=q.device)
    for start in range(0, database.shape[0], chunk):
        x = database[start:start + chunk].double()
        d2 = (q_sq - 2 * q @ x.T + x.square().sum(1)[None, :]).clamp_min(0)
        idx = torch.arange(start, start + x.shape[0], device=q.device).expand(q.shape[0], -1)
        candidates = torch.cat([best_d, d2], 1)
        best_d, order = candidates.topk(min(k, candidates.shape[1]), dim=1, largest=False)
        best_i = torch.cat([best_i, idx], 1).gather(1, order)
    return best_d.sqrt(), best_i


def neighbours(checkpoint_path, data, out, count: int = 5, seed: int = 0, device=None) -> dict:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, ckpt = model_from_checkpoint(checkpoint_path, device=device)
    store = matching_store(ckpt, data)
    val, train = store.split("val"), store.split("train")
    queries = np.sort(np.random.default_rng(seed).choice(len(val), min(count, len(val)), replace=False))
    q = fc7_features(model, store, "val", device)[torch.from_numpy(queries).to(device)]
    _, nearest = nearest_neighbours(q, fc7_features(model, store, "train", device), k=6)
    size, pad = 96, 4
    k = nearest.shape[1]
    row_h = size + LABEL_H + pad  # an image and its class name
    canvas = Image.new("RGB", ((k + 1) * (size + pad) + 2 * pad, len(queries) * row_h + pad), "white")
    draw = ImageDraw.Draw(canvas)
    same = 0
    for row, (qi, nn_row) in enumerate(zip(queries, nearest.cpu().numpy())):
        y = pad + row * row_h
        images = [val.images[qi]] + [train.images[j] for j in nn_row]
        labels = [int(val.labels[qi])] + [int(train.labels[j]) for j in nn_row]
        for col, (image, label) in enumerate(zip(images, labels)):
            x = pad + col * (size + pad) + (pad if col else 0)
            canvas.paste(Image.fromarray(_centre(image, model.config.image_size)).resize((size, size)), (x, y))
            mark = "" if col == 0 else (" =" if label == labels[0] else " x")  # same class as the query or not
            draw.text((x, y + size + 1), (store.classes[label] + mark)[:16], fill="black", font=_font())
        same += sum(int(train.labels[j]) == int(val.labels[qi]) for j in nn_row)
        draw.line([(size + 1.5 * pad, y), (size + 1.5 * pad, y + size)], fill="black", width=1)
    title = (f"fc7 nearest neighbours ({Path(checkpoint_path).name}): {same}/{len(queries) * k} of the same class "
             f"(= same, x other)")
    header = {pad: "query (val)", size + 3 * pad: f"its {k} nearest training images, nearest first"}
    with_title(canvas, title, header).save(out)
    return {"png": str(out), "neighbours_of_the_same_class": f"{same}/{len(queries) * k}"}


def run_store(checkpoint_path, data=None) -> Path:
    """The store to draw from: `data` if given, else the one the checkpoint's run trained on
    (its --data store, OUT/store where it prepared a folder, or the demo's), as alexnet.training.evaluation."""
    from alexnet.data.store import is_store
    from alexnet.training.checkpoint import load

    if data is None:
        saved = load(checkpoint_path).get("config", {})
        data = saved.get("data")
        if data is not None and not is_store(data):
            data = Path(saved["out"]) / "store"  # training prepared the folder it was given into OUT/store
        if data is None:
            from alexnet.data.demo import ensure_demo_store
            from alexnet.training.recipe import DEMO_STORE_SIZE

            data = ensure_demo_store(image_size=DEMO_STORE_SIZE)
    if not is_store(data):
        raise ValueError(f"{data} is not a prepared store (make one with `python -m alexnet.prepare`, or pass --data)")
    return Path(data)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m alexnet.figures", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = ap.add_subparsers(dest="figure", required=True)
    for name, needs_data in (("filters", False), ("predictions", True), ("neighbours", True)):
        p = sub.add_parser(name)
        p.add_argument("checkpoint", help="a checkpoint written by alexnet.train (any layout)")
        p.add_argument("--out", default=f"{name}.png", help="the PNG to write")
        if needs_data:
            p.add_argument("--data", default=None, help="a prepared store with the checkpoint's classes (default: "
                                                        "the one the run trained on)")
            p.add_argument("--count", type=int, default=8 if name == "predictions" else 5,
                           help="validation images to show")
            p.add_argument("--seed", type=int, default=0, help="which validation images (random, seeded)")
    args = ap.parse_args(argv)
    if not Path(args.checkpoint).is_file():
        ap.error(f"no checkpoint at {args.checkpoint}")
    from alexnet.base.errors import UsageError
    from alexnet.base.paths import refuse_overlap

    try:
        refuse_overlap("alexnet.figures", ("--out", args.out), [("--data", getattr(args, "data", None))])
    except UsageError as err:
        ap.error(err.message.split(": ", 1)[1])
    if Path(args.out).is_dir():
        ap.error(f"--out {args.out} is a folder: give the PNG file to write (e.g. {Path(args.out) / 'figure.png'})")
    try:
        if args.figure == "filters":
            result = filters(args.checkpoint, args.out)
        else:
            data = run_store(args.checkpoint, args.data)
            draw = predictions if args.figure == "predictions" else neighbours
            result = draw(args.checkpoint, data, args.out, args.count, args.seed)
    except (ValueError, FileNotFoundError) as err:  # a store that does not fit the checkpoint, a bad file
        ap.error(str(err))
    except OSError as err:  # --out under a file, a read-only folder, ...
        ap.error(f"cannot write {args.out}: {err.strerror or err}")
    for key, value in result.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Evaluation views and error rates (paper sections 4.1 and 6).

    counts = evaluate(model, EvalLoader(store, 128, "cuda"), views="ten")
    # with several data-parallel replicas: torch.distributed.all_reduce(counts) first
    top1, top5 = error_rates(counts)

Views: "centre" is the central 224x224 patch of each 256x256 image; "ten" is the paper's
test-time scheme, the four corner patches and the centre patch and their horizontal
reflections, with the network's softmax outputs averaged over the ten. Each view goes
through the same augmentation as training (mean subtracted, no lighting shift), the one of
the model's config.ops (`ops`; the rule: alexnet/network/layers.py load_ops).

    python -m alexnet.evaluate runs/alexnet/checkpoint_best.pt --views ten   # the paper's test
"""
from __future__ import annotations

import torch

from alexnet.data.augment import crop_batch
from alexnet.network.config import ConvSpec

VIEWS = ("centre", "ten")


def view_offsets(views: str, image_size: tuple[int, int], size: int = 224) -> list[tuple[int, int, bool]]:
    """(top, left, flip) of each view of an image of image_size = (H, W)."""
    height, width = image_size
    bottom, right = height - size, width - size
    centre = (bottom // 2, right // 2, False)
    if views == "centre":
        return [centre]
    if views == "ten":
        five = [(0, 0, False), (0, right, False), (bottom, 0, False), (bottom, right, False), centre]
        return five + [(top, left, True) for top, left, _ in five]
    raise ValueError(f"views must be one of {VIEWS}, got {views!r}")


def crop_views(images: torch.Tensor, mean: torch.Tensor, views: str = "centre", size: int = 224,
               dtype: torch.dtype = torch.float32, channels_last: bool = False, ops: str = "auto",
               conv1: ConvSpec | None = None):
    """Yield each view of uint8 images (B, H, W, 3) as a (B, 3, size, size) network input,
    cropped by `ops`'s augmentation (crop_batch; with the model's `conv1`, written into its
    padded input buffer where that applies)."""
    batch, height, width, _ = images.shape
    shift = torch.zeros(batch, 3, device=images.device)
    for top, left, flip in view_offsets(views, (height, width), size):
        offsets = torch.tensor([top, left], dtype=torch.int32, device=images.device).expand(batch, 2)
        flips = torch.full((batch,), flip, dtype=torch.bool, device=images.device)
        yield crop_batch(images, offsets, flips, shift, mean, size, dtype, channels_last, ops, conv1)


@torch.no_grad()
def predict(model, images: torch.Tensor, mean: torch.Tensor, views: str = "centre", size: int = 224,
            dtype: torch.dtype = torch.float32, channels_last: bool = False, ops: str = "auto") -> torch.Tensor:
    """Class probabilities (B, classes), float32: the softmax of the model's logits, averaged
    over the views (cropped by `ops`'s augmentation: pass the model's config.ops; written into
    conv1's padded input where that applies, conv1 taken from the model's config)."""
    probs = None
    n = 0
    config = getattr(model, "config", None)
    conv1 = config.convs[0] if config is not None and hasattr(config, "convs") else None
    for x in crop_views(images, mean, views, size, dtype, channels_last, ops, conv1):
        p = torch.softmax(model(x).float(), dim=1)
        probs = p if probs is None else probs + p
        n += 1
    return probs / n


def topk_wrong(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> torch.Tensor:
    """For each k, how many rows of scores (B, classes) do not have the label among their
    k highest scores (float64, on scores' device). k larger than the classes counts as all."""
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices  # (B, kmax)
    hit = top == labels[:, None]
    return torch.stack([(~hit[:, :k].any(dim=1)).sum() for k in ks]).double()


@torch.no_grad()
def evaluate(model, loader, views: str = "centre") -> torch.Tensor:
    """[samples, top-1 wrong, top-5 wrong] over the loader (float64 on its device): sum it
    over replicas (all_reduce), then `error_rates`. The model is put in eval mode and its
    mode restored afterwards."""
    was_training = model.training
    model.eval()
    counts = torch.zeros(3, dtype=torch.float64, device=loader.device)
    try:
        for images, labels in loader:
            probs = predict(model, images, loader.mean, views, loader.crop_size, loader.dtype, loader.channels_last,
                            loader.ops)
            counts[0] += len(labels)
            counts[1:] += topk_wrong(probs, labels, (1, 5))
    finally:
        model.train(was_training)
    return counts


def error_rates(counts: torch.Tensor) -> tuple[float, float]:
    """(top-1 error, top-5 error) as fractions, from `evaluate`'s counts."""
    n, top1, top5 = counts.tolist()
    if n == 0:
        raise ValueError("no samples were evaluated")
    return top1 / n, top5 / n

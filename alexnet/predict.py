"""Classify image files with a trained checkpoint: the top-5 classes and their probabilities.

    python -m alexnet.predict runs/alexnet/checkpoint_best.pt photo.jpg more/*.png
    python -m alexnet.predict CHECKPOINT IMAGE... --views ten --top 3

Each image goes through what training's data went through: its shorter side rescaled to the
side the store was prepared at, the central square kept (`alexnet.data.prepare`), the training
set's mean image subtracted, and the network's input crop taken from the centre (or the
paper's ten views, softmax averaged). Everything needed (class names, input size, store side,
mean image) is in checkpoints written by `alexnet.train`; a checkpoint from before they
carried it needs `--data STORE` (the store it was trained on) instead.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from alexnet.training.evaluation import VIEWS, predict

__all__ = ["Classifier", "main"]


class Classifier:
    """A checkpoint's model with what it needs to classify image files."""

    def __init__(self, checkpoint_path, data=None, ops: str = "auto", device=None):
        from alexnet.training.checkpoint import model_from_checkpoint

        self.model, ckpt = model_from_checkpoint(checkpoint_path, ops=ops, device=device)
        self.device = next(self.model.parameters()).device
        self.image_size = int(self.model.config.image_size)
        if "mean_image" in ckpt:  # the checkpoint's own metadata wins; a --data store must be the same one
            if data is not None:
                from alexnet.training.checkpoint import matching_store

                matching_store(ckpt, data)
            classes, self.store_size, mean = list(ckpt["classes"]), int(ckpt["store_image_size"]), ckpt["mean_image"]
        elif data is not None:  # an old checkpoint: the store supplies the mean image, its classes checked
            from alexnet.training.checkpoint import matching_store

            store = matching_store(ckpt, data)
            classes, self.store_size, mean = list(store.classes), store.image_size, torch.from_numpy(store.mean)
        else:
            raise ValueError(f"{checkpoint_path} carries no mean image (written before alexnet.train stored one): "
                             "pass --data STORE, the store it was trained on")
        if len(classes) != self.model.config.num_classes:
            raise ValueError(f"{len(classes)} class names for a model with {self.model.config.num_classes} outputs")
        self.classes = classes
        self.mean = mean.float().to(self.device)

    def load(self, path) -> np.ndarray:
        """uint8 (S, S, 3), prepared as `alexnet.data.prepare` prepares a store's images."""
        from alexnet.data.sources import load_image

        return load_image(path, self.store_size)

    @torch.no_grad()
    def probabilities(self, images: np.ndarray, views: str = "centre") -> torch.Tensor:
        """(B, classes) softmax probabilities of uint8 images (B, S, S, 3), averaged over `views`."""
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        return predict(self.model, x, self.mean, views, self.image_size, ops=self.model.config.ops).cpu()

    def top(self, images: np.ndarray, views: str = "centre", k: int = 5) -> list[list[tuple[str, float]]]:
        """Per image, the k most probable (class, probability), most probable first."""
        probs = self.probabilities(images, views)
        values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
        return [[(self.classes[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist())]
                for vs, ix in zip(values, indices)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m alexnet.predict", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("checkpoint", help="checkpoint_best.pt or checkpoint_last.pt written by alexnet.train")
    ap.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)")
    ap.add_argument("--views", choices=(*VIEWS, "center"), default="centre",
                    help="centre: one central crop; ten: 4 corners + centre and their flips, softmax averaged")
    ap.add_argument("--top", type=int, default=5, help="classes to print per image")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--data", default=None, help="the store the model was trained on (only for checkpoints that "
                                                 "carry no mean image)")
    ap.add_argument("--ops", choices=("auto", "triton", "reference"), default="auto")
    ap.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    ap.add_argument("--no-verify", action="store_true",
                    help="trust the Triton kernels unchecked (default: each is checked against its PyTorch "
                         "reference on its first use on this GPU; README: Correctness on your GPU)")
    args = ap.parse_args(argv)
    if args.top < 1 or args.batch_size < 1:
        ap.error("--top and --batch-size must be >= 1")
    if args.no_verify:
        from kernels import verify

        verify.set_enabled(False)
    views = "centre" if args.views == "center" else args.views
    if not Path(args.checkpoint).is_file():
        ap.error(f"no checkpoint at {args.checkpoint}")
    try:
        classifier = Classifier(args.checkpoint, data=args.data, ops=args.ops, device=args.device)
    except (FileNotFoundError, ValueError, KeyError) as err:
        ap.error(str(err))

    failed = 0
    for start in range(0, len(args.images), args.batch_size):
        paths, images = [], []
        for path in args.images[start:start + args.batch_size]:
            try:
                images.append(classifier.load(path))
                paths.append(path)
            except Exception as err:  # any file Pillow cannot decode is reported, never fatal  # noqa: BLE001
                reason = "no such file" if isinstance(err, FileNotFoundError) else f"{type(err).__name__}: {err}"
                print(f"alexnet.predict: cannot read {path}: {reason}", file=sys.stderr, flush=True)
                failed += 1
        if not images:
            continue
        for path, best in zip(paths, classifier.top(np.stack(images), views, args.top)):
            print(f"{path} ({views} view{'s' if views == 'ten' else ''}):")
            width = max(len(name) for name, _ in best)
            for rank, (name, p) in enumerate(best, 1):
                print(f"  {rank}. {name:<{width}}  {p:7.2%}")
    if failed:
        print(f"alexnet.predict: {failed} of {len(args.images)} image(s) could not be read", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Top-1/top-5 error of a checkpoint on a split of a store: `python -m alexnet.evaluate CHECKPOINT`.

    python -m alexnet.evaluate runs/alexnet/checkpoint_best.pt --views ten   # the paper's test
    python -m alexnet.evaluate runs/alexnet/checkpoint_best.pt --views centre --data STORE

The evaluation itself (views, error counts) is alexnet/training/evaluation.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from alexnet.training.evaluation import VIEWS, error_rates, evaluate
from alexnet.training.session import tf32_as


def main(argv=None) -> int:
    """Top-1/top-5 error of a checkpoint written by alexnet.train on a split of a store."""
    ap = argparse.ArgumentParser(prog="python -m alexnet.evaluate", description=main.__doc__,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("checkpoint", help="checkpoint_best.pt or checkpoint_last.pt from alexnet.train")
    ap.add_argument("--data", help="prepared store (default: the one the checkpoint was trained on; "
                                   "the demo store for a demo run)")
    ap.add_argument("--split", default="val", help="split of the store to evaluate")
    ap.add_argument("--views", choices=VIEWS, default="ten",
                    help="ten: the paper's 4 corners + centre and their flips, softmax averaged; centre: one crop")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32")
    ap.add_argument("--ops", choices=("auto", "triton", "reference"), default="auto")
    ap.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    ap.add_argument("--no-verify", action="store_true",
                    help="trust the Triton kernels unchecked (default: each is checked against its PyTorch "
                         "reference on its first use on this GPU; README: Correctness on your GPU)")
    args = ap.parse_args(argv)
    if args.batch_size < 1:
        ap.error("--batch-size must be >= 1")
    if args.no_verify:
        from kernels import verify

        verify.set_enabled(False)

    from alexnet.data.loaders import EvalLoader
    from alexnet.data.store import is_store
    from alexnet.training.checkpoint import matching_store, model_from_checkpoint, recorded_store

    try:
        model, ckpt = model_from_checkpoint(args.checkpoint, ops=args.ops, device=args.device)
    except (FileNotFoundError, ValueError) as err:
        ap.error(str(err))
    saved = ckpt["config"]
    data = args.data if args.data is not None else recorded_store(ckpt) or saved.get("data")
    if args.data is None and data is not None and not is_store(data):
        data = Path(saved["out"]) / "store"  # training prepared the folder it was given into OUT/store
        if not is_store(data):  # recorded relative to where training ran: say so, not just "not a store"
            ap.error(f"cannot find the store {args.checkpoint} was trained on (--data {saved.get('data')!r}, "
                     f"--out {saved.get('out')!r} as given then, relative to where training ran): pass --data")
    if data is None:
        from alexnet.data.demo import ensure_demo_store
        from alexnet.training.recipe import DEMO_STORE_SIZE

        data = ensure_demo_store(image_size=DEMO_STORE_SIZE)
    elif not is_store(data):
        ap.error(f"{data} is not a prepared store (make one with `python -m alexnet.prepare`)")
    try:
        store = matching_store(ckpt, data)
    except (FileNotFoundError, ValueError) as err:
        ap.error(str(err))
    if args.split not in store.splits:
        ap.error(f"{data} has no split {args.split!r} (it has {', '.join(store.splits)})")
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    device = next(model.parameters()).device
    size = saved["image_size"]
    loader = EvalLoader(store, args.batch_size, device, split=args.split, dtype=dtype,
                        channels_last=bool(model.config.channels_last), crop_size=size, ops=model.config.ops)
    try:
        with tf32_as(args.precision):
            counts = evaluate(model, loader, args.views)
    finally:
        loader.close()
    top1, top5 = error_rates(counts)
    n = int(counts[0].item())
    print(f"{args.checkpoint}: {n} {args.split} images of {store.path}, {args.views} view(s) of {size} px, "
          f"{args.precision}: top-1 error {top1:.2%}, top-5 error {top5:.2%} "
          f"(chance {1 - 1 / store.num_classes:.1%}, step {ckpt['step']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

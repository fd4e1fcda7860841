"""Build (or find) the embedded demo store and print its path: `python -m alexnet.demo`.

The dataset itself (generation, the cached store) is alexnet/data/demo.py.
"""
from __future__ import annotations

import argparse

from alexnet.data.demo import __doc__ as DEMO_DOC
from alexnet.data.demo import default_cache, ensure_demo_store


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m alexnet.demo", description=DEMO_DOC.split("\n\n")[0])
    p.add_argument("--cache", default=None, help=f"cache directory (default: $ALEXNET_CACHE or {default_cache()})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=80, help="training images per class")
    p.add_argument("--val", type=int, default=20, help="validation images per class")
    p.add_argument("--image-size", type=int, default=256, help="side of the prepared images")
    args = p.parse_args(argv)
    print(ensure_demo_store(args.cache, seed=args.seed, train_per_class=args.train, val_per_class=args.val,
                            image_size=args.image_size, progress=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

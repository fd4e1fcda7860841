"""Prepare an ImageNet-style folder tree as a store of 256x256 images: `python -m alexnet.prepare SRC OUT`.

The work (scanning, decoding workers, the store's atomic build) is alexnet/data/prepare.py.
"""
from __future__ import annotations

import argparse
import errno
import sys

from alexnet.data.prepare import PrepareError, default_workers, prepare
from alexnet.data.sources import SourceError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m alexnet.prepare", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Turn an ImageNet-style folder tree into the store AlexNet trains from: every image's\n"
                    "shorter side resized to 256 and its central 256x256 patch kept (paper section 2), as\n"
                    "memory-mappable uint8 arrays, with the training set's mean image and RGB PCA.",
        epilog="SRC layouts:\n"
               "  SRC/train/<class>/<images>   required; class names = sorted folder names\n"
               "  SRC/val/<class>/<images>     or a flat SRC/val/<images> with --val-labels\n"
               "Images: JPEG, PNG (and other Pillow formats), any size, aspect ratio and colour mode.\n"
               "Unreadable files are skipped and listed in OUT/report.json. OUT is written atomically;\n"
               "re-running over a complete OUT does nothing unless --force.")
    p.add_argument("src", metavar="SRC", help="source folder with train/ (and val/)")
    p.add_argument("out", metavar="OUT", help="store directory to create")
    p.add_argument("--workers", type=int, default=None,
                   help=f"decoding processes (default: all usable cores, here {default_workers()})")
    p.add_argument("--val-labels", metavar="FILE",
                   help="labels for a flat val/ folder: lines '<file> <class>' (whitespace or comma separated), "
                        "or one 1-based class index per line in sorted file-name order "
                        "(ILSVRC2012_validation_ground_truth.txt)")
    p.add_argument("--class-index", metavar="FILE",
                   help="class names in index order, one per line, for an index-style --val-labels "
                        "(ILSVRC: the WNIDs in ILSVRC2012_ID order); default: the sorted class names")
    p.add_argument("--image-size", type=int, default=256, help="stored image side (default: 256, the paper's)")
    p.add_argument("--force", action="store_true", help="rebuild OUT even if it is a complete store")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        prepare(args.src, args.out, workers=args.workers, force=args.force, val_labels=args.val_labels,
                class_index=args.class_index, image_size=args.image_size, progress=not args.quiet)
    except (PrepareError, SourceError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"alexnet.prepare: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only destination, a directory given for a file, ...: one line, no traceback
        if e.errno == errno.ENOSPC:
            raise
        print(f"alexnet.prepare: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("alexnet.prepare: interrupted; nothing of OUT was replaced (the build goes to OUT.partial, removed). "
              "Run the same command again to prepare afresh.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

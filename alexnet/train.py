"""Train AlexNet with the paper's recipe: `python -m alexnet.train`.

    python -m alexnet.train                                   # the demo dataset, minutes on a CPU
    python -m alexnet.train --data /data/imagenet             # one GPU (an ImageNet-style folder
                                                              #   is prepared first, into OUT/store)
    torchrun --nproc-per-node 2 -m alexnet.train --data ...   # two GPUs: one column each (the paper)
    torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m alexnet.train --data ...                           # 32 ranks: 16 data-parallel replicas
    python -m alexnet.train --data /data/imagenet --resume auto   # continue OUT's run exactly

Every default is the paper's (section 5; `TrainConfig`), except that with no --data the
run uses the embedded demo dataset and the small-scale settings in DEMO (images, batch,
epochs) so that it ends in minutes on a 2-core CPU; any flag given overrides them.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields

from alexnet.training.recipe import DEMO, INIT, TrainConfig, command_line, store_size_for  # noqa: F401 (the CLI's names)

__all__ = ["TrainConfig", "DEMO", "INIT", "store_size_for", "command_line", "parse_args", "main"]

HELP = {
    "data": "prepared store (from `python -m alexnet.prepare`) or ImageNet-style folder (train/<class>/*, "
            "val/<class>/*); omit for the embedded demo dataset",
    "out": "output directory: checkpoints, metrics.jsonl, curves.png",
    "resume": "checkpoint to continue from exactly ('auto': OUT/checkpoint_last.pt if it exists)",
    "overwrite": "start afresh in an OUT that holds a run, deleting its checkpoints and metrics",
    "epochs": "most epochs to train (the paper: about 90)",
    "batch_size": "images per step per data-parallel replica (the paper: 128)",
    "lr": "initial learning rate (the paper: 0.01)",
    "momentum": "momentum of the paper's update v <- m v - wd lr w - lr g (the paper: 0.9)",
    "weight_decay": "weight decay on weights, not biases (the paper: 0.0005)",
    "patience": "epochs without a new best validation top-1 error before lr is divided by 10",
    "lr_step": "if > 0, divide lr by 10 every LR_STEP epochs (a fixed schedule) instead of on plateaus",
    "lr_reductions": "lr divisions before training stops at the next plateau (the paper: 3)",
    "precision": "fp32 (true fp32), tf32 (tensor cores, fp32 storage), bf16 (bf16 compute, fp32 master weights) "
                 "or auto (bf16 on a GPU that has it, compute capability 8.0+; else fp32); one the GPU lacks is "
                 "refused before the first step",
    "ops": "triton (the project's kernels), reference (plain PyTorch) or auto (triton on CUDA)",
    "eval_views": "validation views: centre crop, or ten (4 corners + centre and their flips, softmax averaged)",
    "seed": "seed of the initialisation, data order, augmentation and dropout",
    "image_size": "network input size (the paper: 224 crops of 256 px images)",
    "lrn": "local response normalisation after conv1/conv2 (--no-lrn: the ablation)",
    "overlap_pool": "overlapping 3x3/2 max-pooling (--no-overlap-pool: 2x2/2)",
    "activation": "relu (the paper) or tanh (the ablation)",
    "columns": "2: the paper's two-column net; 1: one column with half the kernels (the ablation)",
    "init": "initialisation preset: paper (N(0, 0.01) weights, biases 1) or demo (N(0, 0.02), biases 0.1: "
            "small datasets; use a lower --lr with it, e.g. 0.002-0.005)",
    "init_std": "standard deviation of the initial weights, N(0, std^2) (default: the --init preset's)",
    "init_bias": "initial value of the conv2, conv4, conv5, fc6 and fc7 biases, others 0 (default: the --init "
                 "preset's)",
    "flip": "random horizontal reflections of training crops (--no-flip: e.g. for digits or text)",
    "lighting": "PCA lighting noise on training crops (--no-lighting: off)",
    "max_steps": "stop after this many steps in all (smoke tests)",
    "checkpoint_every": "also checkpoint every N steps inside an epoch (0: at epoch ends only)",
    "log_every": "steps between log lines with loss, error and per-layer gradient norms",
    "threads": "data loader reader threads",
    "timeout_s": "seconds a rank waits on another before failing with a clear error",
    "cuda_graph": "capture the whole training step (forward, backward, update) in a CUDA graph after 3 warm-up "
                  "steps and replay it (one launch per step); falls back to the plain step, saying why, where "
                  "capture is impossible (CPU, two-column model)",
    "verify": "check every Triton kernel against its PyTorch reference on its first use on this GPU (each conv "
              "tile candidate before tuning, every other op once per shape); a kernel that mismatches is replaced "
              "by the reference, with a warning (README: Correctness on your GPU); --no-verify: trust them unchecked",
}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m alexnet.train", description=__doc__.split("\n\n")[0],
                                 epilog="Defaults are the paper's; without --data the demo settings apply: "
                                        + ", ".join(f"{k}={v}" for k, v in DEMO.items()),
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = f.type if isinstance(f.type, str) else str(f.type)
        if f.default is False:  # a switch that defaults off
            ap.add_argument(flag, dest=f.name, action="store_true", default=argparse.SUPPRESS, help=HELP[f.name])
            continue
        if f.default is True:  # booleans that default on get a --no- form
            ap.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                            help=HELP[f.name] + " (default: on)")
            continue
        choices = None
        if "Literal" in kind:
            choices = [c.strip().strip("'\"") for c in kind.split("[", 1)[1].rstrip("]").split(",")]
        convert = str
        if kind.startswith("int") or (choices and all(c.isdigit() for c in choices)):  # "int | None" too
            convert = int
        elif kind.startswith("float"):
            convert = float
        if choices and convert is int:
            choices = [int(c) for c in choices]
        ap.add_argument(flag, dest=f.name, type=convert, choices=choices, default=argparse.SUPPRESS,
                        help=HELP[f.name] if "(default" in HELP[f.name] else f"{HELP[f.name]} (default: {f.default})")
    return ap


def parse_args(argv=None) -> TrainConfig:
    """The config for a command line: the paper's defaults, or the demo's without --data,
    overridden by whatever flags are given."""
    given = vars(_parser().parse_args(argv))
    base = {} if given.get("data") else dict(DEMO)
    config = TrainConfig(**{**base, **given})
    _validate(config)
    return config


def _validate(c: TrainConfig) -> None:
    import math

    from alexnet.base.errors import UsageError
    from alexnet.base.paths import refuse_overlap
    from alexnet.training.outdir import check_output_dir

    problems = [f"--{name.replace('_', '-')} must be a finite number, got {getattr(c, name)}"
                for name in ("lr", "momentum", "weight_decay", "init_std", "init_bias", "timeout_s")
                if getattr(c, name) is not None and not math.isfinite(getattr(c, name))]  # None: the preset's
    if problems:  # nan compares false with everything: the range checks below would pass it
        raise UsageError("alexnet.train: " + "; ".join(problems))
    for name in ("epochs", "batch_size", "patience", "log_every", "image_size"):
        if getattr(c, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be >= 1")
    if c.lr <= 0:
        problems.append("--lr must be > 0")
    if c.timeout_s is not None and c.timeout_s <= 0:
        problems.append("--timeout-s must be > 0")
    if not 0 <= c.momentum < 1:
        problems.append("--momentum must be in [0, 1)")
    if c.weight_decay < 0:
        problems.append("--weight-decay must be >= 0")
    if c.max_steps is not None and c.max_steps < 1:
        problems.append("--max-steps must be >= 1")
    if c.checkpoint_every < 0 or c.lr_reductions < 0 or c.lr_step < 0:
        problems.append("--checkpoint-every, --lr-reductions and --lr-step must be >= 0")
    if c.data is not None and not os.path.exists(c.data):
        problems.append(f"--data {c.data}: no such file or directory")
    if c.resume not in (None, "auto") and not os.path.isfile(c.resume):
        problems.append(f"--resume {c.resume}: no such file")
    if c.resume is not None and c.overwrite:
        problems.append("--resume and --overwrite contradict each other")
    if problems:
        raise UsageError("alexnet.train: " + "; ".join(problems))
    refuse_overlap("alexnet.train", ("--out", c.out), [("--data", c.data)])
    check_output_dir(c.out)


def main(argv=None) -> int:
    from alexnet.base.errors import UsageError

    try:
        config = parse_args(argv)
    except UsageError as err:  # one line, exit code 2 (argparse's own errors exit 2 as well)
        print(err.message, file=sys.stderr)
        return 2
    from alexnet.training.loop import run  # heavy imports (torch, triton) only after the arguments are valid

    return run(config)


if __name__ == "__main__":
    sys.exit(main())

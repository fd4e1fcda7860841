"""Tile sweep of the convolution kernels on the AlexNet layers (batch 128, channels_last):

    python bench/conv_sweep.py [--layers conv1,conv2] [--dtype bf16|tf32] [--shapes single,shard]
                               [--passes fwd,dgrad,wgrad] [--flat auto|both] [--batch 128]

For each layer and pass it times cuDNN and every candidate config of kernels/conv/configs.py
(forced, bypassing the autotuner; the ones `fits` rules out are skipped), checks each
result against cuDNN (relative error), and prints one line per config plus the best. For
wgrad it then times the best config at several split counts around the model's choice
(`conv_configs.wgrad_splits`). `--flat both` also tries every config with the other
reduction loop (FLAT), e.g. to compare taps and flat for conv2's 48 channels per group.
A config that fails to compile or run is reported, never fatal. Edit the lists in
kernels/conv/configs.py with what this finds.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from triton import Config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `python bench/<script>.py`
from bench.conv_layers import BATCH, DTYPES, LAYERS, ConvProblem, passes_for, rel_error  # noqa: E402
from bench.harness import median_ms  # noqa: E402
from kernels.conv import configs as conv_configs  # noqa: E402
from kernels.conv.common import dot_precision, pix_multiple  # noqa: E402
from kernels.conv.input_layout import (
    pad_input,  # noqa: E402
    wgrad_view,  # noqa: E402
)

TUNINGS = {"fwd": conv_configs.FWD, "dgrad": conv_configs.DGRAD, "wgrad": conv_configs.WGRAD}
MAX_ERROR = {"bf16": 2e-2, "tf32": 5e-3}


def label(cfg: Config) -> str:
    k = cfg.kwargs
    flat = {True: " flat", False: " taps"}.get(k.get("FLAT"), "")
    return f"{k['BLOCK_M']}x{k['BLOCK_N']}x{k['BLOCK_K']} w{cfg.num_warps} s{cfg.num_stages}{flat}"


def candidates(p: ConvProblem, pass_: str, flat_mode: str) -> list[Config]:
    tuning, g = TUNINGS[pass_], p.geom
    if pass_ != "dgrad":  # the geometry the kernels run (conv1: its padded image)
        x_k, _, g = pad_input(p.x, p.w, g)
        if pass_ == "wgrad":
            view = wgrad_view(x_k, g)
            g = view[1] if view is not None else g
    red_chan = g.k_per_g if pass_ == "dgrad" else g.c_per_g
    auto = conv_configs.use_flat_reduction(red_chan, pass_)
    flats = [auto, not auto] if flat_mode == "both" else [auto]
    out = []
    for flat in flats:
        meta = dict(g.constexprs(), FLAT=flat, IMG_MULT=pix_multiple(g.n_img), PRECISION=dot_precision(p.x.dtype))
        for c in tuning.candidates(meta["PRECISION"], p.x.element_size()):
            if tuning.fits(c, meta, p.x.element_size()):
                out.append(Config({**c.kwargs, "FLAT": flat}, num_warps=c.num_warps, num_stages=c.num_stages))
    return out


def time_config(fn, ref, rep_ms):
    """(ms, error) of fn(), or (None, message) if it fails."""
    try:
        err = rel_error(fn(), ref)
        return median_ms(fn, warmup_ms=5, rep_ms=rep_ms), err
    except Exception as e:  # a config that does not compile or run is reported, not fatal
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:70] if str(e) else ''}"


def compile_pass(p: ConvProblem, pass_: str, flat_mode: str):
    """Run every candidate once, untimed: fills Triton's on-disk cache, so several of these
    can run in parallel processes before one timing sweep (timings must not overlap)."""
    for cfg in candidates(p, pass_, flat_mode):
        try:
            p.ours(pass_, cfg)()
        except Exception as e:  # reported by the timing sweep
            print(f"    {label(cfg):26} FAILED  {type(e).__name__}")
    torch.cuda.synchronize()


def sweep_pass(p: ConvProblem, pass_: str, dtype: str, flat_mode: str, rep_ms: float):
    ref = p.cudnn(pass_)()
    cudnn_ms = median_ms(p.cudnn(pass_), warmup_ms=5, rep_ms=rep_ms)
    tflops = lambda ms: p.flops / (ms * 1e-3) / 1e12  # noqa: E731
    print(f"    cuDNN {cudnn_ms * 1e3:8.1f} us  {tflops(cudnn_ms):6.1f} TFLOP/s")
    results = []
    configs = candidates(p, pass_, flat_mode)
    if not configs:
        print("    every config is ruled out by conv_configs' fits rules for this shape")
    for cfg in configs:
        ms, err = time_config(p.ours(pass_, cfg), ref, rep_ms)
        if ms is None:
            print(f"    {label(cfg):26} FAILED  {err}")
            continue
        bad = "  WRONG" if err > MAX_ERROR[dtype] else ""
        print(f"    {label(cfg):26} {ms * 1e3:8.1f} us  {tflops(ms):6.1f} TFLOP/s  x{cudnn_ms / ms:5.2f}  "
              f"err {err:.1e}{bad}")
        if not bad:
            results.append((ms, cfg))
    if not results:
        print("    no correct config")
        return None
    best_ms, best = min(results, key=lambda r: r[0])
    if pass_ == "wgrad":
        best_ms, best = sweep_splits(p, best, best_ms, ref, rep_ms)
    print(f"    best {label(best)}: {best_ms * 1e3:.1f} us, x{cudnn_ms / best_ms:.2f} cuDNN")
    return cudnn_ms / best_ms, best


def sweep_splits(p: ConvProblem, cfg: Config, ms_model: float, ref, rep_ms):
    g = p.geom
    model = conv_configs.wgrad_splits(g, p.x.dtype, dot_precision(p.x.dtype), cfg.kwargs["FLAT"], p.x.device)
    times = {}
    for s in sorted({1, 2, max(1, model // 2), model, 2 * model, 4 * model}):
        ms, err = time_config(p.ours("wgrad", cfg, splits=s), ref, rep_ms)
        times[s] = ms
    cells = "  ".join(f"{s}: {'fail' if t is None else f'{t * 1e3:.1f}'}" for s, t in times.items())
    print(f"    splits (model {model}) -> us   {cells}")
    ok = {s: t for s, t in times.items() if t is not None}
    best_s = min(ok, key=ok.get) if ok else model
    return (ok[best_s] if ok else ms_model), Config({**cfg.kwargs, "splits": best_s}, num_warps=cfg.num_warps,
                                                    num_stages=cfg.num_stages)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default="conv1,conv2,conv3,conv4,conv5")
    ap.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    ap.add_argument("--shapes", default="single,shard", help="single and/or shard (see bench/conv_layers.py)")
    ap.add_argument("--passes", default="fwd,dgrad,wgrad")
    ap.add_argument("--flat", choices=["auto", "both"], default="auto")
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--rep-ms", type=float, default=20, help="timing window per config")
    ap.add_argument("--compile-only", action="store_true",
                    help="only compile every candidate (warm the cache for a later timing run)")
    args = ap.parse_args(argv)
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = True
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  dtype {args.dtype}  batch {args.batch}")
    summary = []
    for shapes in args.shapes.split(","):
        for name in args.layers.split(","):
            p = ConvProblem(LAYERS[shapes][name], DTYPES[args.dtype], args.batch)
            for pass_ in [q for q in passes_for(name) if q in args.passes.split(",")]:
                print(f"{shapes} {name} {pass_}  ({p.flops / 1e9:.1f} GFLOP)")
                if args.compile_only:
                    compile_pass(p, pass_, args.flat)
                    continue
                found = sweep_pass(p, pass_, args.dtype, args.flat, args.rep_ms)
                if found:
                    summary.append((shapes, name, pass_, *found))
            del p
            torch.cuda.empty_cache()
    print("\nbest per layer and pass (speedup over cuDNN):")
    for shapes, name, pass_, speedup, cfg in summary:
        extra = f" splits {cfg.kwargs['splits']}" if "splits" in cfg.kwargs else ""
        print(f"  {shapes:6} {name} {pass_:5}  x{speedup:5.2f}  {label(cfg)}{extra}")
    for shapes in args.shapes.split(","):
        ups = [s for sh, name, _, s, _ in summary if sh == shapes and name != "conv1"]
        if ups:
            print(f"  {shapes}: conv2-5 geometric mean x{math.exp(sum(map(math.log, ups)) / len(ups)):.2f}, "
                  f"min x{min(ups):.2f}")


if __name__ == "__main__":
    main()

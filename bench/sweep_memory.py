"""Tile sweep for the memory-bound kernels on the AlexNet shapes (batch 128):
`python bench/sweep_memory.py`. Times every (BLOCK_P, BLOCK_C, num_warps) candidate of the
ReLU+LRN and max-pool kernels, checks each result against the default tiles, and prints the
time, GB/s over the minimal bytes and the fraction of the measured copy bandwidth."""
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `python bench/<script>.py`
from bench.harness import median_ms  # noqa: E402
from kernels.lrn import relu_lrn_backward, relu_lrn_forward  # noqa: E402
from kernels.maxpool import max_pool2d_backward, max_pool2d_forward  # noqa: E402

SHAPES = {"layer1": (128, 96, 55, 55), "layer2": (128, 256, 27, 27)}
CANDIDATES = {
    torch.channels_last: list(itertools.product([16, 32, 64, 128], [32, 64], [4, 8])),
    torch.contiguous_format: list(itertools.product([64, 128, 256], [8, 16], [4, 8])),
}


def main():
    src = torch.empty(1 << 28, device="cuda")
    dst = torch.empty_like(src)
    bw = 2 * src.numel() * 4 / (median_ms(lambda: dst.copy_(src)) * 1e-3)
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s  ({torch.cuda.get_device_name()})")
    for (layer, shape), dtype, fmt in itertools.product(SHAPES.items(), [torch.bfloat16],
                                                         [torch.channels_last, torch.contiguous_format]):
        x = (torch.randn(shape, device="cuda") * 20).to(dtype).contiguous(memory_format=fmt)
        dy = torch.randn_like(x)
        y_ref, u = relu_lrn_forward(x, save_u=True)
        dx_ref = relu_lrn_backward(dy, x, u)
        yp_ref, idx = max_pool2d_forward(x)
        dyp = torch.randn_like(yp_ref)
        dxp_ref = max_pool2d_backward(dyp, idx, x.shape, fmt)
        nb = x.numel() * x.element_size()
        nbp = yp_ref.numel() * x.element_size()
        jobs = {
            "lrn_fwd": (lambda b: relu_lrn_forward(x, save_u=True, blocks=b)[0], y_ref, 2 * nb),
            "lrn_bwd": (lambda b: relu_lrn_backward(dy, x, u, blocks=b), dx_ref, 3 * nb),
            "pool_fwd": (lambda b: max_pool2d_forward(x, blocks=b)[0], yp_ref, nb + nbp),
            "pool_bwd": (lambda b: max_pool2d_backward(dyp, idx, x.shape, fmt, blocks=b), dxp_ref, nb + nbp),
        }
        tag = f"{layer} {str(dtype)[6:]} {'nhwc' if fmt == torch.channels_last else 'nchw'}"
        for job, (fn, ref, nbytes) in jobs.items():
            results = []
            for blocks in CANDIDATES[fmt]:
                try:
                    out = fn(blocks)
                    err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
                    ms = median_ms(lambda: fn(blocks), rep_ms=50)
                    results.append((ms, blocks, err))
                except Exception as e:  # a config that does not compile is reported, not fatal
                    print(f"  {tag} {job} {blocks}: {type(e).__name__}: {str(e)[:80]}")
            results.sort()
            default_ms = median_ms(lambda: fn(None), rep_ms=50)
            best = results[0]
            floor = nbytes / bw * 1e3
            print(f"{tag:22} {job:9} default {default_ms * 1e3:7.1f} us  best {best[0] * 1e3:7.1f} us {best[1]}"
                  f"  floor {floor * 1e3:6.1f} us  x{best[0] / floor:.2f}  err {best[2]:.1e}"
                  f"  worst-err {max(r[2] for r in results):.1e}")


if __name__ == "__main__":
    main()

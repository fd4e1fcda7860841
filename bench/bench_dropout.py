"""Seeded Philox dropout vs F.dropout at the fc shape (128 x 4096) and a large activation.
Memory floor: read x, write y (forward); read dy, write dx (backward, mask regenerated)."""
import pytest
import torch
import torch.nn.functional as F

from bench.harness import compare
from kernels.dropout import apply_dropout_mask, new_seed

SHAPES = {"fc": (128, 4096), "fc_x16": (2048, 4096)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("pass_", ["fwd", "bwd"])
def test_dropout(benchmark, copy_bandwidth, shape, dtype, pass_):
    x = torch.randn(SHAPES[shape], device="cuda", dtype=DTYPES[dtype])
    seed = new_seed(x.device)
    nbytes = 2 * x.numel() * x.element_size()
    name = f"dropout {pass_} {shape} {dtype}"
    if pass_ == "fwd":
        xg = x.detach().requires_grad_()
        compare(benchmark, name, lambda: apply_dropout_mask(x, seed, 0.5), lambda: F.dropout(xg, 0.5),
                nbytes=nbytes, bandwidth=copy_bandwidth)
    else:  # the same kernel regenerates the mask from the seed and applies it to dy
        xg = x.detach().requires_grad_()
        y = F.dropout(xg, 0.5)
        dy = torch.randn_like(x)
        compare(benchmark, name, lambda: apply_dropout_mask(dy, seed, 0.5),
                lambda: torch.autograd.grad(y, xg, dy, retain_graph=True), nbytes=nbytes, bandwidth=copy_bandwidth)

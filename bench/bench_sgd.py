"""The fused paper-SGD step over AlexNet's 60,965,224 parameters vs torch's foreach ops
(the multi-kernel way, as alexnet.training.optim.PaperSGD does it). Memory floor: read w, v, g and
write w, v (fp32), plus the bf16 weight copy when mixed precision asks for it."""
import pytest
import torch

from bench.harness import compare
from kernels.sgd import sgd_step_

N_PARAMS = 60_965_224
N_WEIGHTS = N_PARAMS - 10_568  # biases take no weight decay


@pytest.mark.parametrize("low", [None, torch.bfloat16], ids=["fp32", "fp32+bf16copy"])
def test_sgd_step(benchmark, copy_bandwidth, low):
    w, v, g = (torch.randn(N_PARAMS, device="cuda") for _ in range(3))
    lr = torch.tensor([0.01], device="cuda")
    out = torch.empty(N_PARAMS, device="cuda", dtype=low) if low else None
    w_d, w_b = w[:N_WEIGHTS], w[N_WEIGHTS:]
    v_d, v_b = v[:N_WEIGHTS], v[N_WEIGHTS:]
    g_d, g_b = g[:N_WEIGHTS], g[N_WEIGHTS:]

    def torch_step():
        torch._foreach_mul_([v_d, v_b], 0.9)
        torch._foreach_add_([v_d], [w_d], alpha=-5e-4 * 0.01)
        torch._foreach_add_([v_d, v_b], [g_d, g_b], alpha=-0.01)
        torch._foreach_add_([w_d, w_b], [v_d, v_b])
        if out is not None:
            out.copy_(w)

    nbytes = N_PARAMS * (5 * 4 + (2 if low else 0))
    compare(benchmark, f"sgd step {'fp32+bf16 copy' if low else 'fp32'} ({N_PARAMS} params)",
            lambda: sgd_step_(w, v, g, lr, 0.9, 5e-4, N_WEIGHTS, out), torch_step,
            nbytes=nbytes, bandwidth=copy_bandwidth)

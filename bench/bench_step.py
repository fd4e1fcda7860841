"""The whole training step (forward, loss, backward, the paper's SGD update) of the paper's
network at batch 128, 224 px: our Triton ops vs the same model on PyTorch eager + cuDNN and
vs torch.compile of that eager model, timed side by side in one run (issue 7).

    pytest bench/bench_step.py --benchmark-only          # rows: step <precision> vs eager / compile

Every stack starts from the same weights and takes the same input. bf16: bf16 activations
and compute with fp32 master weights (the layers cast weights to the input's dtype), as
`python -m alexnet.train --precision bf16`; tf32: fp32 storage, tf32 tensor cores for the
convolutions and matmuls (cuDNN and our conv both follow torch.backends.cudnn.allow_tf32).
Each row also records the step's peak GPU memory (torch.cuda.max_memory_allocated) for
ours and the baseline.

Targets (issue 7): bf16 step <= 0.5x torch.compile's default mode; tf32 <= 0.6x; peak memory
<= eager's. `x_target` is ours / (target fraction * baseline): <= 1 meets it.
"""
import pytest
import torch
import torch.nn.functional as F

from alexnet.network.config import AlexNetConfig
from alexnet.network.model import AlexNet
from alexnet.training.optim import PaperSGD, param_groups
from bench.harness import compare

BATCH = 128
PRECISIONS = {"bf16": torch.bfloat16, "tf32": torch.float32}
TARGET_VS_COMPILE = {"bf16": 0.5, "tf32": 0.6}


@pytest.fixture(autouse=True)
def _tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = torch.backends.cudnn.benchmark = True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = old


def make_step(ops: str, dtype: torch.dtype, state: dict, compiled: bool = False):
    """A closure running one training step of a fresh model with ops `ops` from `state`."""
    model = AlexNet(AlexNetConfig(ops=ops, channels_last=True, dropout_seed=0)).cuda()
    model.load_state_dict(state)
    optimizer = PaperSGD(param_groups(model), lr=0.01)
    forward = torch.compile(model) if compiled else model
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(BATCH, 3, 224, 224, device="cuda", generator=g).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (BATCH,), device="cuda", generator=g)

    def step():
        loss = F.cross_entropy(forward(x).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def peak_memory_bytes(step) -> int:
    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


@pytest.mark.parametrize("baseline", ["eager", "compile"])
@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_training_step(benchmark, precision, baseline):
    dtype = PRECISIONS[precision]
    torch.manual_seed(0)
    state = AlexNet(AlexNetConfig(ops="reference")).state_dict()
    ours = make_step("triton", dtype, state)
    theirs = make_step("reference", dtype, state, compiled=baseline == "compile")
    mem_ours, mem_theirs = peak_memory_bytes(ours), peak_memory_bytes(theirs)
    row = compare(benchmark, f"training step {precision} batch {BATCH} vs {baseline}", ours, theirs,
                  flops=529e9, baseline_name=baseline)
    row.update(ours_peak_GiB=mem_ours / 2**30, baseline_peak_GiB=mem_theirs / 2**30)
    if baseline == "compile":
        row["x_target"] = row["ours_ms"] / (TARGET_VS_COMPILE[precision] * row["compile_ms"])
    benchmark.extra_info.update(row)

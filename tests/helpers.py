"""What the test files share: the device, the hypothesis profiles, the dtypes and tolerances
kernel tests run over, the comparison against a float64 reference, the GPU marker, and a tiny
learnable dataset. Test files import it as `from helpers import ...` (tests/ is on sys.path:
pytest puts a rootdir-less test folder there); tests/conftest.py holds only the set-up
(TRITON_INTERPRET before anything imports triton) and the fixtures.
"""
import os

import pytest
import torch
from compare import assert_close_verbose
from hypothesis import HealthCheck, settings

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"

# Hypothesis: few examples; each is slow on the interpreter (Python-speed kernels) and on a GPU
# (a new shape compiles new kernels). HYPOTHESIS_PROFILE=quick for a fast GPU pass, =thorough
# for a long one. Tests that need more examples ask for a multiple of EXAMPLES.
_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("default", max_examples=12, **_common)
settings.register_profile("quick", max_examples=4, **_common)
settings.register_profile("thorough", max_examples=100, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
EXAMPLES = settings.default.max_examples

# The one spelling of "needs a GPU": the `gpu` marker (declared in pyproject.toml). conftest.py
# skips marked tests without a CUDA device, with the marker's reason or GPU_REASON.
GPU_REASON = "needs a CUDA device: the Triton interpreter computes bf16 wrongly and has no tf32"
requires_gpu = pytest.mark.gpu

# (dtype, atol, rtol) for comparisons of an op's output against a float64 reference. Each is a
# few hundred units of roundoff of the dtype (fp32 6e-8, fp16 4.9e-4, bf16 3.9e-3) for fp32, and
# about two for the 16-bit types: room for the short sums (LRN's 5-channel window, a pooling
# window's few gradients) and the fp32 accumulation these ops do, not for a wrong element.
TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1e-2),
}

# The dtypes kernel tests run over: fp32 everywhere, fp16/bf16 only on a GPU.
DTYPES = [
    pytest.param(torch.float32, id="float32"),
    pytest.param(torch.float16, marks=requires_gpu, id="float16"),
    pytest.param(torch.bfloat16, marks=requires_gpu, id="bfloat16"),
]

MEMORY_FORMATS = [
    pytest.param(torch.contiguous_format, id="nchw"),
    pytest.param(torch.channels_last, id="nhwc"),
]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, scale: float | None = None):
    """Compare `actual` with a float64 `expected` at the tolerance of `dtype`; atol is
    relative to the largest reference magnitude (or `scale`) so values of any size compare."""
    atol, rtol = TOLERANCES[dtype]
    actual, expected = actual.detach(), expected.detach()
    scale = float(expected.abs().max()) if scale is None and expected.numel() else (scale or 1.0)
    assert_close_verbose(actual, expected, atol=atol * max(scale, 1e-30), rtol=rtol,
                         reason=f"TOLERANCES[{dtype}], atol relative to the reference's magnitude {scale:.3g}")


# ------------------------------------------------------------------ a tiny learnable dataset
TINY_SIDE, TINY_CROP = 66, 63  # 63 px is the smallest input AlexNet takes (pool5 is 1x1)


def stripes(n: int, seed: int):
    """uint8 images (n, 66, 66, 3) of horizontal (label 0) or vertical (label 1) stripes of
    random period, phase and colours: flips and crops keep the label, colour says nothing."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = np.empty((n, TINY_SIDE, TINY_SIDE, 3), np.uint8)
    coords = np.arange(TINY_SIDE)
    for i, label in enumerate(labels):
        period, phase = rng.integers(6, 14), rng.integers(0, 14)
        on = ((coords + phase) // (period // 2)) % 2 == 0
        mask = np.broadcast_to(on[:, None] if label == 0 else on[None, :], (TINY_SIDE, TINY_SIDE))
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        while np.abs(a.astype(int) - b).sum() < 150:
            b = rng.integers(0, 256, 3)
        images[i] = np.where(mask[..., None], a, b)
    return images, labels



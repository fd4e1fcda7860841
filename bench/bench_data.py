"""Input pipeline: store -> GPU -> augmented batch (paper sections 2 and 4.1).

Two measurements:
  - the augmentation kernel against the same op in plain PyTorch (kernels.reference.augment,
    advanced indexing; its offset check syncs with the host) on a batch already on the GPU;
    bytes = the uint8 crops read once, the mean crop read once, the output written once.
  - end to end: `TrainLoader` over a store in the page cache (2048 random 256x256 images,
    written to a temporary directory first), batch 128, bf16 channels_last output, images/s
    over 4 epochs including the ramp-up of each. The goal: loading never limits training,
    >= 40,000 images/s (a training step is aimed at ~3 ms per 128 images).
"""
import numpy as np
import pytest
import torch

import kernels
from alexnet.data.augment import AugmentConfig
from alexnet.data.loaders import TrainLoader
from alexnet.data.store import Store, write_arrays
from bench.harness import compare, throughput
from kernels import reference

BATCH = 128
TARGET = 40_000  # images/s


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2048, 256, 256, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("bench-store") / "store"
    write_arrays(path, {"train": (images, rng.integers(0, 1000, 2048))}, [f"c{i}" for i in range(1000)])
    return Store(path)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_augment_kernel(benchmark, copy_bandwidth, dtype, channels_last):
    images = torch.randint(0, 256, (BATCH, 256, 256, 3), dtype=torch.uint8, device="cuda")
    mean = torch.rand(256, 256, 3, device="cuda") * 255
    offsets = torch.randint(0, 33, (BATCH, 2), dtype=torch.int32, device="cuda")
    flips = torch.rand(BATCH, device="cuda") < 0.5
    shift = torch.randn(BATCH, 3, device="cuda")
    args = (images, offsets, flips, shift, mean, 224, dtype, channels_last)
    crop = BATCH * 224 * 224 * 3
    nbytes = crop + 224 * 224 * 3 * 4 + crop * torch.tensor([], dtype=dtype).element_size()
    compare(benchmark, f"augment B={BATCH} 256->224 {str(dtype)[6:]} {'nhwc' if channels_last else 'nchw'}",
            lambda: kernels.augment(*args), lambda: reference.augment(*args), nbytes=nbytes,
            bandwidth=copy_bandwidth)


@pytest.mark.parametrize("threads", [4, 8, 12])
def test_loader_throughput(benchmark, store, threads):
    loader = TrainLoader(store, BATCH, "cuda", dtype=torch.bfloat16, channels_last=True, augment=AugmentConfig(),
                         threads=threads)
    epochs = 4

    def run():
        for _ in range(epochs):
            for x, y in loader:
                pass
        torch.cuda.synchronize()

    throughput(benchmark, f"TrainLoader B={BATCH} bf16 nhwc, {threads} threads (images)", run,
               epochs * len(loader) * BATCH, target=TARGET)
    loader.close()

"""alexnet.data.loaders: order, sharding, resumption, augmentation and placement of loader batches."""
import threading

import numpy as np
import pytest
import torch
from helpers import DEVICE, assert_close_verbose, requires_gpu

import kernels
from alexnet.data.augment import AugmentConfig, draw, lighting_shift
from alexnet.data.loaders import EvalLoader, TrainLoader, _seed, read_rows
from alexnet.data.store import Store, write_arrays
from alexnet.network.config import ConvSpec
from alexnet.training.evaluation import evaluate
from kernels import reference

SIDE, CROP = 12, 8
CONFIG = AugmentConfig(crop_size=CROP)


@pytest.fixture(scope="module")
def ids_store(tmp_path_factory):
    """50 flat images whose every pixel is the image's index; label = index % 7."""
    n = 50
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, SIDE, SIDE, 3)).copy()
    val = images[:23].copy()
    out = tmp_path_factory.mktemp("ids") / "store"
    write_arrays(out, {"train": (images, np.arange(n) % 7), "val": (val, np.arange(23) % 7)},
                 [f"c{i}" for i in range(7)])
    return Store(out)


@pytest.fixture(scope="module")
def random_store(tmp_path_factory):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, SIDE, SIDE, 3), dtype=np.uint8)
    out = tmp_path_factory.mktemp("rand") / "store"
    write_arrays(out, {"train": (images, rng.integers(0, 5, 40))}, [f"c{i}" for i in range(5)])
    return Store(out)


def _ids(x, store):
    """Image indices of a batch of the ids store (no lighting): output + mean = the index."""
    values = x.double() + float(store.mean.mean())
    return values.round().flatten(1).mode(dim=1).values.long().tolist()


def test_each_sample_once_per_epoch_across_replicas(ids_store):
    world, batch = 3, 5
    config = AugmentConfig(crop_size=CROP, lighting_std=0.0)
    seen = {}
    for rank in range(world):
        loader = TrainLoader(ids_store, batch, DEVICE, rank=rank, world=world, seed=5, augment=config,
                             drop_last=False)
        assert len(loader) == 4  # 50 // 3 = 16 per replica: 3 batches of 5 and one of 1
        for epoch in range(2):
            ids = []
            for x, y in loader:
                got = _ids(x, ids_store)
                assert y.tolist() == [i % 7 for i in got]  # labels travel with their images
                ids += got
            seen[rank, epoch] = ids
            assert sorted(ids) == sorted(loader.shard(epoch).tolist())
        loader.close()
    for epoch in range(2):
        all_ids = sum((seen[r, epoch] for r in range(world)), [])
        assert len(all_ids) == len(set(all_ids)) == 48  # disjoint; 50 mod 3 = 2 sit the epoch out
    assert seen[0, 0] != seen[0, 1]  # a new permutation every epoch


def test_drop_last_and_lengths(ids_store):
    assert len(TrainLoader(ids_store, 8, DEVICE, augment=CONFIG)) == 6
    loader = TrainLoader(ids_store, 8, DEVICE, augment=CONFIG, drop_last=False)
    assert len(loader) == 7
    assert [len(y) for _, y in loader] == [8] * 6 + [2]
    with pytest.raises(ValueError, match="no batch"):
        TrainLoader(ids_store, 30, DEVICE, world=2, augment=CONFIG)
    with pytest.raises(ValueError, match="rank"):
        TrainLoader(ids_store, 4, DEVICE, rank=2, world=2, augment=CONFIG)


def _expected(loader, epoch, i):
    """Batch i of `epoch` rebuilt from the loader's definition with the reference op."""
    b = loader.batch_size
    index = np.sort(loader.shard(epoch)[i * b:(i + 1) * b])
    gen = torch.Generator(loader.device).manual_seed(_seed(loader.seed, epoch, loader.rank, i))
    d = draw(len(index), loader.split.images.shape[1:3], loader.augment, loader.device, gen)
    images = torch.from_numpy(loader.split.images[index]).to(loader.device)
    shift = lighting_shift(d.alphas, loader.eigenvalues, loader.eigenvectors)
    x = reference.augment(images, d.offsets, d.flips, shift, loader.mean, CROP, torch.float64)
    return x, torch.from_numpy(loader.split.labels[index])


@pytest.mark.parametrize("dtype,channels_last", [
    (torch.float32, False), (torch.float32, True),
    pytest.param(torch.bfloat16, True, marks=requires_gpu), pytest.param(torch.float16, False, marks=requires_gpu)])
def test_batches_are_the_augmented_rows(random_store, dtype, channels_last):
    loader = TrainLoader(random_store, 6, DEVICE, rank=1, world=2, seed=3, dtype=dtype,
                         channels_last=channels_last, augment=CONFIG, threads=3)
    for i, (x, y) in enumerate(loader):
        assert x.device.type == torch.device(DEVICE).type and y.device == x.device
        assert x.dtype == dtype and y.dtype == torch.int64 and x.shape == (6, 3, CROP, CROP)
        assert x.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        expected, labels = _expected(loader, 0, i)
        atol, rtol = (1e-4, 1e-5) if dtype == torch.float32 else (2.0, 1e-2)  # bf16: 8 bits of values <~ 300
        assert_close_verbose(x.double(), expected, atol=atol, rtol=rtol, check_dtype=True,
                             reason=f"{dtype} batch of pixel values up to ~300 against the float64 augmentation")
        assert torch.equal(y.cpu(), labels)
    assert loader.epoch == 1 and loader.position == 0
    loader.close()


def test_resume_continues_the_same_batches(random_store):
    def run(loader, n):
        out = []
        for x, y in loader:
            out.append((x.clone(), y.clone()))
            if len(out) == n:
                break
        return out

    kw = dict(world=1, seed=11, augment=CONFIG)
    whole = TrainLoader(random_store, 4, DEVICE, **kw)
    reference_run = run(whole, 10) + run(whole, 100)  # 10 batches, then the rest of the epoch
    assert len(reference_run) == 10 and whole.state_dict()["epoch"] == 1
    first = TrainLoader(random_store, 4, DEVICE, **kw)
    part = run(first, 3)
    state = first.state_dict()
    assert (state["epoch"], state["position"]) == (0, 3)
    first.close()
    resumed = TrainLoader(random_store, 4, DEVICE, rank=0, **kw)
    resumed.load_state_dict(state)
    rest = run(resumed, 100)
    assert len(part) + len(rest) == 10
    for (x1, y1), (x2, y2) in zip(reference_run, part + rest):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert resumed.state_dict()["epoch"] == 1
    other = TrainLoader(random_store, 4, DEVICE, world=1, seed=12, augment=CONFIG)
    assert not torch.equal(run(other, 1)[0][0], reference_run[0][0])  # another seed, another run
    with pytest.raises(ValueError, match="batch_size"):
        TrainLoader(random_store, 5, DEVICE, **kw).load_state_dict(state)


def test_stopping_early_stops_the_reader_thread(random_store):
    loader = TrainLoader(random_store, 2, DEVICE, augment=CONFIG, prefetch=1)
    for _ in loader:
        break
    assert not any(t.name == "alexnet-data" and t.is_alive() for t in threading.enumerate())
    assert loader.position == 1 and loader.epoch == 0
    loader.close()


def test_read_rows_with_and_without_pread(random_store):
    split = random_store.split("train")
    index = np.array([7, 3, 39, 0, 7])
    loader = EvalLoader(random_store, 4, "cpu", split="train", crop_size=CROP)
    for fd in (loader.fd, None):
        out = np.zeros((5, SIDE, SIDE, 3), np.uint8)
        read_rows(split, fd, index, out)
        np.testing.assert_array_equal(out, split.images[index])
    loader.close()


def test_eval_loader_covers_the_split_in_order(ids_store):
    got = []
    for rank in range(2):
        loader = EvalLoader(ids_store, 5, DEVICE, rank=rank, world=2, crop_size=CROP)
        assert len(loader) == 3  # 12 and 11 of the 23 images, in batches of 5
        for images, labels in loader:
            assert images.dtype == torch.uint8 and images.shape[1:] == (SIDE, SIDE, 3)
            ids = images[:, 0, 0, 0].tolist()
            assert labels.tolist() == [i % 7 for i in ids]
            got += ids
        loader.close()
    assert got == list(range(23))


@pytest.mark.parametrize("ops", ["reference", "triton"])
def test_the_augmentation_follows_ops_not_the_device(random_store, monkeypatch, ops):
    """config.ops picks the augmentation as it picks the layers (alexnet/network/layers.py load_ops):
    "reference" runs kernels.reference.augment even where the Triton kernel could run (on the
    CPU through the interpreter, on a GPU natively); "triton" runs the alexnet_triton op, and
    with the kernel available the op's Triton kernel, not the reference inside it (which would
    call reference.augment). Training batches and every evaluation view alike."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the Triton kernel can run on either device
    calls = []

    def spy(name, fn):
        def counted(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)
        return counted

    monkeypatch.setattr(kernels, "augment", spy("triton", kernels.augment))
    monkeypatch.setattr(reference, "augment", spy("reference", reference.augment))
    train = TrainLoader(random_store, 6, DEVICE, seed=3, augment=CONFIG, ops=ops, threads=1)
    x, _ = next(iter(train))
    assert calls == [ops]
    expected, _ = _expected(train, 0, 0)
    calls.clear()  # _expected called the reference itself
    assert_close_verbose(x.double(), expected, rtol=0, atol=1e-4, check_dtype=True,
                         reason="fp32 output of fp32 math, values <= 255")
    train.close()
    val = EvalLoader(random_store, 20, DEVICE, split="train", crop_size=CROP, ops=ops, threads=1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * CROP * CROP, 5)).to(DEVICE)
    assert evaluate(model, val, "ten")[0].item() == len(random_store.split("train"))
    assert calls == [ops] * (10 * len(val))  # ten views of each of the 2 batches
    val.close()


def test_given_conv1_the_batches_are_views_of_its_padded_input(random_store, monkeypatch):
    """With the model's conv1 ("triton" ops, channels_last) each batch is the (B, 3, CROP,
    CROP) view of conv1's zero-padded input, the same values as without it, bit for bit."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    conv1 = ConvSpec(4, 3, stride=2, padding=1)
    loaders = [TrainLoader(random_store, 6, DEVICE, seed=3, channels_last=True, augment=CONFIG, ops="triton",
                           conv1=c, threads=1) for c in (conv1, None)]
    (x, labels), (plain, plain_labels) = (next(iter(loader)) for loader in loaders)
    assert x._base is not None and x._base.shape == (6, 4, CROP + 2, CROP + 2)  # 3x3 stride 2: 10 columns
    assert x.shape == plain.shape and torch.equal(x, plain) and torch.equal(labels, plain_labels)
    assert_close_verbose(x.double(), _expected(loaders[0], 0, 0)[0], rtol=0, atol=1e-4, check_dtype=True,
                         reason="fp32 output of fp32 math, values <= 255")
    for loader in loaders:
        loader.close()

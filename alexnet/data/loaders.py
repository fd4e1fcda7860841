"""Batches from a prepared store to the device: `TrainLoader` (augmented) and `EvalLoader`.

    store = Store("/data/imagenet-256")
    train = TrainLoader(store, batch_size=128, device="cuda", rank=r, world=w, seed=0,
                        dtype=torch.bfloat16, channels_last=True)
    for epoch in range(90):
        for images, labels in train:        # (128, 3, 224, 224) bf16, (128,) int64, on the GPU
            ...
        ckpt["data"] = train.state_dict()   # (epoch, position): resume continues the same order

Pipeline, per batch: the rows are read from the store file by a pool of threads (pread into
pinned memory; the GIL is released) in a background thread that runs `prefetch` batches
ahead; the batch is copied to the GPU on a side stream while the previous batch trains;
the augmentation turns the uint8 crop into the model's input on the current stream. Which
augmentation runs follows `ops`, the model's config.ops (alexnet/network/layers.py load_ops, the one
op-selection rule): "triton" the augmentation kernel, "reference" plain PyTorch. Given the
model's `conv1` (config.convs[0]) with "triton" ops and channels_last, the kernel writes the
batch straight into conv1's zero-padded input buffer and the loader yields the (B, 3, 224, 224)
view of it, which conv1 reads with no copy (alexnet/data/augment.py crop_batch). On a CPU
device the same runs without pinned memory or streams.

Order and sharding: each epoch has one permutation of the split, drawn from (seed, epoch),
the same on every data-parallel replica; replica `rank` of `world` takes the rank-th of
`world` equal contiguous parts of it (the last N mod world samples of the permutation sit
out that epoch), so replicas see disjoint samples and the same number of batches. The
augmentation draws of a batch come from a generator seeded with (seed, epoch, rank, batch),
so a run resumed from `state_dict()` sees exactly the batches it would have seen.
Within a batch, rows are read in file order (the batch is a set; this helps read-ahead).
"""
from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from alexnet.base.seeds import mixed_seed
from alexnet.data.augment import AugmentConfig, crop_batch, draw, lighting_shift
from alexnet.data.store import Split, Store
from alexnet.network.config import ConvSpec, resolve_ops
from kernels import cdiv

_END = object()


class _Slot:
    """Host buffers for one batch (pinned when the device is a GPU)."""

    def __init__(self, batch_size: int, image_shape, pin: bool):
        self.images = torch.empty((batch_size, *image_shape), dtype=torch.uint8, pin_memory=pin)
        self.labels = torch.empty(batch_size, dtype=torch.int64, pin_memory=pin)
        self.n = 0
        self.copied: torch.cuda.Event | None = None  # the device copy reading this slot


def read_rows(split: Split, fd: int | None, index: np.ndarray, out: np.ndarray) -> None:
    """out[j] = split.images[index[j]]: one pread per row straight into `out` (no page
    faults on a mapping, one request per row when the store is on disk), or a copy from the
    memory map where os.preadv does not exist."""
    if fd is None:
        out[:] = split.images[index]
        return
    images = split.images
    row_bytes = out[0].nbytes
    for j, i in enumerate(index):
        view = memoryview(out[j]).cast("B")
        pos, got = images.offset + int(i) * row_bytes, 0
        while got < row_bytes:
            n = os.preadv(fd, [view[got:]], pos + got)
            if n == 0:
                raise EOFError(f"{images.filename}: row {i} is past the end of the file")
            got += n


class _Batches:
    """Iterator over (device images uint8 (B, S, S, 3), device labels) for a list of index
    arrays: a producer thread gathers into host slots, the consumer copies them to the device."""

    def __init__(self, loader: "_Loader", batches: list[np.ndarray]):
        self.loader, self.batches = loader, batches
        self.ready: queue.Queue = queue.Queue()
        self.free: queue.Queue = queue.Queue()
        for slot in loader.slots():
            self.free.put(slot)
        self.stop = threading.Event()
        self.pending = None
        self.thread = threading.Thread(target=self._produce, daemon=True, name="alexnet-data")
        self.thread.start()

    def _produce(self):
        loader = self.loader
        try:
            for index in self.batches:
                slot = None
                while slot is None:
                    if self.stop.is_set():
                        return
                    try:
                        slot = self.free.get(timeout=0.1)
                    except queue.Empty:
                        pass
                if slot.copied is not None:
                    slot.copied.synchronize()  # the previous device copy out of this slot is done
                index = np.sort(index)
                n = slot.n = len(index)
                out = slot.images.numpy()[:n]
                parts = np.array_split(np.arange(n), min(loader.threads, n))
                jobs = [loader.pool.submit(read_rows, loader.split, loader.fd, index[p], out[p[0]:p[-1] + 1])
                        for p in parts if len(p)]
                slot.labels.numpy()[:n] = loader.split.labels[index]
                for job in jobs:
                    job.result()
                self.ready.put(slot)
            self.ready.put(_END)
        except BaseException as e:  # handed to the consumer, which raises it
            self.ready.put(e)

    def _stage(self):
        """Take the next gathered batch and start its copy to the device."""
        slot = self.ready.get()
        if slot is _END or isinstance(slot, BaseException):
            return slot
        device, n = self.loader.device, slot.n
        if device.type == "cuda":
            stream = self.loader.copy_stream
            with torch.cuda.stream(stream):
                images = slot.images[:n].to(device, non_blocking=True)
                labels = slot.labels[:n].to(device, non_blocking=True)
                slot.copied = torch.cuda.Event()
                slot.copied.record(stream)
            event = slot.copied
        else:
            images, labels, event = slot.images[:n].to(device, copy=True), slot.labels[:n].clone(), None
        self.free.put(slot)  # on the GPU, the producer waits for `copied` before refilling it
        return images, labels, event

    def __iter__(self):
        return self

    def __next__(self):
        if self.pending is None:
            self.pending = self._stage()
        current = self.pending
        if current is _END:
            self.close()
            raise StopIteration
        if isinstance(current, BaseException):
            self.close()
            raise current
        self.pending = self._stage()  # the next batch's copy overlaps this batch's compute
        images, labels, event = current
        if event is not None:
            stream = torch.cuda.current_stream(self.loader.device)
            stream.wait_event(event)
            images.record_stream(stream)  # allocated on the copy stream, used on this one
            labels.record_stream(stream)
        return images, labels

    def close(self):
        self.stop.set()
        self.thread.join()


class _Loader:
    """What both loaders share: the split, the device-side mean image, host slots, threads."""

    def __init__(self, store: Store, split: str, batch_size: int, device, *, rank: int = 0, world: int = 1,
                 dtype: torch.dtype = torch.float32, channels_last: bool = False, crop_size: int = 224,
                 ops: str = "auto", threads: int | None = None, prefetch: int = 3):
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, world), got rank={rank}, world={world}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.store, self.split = store, store.split(split)
        self.batch_size, self.device = batch_size, torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.rank, self.world = rank, world
        self.dtype, self.channels_last, self.crop_size = dtype, channels_last, crop_size
        self.ops = resolve_ops(ops)  # whose augmentation makes the model's input (crop_batch)
        self.mean = torch.from_numpy(store.mean).to(self.device)  # float32 (S, S, 3)
        self.threads = threads or min(8, os.cpu_count() or 1)
        self.prefetch = prefetch
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="alexnet-read")
        self.fd = os.open(self.split.images.filename, os.O_RDONLY) if hasattr(os, "preadv") else None
        self.copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._slots: list[_Slot] | None = None
        self._live: _Batches | None = None

    def slots(self) -> list[_Slot]:
        if self._slots is None:
            pin = self.device.type == "cuda"
            self._slots = [_Slot(self.batch_size, self.split.images.shape[1:], pin) for _ in range(self.prefetch + 2)]
        return self._slots

    def _batches(self, batches: list[np.ndarray]) -> _Batches:
        if self._live is not None:  # one live iterator at a time: it owns the slots
            self._live.close()
        self._live = _Batches(self, batches)
        return self._live

    def close(self):
        if self._live is not None:
            self._live.close()
        self.pool.shutdown()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _seed(*words: int) -> int:
    return mixed_seed([int(w) for w in words])


class TrainLoader(_Loader):
    """Augmented training batches (see the module docstring); `len()` batches per epoch."""

    def __init__(self, store: Store, batch_size: int, device, *, rank: int = 0, world: int = 1, seed: int = 0,
                 dtype: torch.dtype = torch.float32, channels_last: bool = False, drop_last: bool = True,
                 augment: AugmentConfig = AugmentConfig(), split: str = "train", ops: str = "auto",
                 conv1: ConvSpec | None = None, threads: int | None = None, prefetch: int = 3):
        super().__init__(store, split, batch_size, device, rank=rank, world=world, dtype=dtype,
                         channels_last=channels_last, crop_size=augment.crop_size, ops=ops, threads=threads,
                         prefetch=prefetch)
        self.seed, self.drop_last, self.augment = seed, drop_last, augment
        self.conv1 = conv1  # the model's conv1 (config.convs[0]): crop_batch may write its padded input
        self.eigenvalues = torch.from_numpy(store.pca.eigenvalues).float().to(self.device)
        self.eigenvectors = torch.from_numpy(store.pca.eigenvectors).float().to(self.device)
        self.generator = torch.Generator(self.device)
        self.epoch, self.position = 0, 0
        if len(self) == 0:
            raise ValueError(f"{len(self.split)} samples over {world} replicas make no batch of {batch_size}")

    @property
    def shard_size(self) -> int:
        return len(self.split) // self.world

    def __len__(self) -> int:
        full, rest = divmod(self.shard_size, self.batch_size)
        return full + (rest > 0 and not self.drop_last)

    def shard(self, epoch: int) -> np.ndarray:
        """This replica's sample indices for `epoch`, in the order they are used."""
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.split))
        return perm[self.rank * self.shard_size:(self.rank + 1) * self.shard_size]

    def __iter__(self):
        """The remaining batches of the current epoch; afterwards the epoch counter moves on."""
        epoch, start = self.epoch, self.position
        shard, b = self.shard(epoch), self.batch_size
        batches = [shard[i * b:(i + 1) * b] for i in range(start, len(self))]
        size = self.split.images.shape[1:3]
        it = self._batches(batches)
        try:
            for i, (images, labels) in enumerate(it, start):
                self.generator.manual_seed(_seed(self.seed, epoch, self.rank, i))
                d = draw(len(labels), size, self.augment, self.device, self.generator)
                shift = lighting_shift(d.alphas, self.eigenvalues, self.eigenvectors)
                x = crop_batch(images, d.offsets, d.flips, shift, self.mean, self.crop_size, self.dtype,
                               self.channels_last, self.ops, self.conv1)
                self.position = i + 1
                yield x, labels
        finally:
            it.close()  # also when the caller stops early: the reader thread stops
        self.epoch, self.position = epoch + 1, 0

    def state_dict(self) -> dict:
        epoch, position = (self.epoch + 1, 0) if self.position >= len(self) else (self.epoch, self.position)
        return {"epoch": epoch, "position": position, "seed": self.seed, "batch_size": self.batch_size,
                "world": self.world, "samples": len(self.split), "drop_last": self.drop_last}

    def load_state_dict(self, state: dict) -> None:
        """Continue where `state` was taken; the sharding must be the same (rank may differ:
        every replica is at the same place)."""
        for key in ("seed", "batch_size", "world", "samples", "drop_last"):
            mine = self.state_dict()[key]
            if state[key] != mine:
                raise ValueError(f"cannot resume: the saved loader has {key}={state[key]!r}, this one {mine!r}")
        if not 0 <= state["position"] <= len(self):
            raise ValueError(f"position {state['position']} outside 0..{len(self)}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class EvalLoader(_Loader):
    """The split in order, as uint8 device batches (B, S, S, 3) with labels, for
    `alexnet.training.evaluation` (which crops its views with the loader's ops, dtype and memory format);
    replica `rank` gets the rank-th of `world` near-equal parts."""

    def __init__(self, store: Store, batch_size: int, device, *, split: str = "val", rank: int = 0, world: int = 1,
                 dtype: torch.dtype = torch.float32, channels_last: bool = False, crop_size: int = 224,
                 ops: str = "auto", threads: int | None = None, prefetch: int = 2):
        super().__init__(store, split, batch_size, device, rank=rank, world=world, dtype=dtype,
                         channels_last=channels_last, crop_size=crop_size, ops=ops, threads=threads,
                         prefetch=prefetch)
        self.indices = np.array_split(np.arange(len(self.split)), world)[rank]

    def __len__(self) -> int:
        return cdiv(len(self.indices), self.batch_size)

    def __iter__(self):
        b = self.batch_size
        return self._batches([self.indices[i * b:(i + 1) * b] for i in range(len(self))])

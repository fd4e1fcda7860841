"""The training step, optionally captured whole in a CUDA graph (`--cuda-graph`).

Launching the step's ~90 kernels costs the CPU several milliseconds (bench/host_step.py);
a CUDA graph replays all of them (forward, backward, update) with one launch. The first
`warmup` steps run plainly (Triton compiles and autotunes, cuDNN picks its algorithms,
the caching allocator settles); the next call captures `step.training_step` on static
input buffers and every later call copies its batch into them and replays. What a replay
needs is already on the device: the learning rate is a device tensor of FlatPaperSGD
(PaperSGD's is a Python float, so a change of lr re-captures), the dropout streams' call
count is pinned to one device tensor before the capture (ColumnDropout.pin: each call copies
the op's next count there, so every replay advances it), and the loss's finiteness is and-ed
into a device flag. A replay's outputs (loss, wrong guesses) are the graph's static tensors,
overwritten by the next replay.

The plain step runs instead, with a message saying why, where capture cannot work: no CUDA
device (the CPU, where the tests run this same code path), the two-column model (its
collectives stage through the host under gloo), a batch of another shape (an epoch's last
short batch), or a capture that raised.
"""
from __future__ import annotations

import torch

from kernels import clone_padded, refill_padded

__all__ = ["StepRunner"]


class StepRunner:
    """Calls `training_step(model, optimizer, images, labels, finite, sync)`, captured in a
    CUDA graph after `warmup` plain calls when `capture` is on and possible."""

    def __init__(self, step_fn, model, optimizer, finite: torch.Tensor, sync=None, *, capture: bool = False,
                 warmup: int = 3, distributed: bool = False, log=print):
        self.step_fn, self.model, self.optimizer, self.finite, self.sync = step_fn, model, optimizer, finite, sync
        self.warmup, self.log = warmup, log
        self.calls = 0
        self.graph = None
        self.static = None  # (images, labels, loss, wrong)
        self.captured_lr = None
        self.capture = capture and self._capturable(finite.device, distributed)

    def _capturable(self, device: torch.device, distributed: bool) -> bool:
        why = None
        if device.type != "cuda":
            why = f"the step runs on {device}, and CUDA graphs need a CUDA device"
        elif distributed:
            why = "the two-column model's collectives (gloo stages them through the host) cannot be captured"
        if why:
            self.log(f"  --cuda-graph: {why}; running the plain step")
            return False
        return True

    def plain(self, images, labels):
        return self.step_fn(self.model, self.optimizer, images, labels, self.finite, self.sync)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor):
        self.calls += 1
        if not self.capture or self.calls <= self.warmup:
            return self.plain(images, labels)
        lr = self.optimizer.param_groups[0]["lr"]
        if self.graph is not None and lr != self.captured_lr:
            self.graph = None  # PaperSGD bakes lr into the graph; FlatPaperSGD's fill_ too: re-capture
        if self.graph is None:
            if not self._capture(images, labels):
                return self.plain(images, labels)
            lr = self.captured_lr
        static_images, static_labels, loss, wrong = self.static
        if images.shape != static_images.shape or labels.shape != static_labels.shape:
            return self.plain(images, labels)  # a short last batch: its own shapes, uncaptured
        if not refill_padded(static_images, images):  # conv1's padded buffer whole, else the batch
            static_images.copy_(images, non_blocking=True)
        static_labels.copy_(labels, non_blocking=True)
        self.graph.replay()
        return loss, wrong

    def _capture(self, images, labels) -> bool:
        """Capture one step on copies of this batch (the capture runs nothing: the caller
        replays). Returns False, and turns capture off, if it fails."""
        dropout = getattr(self.model, "dropout", None)
        if hasattr(dropout, "pin"):
            dropout.pin()  # the graph reads and advances the dropout call count at one address
        try:
            # conv1's padded input (the augmentation's registered view) stays a view of a padded
            # buffer, so the captured conv1 reads it with no copy of its own
            static_images = clone_padded(images)
            static_images = images.clone() if static_images is None else static_images
            static_labels = labels.clone()
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                loss, wrong = self.step_fn(self.model, self.optimizer, static_images, static_labels, self.finite,
                                           self.sync)
        except RuntimeError as err:
            self.log(f"  --cuda-graph: capture failed ({type(err).__name__}: {str(err).splitlines()[0]}); "
                     "running the plain step from here on")
            self.capture, self.graph = False, None
            if hasattr(self.optimizer, "lr_filled"):
                self.optimizer.lr_filled = None  # a fill_ recorded in the failed capture never ran
            return False
        self.graph, self.static = graph, (static_images, static_labels, loss, wrong)
        self.captured_lr = self.optimizer.param_groups[0]["lr"]
        self.log(f"  --cuda-graph: step captured after {self.calls - 1} plain steps; replaying it from here on")
        return True

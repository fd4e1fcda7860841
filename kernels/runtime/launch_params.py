"""Launch parameters of the memory-bound kernels: LRN, max-pool, dropout, the SGD step and
the augmentation. One table per family, each row with its reason, and one function per
family that picks a row; the launchers ask here and decide nothing inline. (The convolution
keeps its own tables, kernels/conv/configs.py.)

Every family has an interpreter row: Triton's CPU interpreter runs a program's block as numpy
arrays, so there the blocks only need to be small enough to keep the tests quick, and
num_warps means nothing. GPU rows were chosen for an H100 (bench/RESULTS.md says which were
swept and which are still predictions). `interpreting()` (from kernels/runtime/checks.py) is public
here: whether launches go to the interpreter, which alexnet.network.layers asks too.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from .checks import interpreting

__all__ = ["interpreting", "Flat", "DROPOUT", "SGD", "SGD_GPU_BLOCK", "AUGMENT", "dropout_launch", "sgd_launch",
           "augment_launch", "lrn_blocks", "maxpool_blocks"]


@dataclass(frozen=True)
class Flat:
    """A 1-D kernel's launch: `block` consecutive elements per program, `num_warps` warps."""
    block: int
    num_warps: int
    reason: str


# ------------------------------------------------------------------ flat (1-D) kernels
DROPOUT = {
    "interpreter": Flat(2048, 4, "quick on the CPU interpreter"),
    "small": Flat(2048, 4, "under 2**23 elements (an fc layer's activations): more programs than SMs "
                           "(4096-element blocks ran only 128 programs at the fc shape, under the 132 SMs)"),
    "large": Flat(8192, 8, "2**23 elements or more: big blocks amortise the Philox setup"),
}
DROPOUT_LARGE = 1 << 23  # elements from which DROPOUT["large"] applies

SGD_GPU_BLOCK = 4096  # also the padding of alexnet.training.optim's flat buffers: whole blocks, one launch
SGD = {
    "interpreter": Flat(1024, 4, "quick on the CPU interpreter; divides the GPU block, so the flat buffers "
                                 "padded for the GPU are whole blocks here too"),
    "gpu": Flat(SGD_GPU_BLOCK, 8, "one pass over 61 M parameters: long blocks, 8 warps to keep loads in flight"),
}

AUGMENT = {
    "interpreter": Flat(1024, 4, "quick on the CPU interpreter"),
    "gpu": Flat(2048, 4, "a 224x224x3 crop is 147 blocks per image: enough programs at any batch"),
}


def dropout_launch(n_elem: int) -> Flat:
    if interpreting():
        return DROPOUT["interpreter"]
    return DROPOUT["small"] if n_elem < DROPOUT_LARGE else DROPOUT["large"]


def sgd_launch() -> Flat:
    return SGD["interpreter"] if interpreting() else SGD["gpu"]


def augment_launch() -> Flat:
    return AUGMENT["interpreter"] if interpreting() else AUGMENT["gpu"]


# ------------------------------------------------------------------ tiled (pixels x channels) kernels
# (BLOCK_P, BLOCK_C, num_warps). The rule for both families: the tile's long side goes along
# the contiguous dim (channels in NHWC, pixels in NCHW), so each warp's loads are wide.
def lrn_blocks(chan_per_group: int, fmt: torch.memory_format) -> tuple[int, int, int]:
    """LRN (forward and backward). BLOCK_C is a multiple of 8 (the kernel moves channels in
    planes of 8) and divides the group's channels when it can (conv1's 48 per column: 16)."""
    if interpreting():  # quick on the CPU interpreter
        return 16, max(8, min(32, triton.next_power_of_2(chan_per_group))), 4
    if fmt == torch.channels_last:  # channels contiguous: up to 64 of them, 2048 elements a tile
        block_c = next((b for b in (64, 32, 16, 8) if chan_per_group % b == 0), None)
        block_c = block_c or max(8, min(64, triton.next_power_of_2(chan_per_group)))
        return max(16, 2048 // block_c), block_c, 4
    return 128, 8, 4  # NCHW: pixels contiguous, 128 of them by the minimum 8 channels


def maxpool_blocks(n_chan: int, fmt: torch.memory_format, backward: bool) -> tuple[int, int, int]:
    """Max-pool. Picked with bench/sweep_memory.py on an H100 (bench/RESULTS.md)."""
    if interpreting():  # quick on the CPU interpreter
        return 16, min(32, triton.next_power_of_2(n_chan)), 4
    if fmt == torch.channels_last:
        block_c = 64 if n_chan % 64 == 0 else min(32, triton.next_power_of_2(n_chan))
        # backward: 64 channels when C allows (layer 1 91.6 -> 75.4 us); forward: (32, 32, 8)
        # (layer 1 bf16 97.7 -> 61.8 us), both from the sweep.
        return (2048 // block_c, block_c, 4) if backward else (32, min(block_c, 32), 8)
    return 128, min(8, triton.next_power_of_2(n_chan)), (4 if backward else 8)

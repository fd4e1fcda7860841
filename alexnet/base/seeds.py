"""Independent 63-bit seeds from a few integers: the one place numpy's SeedSequence mixes
them (the dropout streams of alexnet/network/layers.py, the augmentation draws of alexnet/data/loaders.py)."""
from __future__ import annotations

import numpy as np

__all__ = ["mixed_seed"]


def mixed_seed(entropy, spawn_key: tuple[int, ...] = ()) -> int:
    """A seed for torch (63 bits, non-negative) mixed from `entropy` (an int or a list of
    them) and `spawn_key`: distinct inputs give independent streams."""
    state = np.random.SeedSequence(entropy, spawn_key=spawn_key).generate_state(1, np.uint64)
    return int(state[0]) >> 1

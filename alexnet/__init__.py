"""AlexNet (Krizhevsky, Sutskever & Hinton, NIPS 2012) built from the project's kernels.

    alexnet.config       AlexNetConfig: the paper's architecture, ablation switches, ops choice
    alexnet.layers       thin modules over the ops (conv, LRN, pooling, FC, per-column dropout)
    alexnet.model        AlexNet: the whole network on one device (columns as groups)
    alexnet.distributed  torchrun setup, backend choice, process groups (k replicas x 2 columns)
    alexnet.parallel     ShardedAlexNet: one column per rank; checkpoint conversion; bytes per step
"""
from .config import AlexNetConfig
from .model import AlexNet

__all__ = ["AlexNet", "AlexNetConfig"]

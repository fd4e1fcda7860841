"""AlexNet (Krizhevsky, Sutskever & Hinton, NIPS 2012) built from the project's kernels.

    alexnet.network.config       AlexNetConfig: the paper's architecture, ablation switches, ops choice
    alexnet.network.layers       thin modules over the ops (conv, LRN, pooling, FC, per-column dropout)
    alexnet.network.model        AlexNet: the whole network on one device (columns as groups)
    alexnet.network.distributed  torchrun setup, backend choice, process groups (k replicas x 2 columns)
    alexnet.network.parallel     ShardedAlexNet: one column per rank; checkpoint conversion; bytes per step
"""
from alexnet.network.config import AlexNetConfig
from alexnet.network.model import AlexNet

__all__ = ["AlexNet", "AlexNetConfig"]

"""The network's hyper-parameters as a dataclass, with the paper's values as defaults.

Every constant traces to Krizhevsky, Sutskever & Hinton (NIPS 2012); section numbers below
refer to that paper (see ../shared/PAPER.md in the project notes for the full list).

Two facts the paper gets slightly wrong, kept as the paper intends:
- Input 224x224 with an 11x11 stride-4 conv1 gives the stated 55x55 maps only with zero
  padding 2 (Caffe instead crops 227x227). We keep 224 + padding 2.
- The text's neuron count for conv1 is 253,440, but 55 * 55 * 96 = 290,400; the other counts
  (186,624-64,896-64,896-43,264-4096-4096-1000) match the network. `layer_shapes` gives the
  real sizes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch

__all__ = ["ConvSpec", "PAPER_CONVS", "ONE_COLUMN_CONVS", "Layer", "LAYERS", "CONV_LAYERS", "FC_LAYERS",
           "EXCHANGE_POINTS", "BIAS_ONE_LAYERS", "split_dim", "resolve_ops", "triton_unsupported", "AlexNetConfig",
           "layer_shapes", "input_shape"]


@dataclass(frozen=True)
class Layer:
    """One layer of the network's structure (Figure 2), whatever its size: the one table that
    model.py (construction, forward), parallel.py (exchanges, checkpoint shards) and
    `layer_shapes` read. Sizes live in the ConvSpec rows and AlexNetConfig.

    exchange_before: the two columns meet just before this layer (its kernels see both
    columns' maps, section 3.2). split: how its (weight, bias) divide between the columns
    (the dim, or None when each column holds a copy).
    """
    name: str
    lrn: bool = False                   # LRN after the nonlinearity (section 3.3)
    pool: bool = False                  # max-pooling after (section 3.4)
    exchange_before: bool = False
    bias_one: bool = False              # bias initialised to 1 (section 5)
    dropout: bool = False               # dropout after (section 4.2)
    split: tuple[int | None, int | None] = (0, 0)


# Section 3.5 / Figure 2. Section 5: "We initialized the neuron biases in the second, fourth,
# and fifth convolutional layers, as well as in the fully-connected hidden layers, with the
# constant 1". fc8 is split by its inputs (W8's columns) and its bias is replicated (see parallel.py).
LAYERS = (
    Layer("conv1", lrn=True, pool=True),
    Layer("conv2", lrn=True, pool=True, bias_one=True),
    Layer("conv3", exchange_before=True),
    Layer("conv4", bias_one=True),
    Layer("conv5", pool=True, bias_one=True),
    Layer("fc6", exchange_before=True, bias_one=True, dropout=True),
    Layer("fc7", exchange_before=True, bias_one=True, dropout=True),
    Layer("fc8", split=(1, None)),
)
CONV_LAYERS = LAYERS[:5]
FC_LAYERS = LAYERS[5:]
EXCHANGE_POINTS = tuple(layer.name for layer in LAYERS if layer.exchange_before)  # conv3, fc6, fc7
BIAS_ONE_LAYERS = tuple(layer.name for layer in LAYERS if layer.bias_one)
_BY_NAME = {layer.name: layer for layer in LAYERS}


def split_dim(param: str) -> int | None:
    """The dim along which state-dict tensor `param` (e.g. "fc8.weight") divides between the
    columns, or None when each column holds a copy; tensors outside the table split along 0."""
    layer, _, kind = param.rpartition(".")
    if layer not in _BY_NAME:
        return 0
    weight_dim, bias_dim = _BY_NAME[layer].split
    return weight_dim if kind == "weight" else bias_dim


@dataclass(frozen=True)
class ConvSpec:
    """One row of the paper's layer table (section 3.5, Figure 2).

    groups=2 means each column's kernels see only their own column's input maps (the
    paper's "kernels ... connected only to those kernel maps ... on the same GPU"); on one
    device that is exactly a grouped convolution.
    """
    out_channels: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    groups: int = 1


# Section 3.5: 96 11x11x3 /4, 256 5x5x48, 384 3x3x256 (cross-connected), 384 3x3x192, 256 3x3x192.
PAPER_CONVS = (
    ConvSpec(96, 11, stride=4, padding=2),          # conv1; padding 2 makes 224 -> 55 (see above)
    ConvSpec(256, 5, padding=2, groups=2),          # conv2
    ConvSpec(384, 3, padding=1),                    # conv3: takes all 256 maps of both columns
    ConvSpec(384, 3, padding=1, groups=2),          # conv4
    ConvSpec(256, 3, padding=1, groups=2),          # conv5
)

# The paper's "net with half as many kernels in each convolutional layer trained on one GPU"
# (section 3.2), one column and no groups. Its footnote 2: conv5 (and the FC layers) keep
# their full size, so that both nets have about the same number of parameters.
ONE_COLUMN_CONVS = (
    ConvSpec(48, 11, stride=4, padding=2),
    ConvSpec(128, 5, padding=2),
    ConvSpec(192, 3, padding=1),
    ConvSpec(192, 3, padding=1),
    ConvSpec(256, 3, padding=1),
)


def triton_unsupported() -> str | None:
    """Why the Triton kernels cannot run on this process's CUDA device (its current one), or
    None (also without CUDA): below compute capability 8.0, what Triton supports (kernels'
    device spec, kernels/runtime/device.py)."""
    if not torch.cuda.is_available():
        return None
    from kernels import device_spec, triton_refusal

    return triton_refusal(device_spec(torch.device("cuda")))


def resolve_ops(ops: str) -> str:
    """config.ops made concrete for this machine: "auto" is "triton" when CUDA is available and
    its device runs the Triton kernels (`triton_unsupported`), else "reference" (what each choice
    runs: alexnet/network/layers.py load_ops, the op-selection rule)."""
    if ops == "auto":
        return "triton" if torch.cuda.is_available() and triton_unsupported() is None else "reference"
    if ops not in ("triton", "reference"):
        raise ValueError(f"ops must be 'triton', 'reference' or 'auto', got {ops!r}")
    return ops


def uses_kernels(ops: str) -> bool:
    """Whether an ops choice ("triton", "reference" or "auto", resolved as resolve_ops does)
    runs the project's kernels (the alexnet_triton custom ops, kernels/), not torch's own ops:
    the one place a run asks which of the two it is."""
    return resolve_ops(ops) == "triton"


@dataclass(frozen=True)
class AlexNetConfig:
    """AlexNet's architecture; defaults are the paper's network.

    Ablation switches (paper's value first): `lrn` (section 3.3), `overlap_pool` (3x3/2 vs
    2x2/2, section 3.4), `activation` ("relu" vs "tanh", section 3.1), `columns` (2: the
    two-GPU net; 1: the one-GPU net with half the kernels, section 3.2).

    Execution (no effect on the function computed): `ops` picks the functions the layers, the
    augmentation and the optimizer call ("triton": the alexnet_triton custom ops, whose
    tensors' device picks Triton or the reference inside; "reference": torch's own ops;
    "auto": triton when CUDA is available, else reference; the rule: alexnet/network/layers.py
    load_ops); `channels_last`
    (None: on when CUDA is available); `dropout_seed` seeds the per-column dropout streams
    (None: drawn from torch's generator when the model is built).
    """
    num_classes: int = 1000
    in_channels: int = 3
    image_size: int = 224
    columns: Literal[1, 2] = 2
    fc_features: int = 4096               # fc6 and fc7 (section 3.5)
    conv_width: float = 1.0               # fraction of the paper's kernels per conv layer (<1: mini-models in tests)
    activation: Literal["relu", "tanh"] = "relu"
    lrn: bool = True                      # after the ReLU of conv1 and conv2 (section 3.3)
    lrn_size: int = 5                     # n
    lrn_alpha: float = 1e-4               # not divided by n (PyTorch and Caffe divide it)
    lrn_beta: float = 0.75
    lrn_k: float = 2.0
    overlap_pool: bool = True             # z = 3, s = 2 (section 3.4); False: z = s = 2
    dropout: float = 0.5                  # fc6 and fc7 (section 4.2)
    init_std: float = 0.01                # weights ~ N(0, 0.01) (section 5)
    init_bias_one: float = 1.0            # value of the BIAS_ONE_LAYERS biases; others are 0
    ops: Literal["triton", "reference", "auto"] = "auto"
    channels_last: bool | None = None
    dropout_seed: int | None = None

    def __post_init__(self):
        if self.activation not in ("relu", "tanh"):
            raise ValueError(f"activation must be 'relu' or 'tanh', got {self.activation!r}")
        if self.ops not in ("triton", "reference", "auto"):
            raise ValueError(f"ops must be 'triton', 'reference' or 'auto', got {self.ops!r}")
        if self.columns not in (1, 2):
            raise ValueError(f"columns must be 1 or 2, got {self.columns!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not 0.0 < self.conv_width <= 1.0:
            raise ValueError(f"conv_width must be in (0, 1], got {self.conv_width!r}")
        if self.fc_features % self.columns:
            raise ValueError(f"fc_features={self.fc_features} must split evenly into {self.columns} columns")
        layer_shapes(self)  # raises if the image is too small for the network

    @property
    def convs(self) -> tuple[ConvSpec, ...]:
        convs = PAPER_CONVS if self.columns == 2 else ONE_COLUMN_CONVS
        if self.conv_width == 1.0:
            return convs
        # whole kernels per column, at least one: the layer structure (groups, columns) is kept
        return tuple(replace(spec, out_channels=2 * max(1, round(spec.out_channels * self.conv_width / 2)))
                     for spec in convs)

    @property
    def pool(self) -> tuple[int, int]:
        """(window, stride) of the max-pooling after conv1, conv2 and conv5."""
        return (3, 2) if self.overlap_pool else (2, 2)

    @property
    def lrn_params(self) -> dict:
        return dict(size=self.lrn_size, alpha=self.lrn_alpha, beta=self.lrn_beta, k=self.lrn_k)

    @property
    def fc6_in(self) -> int:
        """Inputs of fc6: conv5's maps after pooling, flattened (256 * 6 * 6 = 9216)."""
        return math.prod(layer_shapes(self)["pool5"])

    def resolved(self) -> "AlexNetConfig":
        """This config with `ops` and `channels_last` made concrete for this machine."""
        channels_last = torch.cuda.is_available() if self.channels_last is None else self.channels_last
        return replace(self, ops=resolve_ops(self.ops), channels_last=channels_last)


def _out_size(size: int, kernel: int, stride: int, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def layer_shapes(config: AlexNetConfig) -> dict[str, tuple[int, ...]]:
    """Each layer's output shape per image, e.g. {"conv1": (96, 55, 55), ..., "fc8": (1000,)}.

    Derived from the config, so the fc6 input follows from the pooled size (it is 256*6*6
    for both 3/2 and 2/2 pooling at 224: 55 -> 27 -> 13 -> 6 either way)."""
    window, stride = config.pool
    shapes, size = {}, config.image_size
    for layer, spec in zip(CONV_LAYERS, config.convs):
        size = _out_size(size, spec.kernel_size, spec.stride, spec.padding)
        if size < 1:
            raise ValueError(f"image_size={config.image_size} is too small: {layer.name} has no output pixel")
        shapes[layer.name] = (spec.out_channels, size, size)
        if layer.pool:  # max-pooling follows conv1, conv2 and conv5 (section 3.5)
            size = _out_size(size, window, stride)
            pool = layer.name.replace("conv", "pool")
            if size < 1:
                raise ValueError(f"image_size={config.image_size} is too small: {pool} has no output pixel")
            shapes[pool] = (spec.out_channels, size, size)
    for layer in FC_LAYERS:
        shapes[layer.name] = (config.num_classes if layer is FC_LAYERS[-1] else config.fc_features,)
    return shapes


def input_shape(config: AlexNetConfig, name: str) -> tuple[int, ...]:
    """The per-image shape of the tensor entering layer `name` (an FC layer's input flat)."""
    shapes = list(layer_shapes(config).items())
    index = [key for key, _ in shapes].index(name)
    shape = shapes[index - 1][1] if index else (config.in_channels, config.image_size, config.image_size)
    return shape if name.startswith("conv") else (math.prod(shape),)

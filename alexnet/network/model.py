"""AlexNet (Krizhevsky, Sutskever & Hinton, NIPS 2012), as the paper's Figure 2 draws it.

    image (B, 3, 224, 224)
    conv1  96 11x11/4 pad 2   -> ReLU+LRN -> max-pool 3/2     (B, 96, 27, 27)
    conv2 256  5x5 pad 2, 2 groups -> ReLU+LRN -> max-pool   (B, 256, 13, 13)
    ---- the two columns (GPUs) exchange their maps ----
    conv3 384  3x3 pad 1 -> ReLU                              (B, 384, 13, 13)
    conv4 384  3x3 pad 1, 2 groups -> ReLU                    (B, 384, 13, 13)
    conv5 256  3x3 pad 1, 2 groups -> ReLU -> max-pool        (B, 256, 6, 6)
    ---- exchange ----  fc6 4096 -> ReLU -> dropout 0.5
    ---- exchange ----  fc7 4096 -> ReLU -> dropout 0.5
    fc8 1000 (a sum over the columns' halves of fc7)          (B, 1000) logits

60,965,224 parameters. On one device the paper's two columns are grouped convolutions
(groups=2 is exactly "kernels connected only to the maps on their own GPU"); the same class,
given `column=r`, holds only column r's kernels and is completed by `parallel.ShardedAlexNet`,
which turns the `exchange`/`sum_columns` hooks below into collectives. Shapes in the
comments are the single-device ones; a column holds half the channels/features of each.

LRN normalises each column's maps on their own (a window never crosses from map 47 to 48
of conv1): in the two-GPU net the maps adjacent to a map are those on its own GPU, and
nothing crosses before conv3. So on one device LRN is grouped too, like conv2/4/5.

The ReLU runs wherever it is cheapest: inside the LRN kernel where LRN follows (conv1-2),
in the conv epilogue otherwise (conv3-5, and conv1-2 with LRN switched off).

Weights: with `channels_last` (the default on CUDA) the conv weights are stored channels_last
too, (out, in, kh, kw) with `in` fastest, the OHWI order the conv kernels read; shapes and
state-dict names are torch's, so checkpoints load into either layout.

Dropout: each column's half of the fc6/fc7 features gets its own random stream
(`layers.ColumnDropout`), so the single-device and two-rank models drop the same units
given the same `dropout_seed`. Inverted dropout (x2 at train time) stands for the paper's
x0.5 at test time.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from alexnet.network.config import (
    BIAS_ONE_LAYERS,
    CONV_LAYERS,
    FC_LAYERS,
    AlexNetConfig,
    ConvSpec,
    input_shape,
    layer_shapes,
    uses_kernels,
)
from alexnet.network.layers import ColumnDropout, Conv2d, Linear, LocalResponseNorm, MaxPool2d, compute_params, load_ops
from kernels import channels_last_block

__all__ = ["AlexNet", "paper_init_", "relu_mask_moves"]


class AlexNet(nn.Module):
    """The paper's network; `config` holds the architecture, ablations and ops choice.

    `column=None` builds the whole network on one device. `column=r` (with `replica`)
    builds only column r's share, for `parallel.ShardedAlexNet`: each conv layer gets half
    the kernels, grouped layers become plain ones over the column's own maps, fc6/fc7 get
    half the outputs, and fc8 the columns of W8 (1000, 4096) that read this column's fc7
    features.
    """

    def __init__(self, config: AlexNetConfig = AlexNetConfig(), *, column: int | None = None, replica: int = 0):
        super().__init__()
        config = config.resolved()
        if column is not None and config.columns != 2:
            raise ValueError("only the two-column network (columns=2) can be split by column")
        self.config, self.column = config, column
        ops = load_ops(config.ops)
        split = 1 if column is None else config.columns  # how many ways each layer is divided here
        relu = config.activation == "relu"
        lrn_groups = config.columns // split  # LRN normalises each column's maps on their own

        moves = relu_mask_moves(config)

        def conv_layer(i: int, spec: ConvSpec, in_channels: int, lrn_follows: bool):
            """A conv layer (the i-th, from 0) and the nonlinearity (+LRN) that follows it."""
            with_lrn = lrn_follows and config.lrn
            groups = spec.groups if split == 1 else 1  # a column's own maps need no grouping
            conv = Conv2d(ops.conv2d, in_channels, spec.out_channels // split, spec.kernel_size, spec.stride,
                          spec.padding, groups, relu=relu and not with_lrn,
                          input_relu=i > 0 and moves[i - 1] == "conv", dy_masked=moves[i] is not None)
            if with_lrn and relu:
                after = LocalResponseNorm(ops.relu_lrn, **config.lrn_params, groups=lrn_groups)
            elif with_lrn:
                after = nn.Sequential(nn.Tanh(), LocalResponseNorm(ops.local_response_norm, **config.lrn_params,
                                                                   groups=lrn_groups))
            else:
                after = nn.Identity() if relu else nn.Tanh()
            return conv, after

        # The layers as config.LAYERS lists them. Input maps per kernel: the image for conv1; after
        # an exchange (conv3, fc6, fc7) all columns' maps, otherwise this column's own share.
        maps = config.in_channels
        for i, (layer, spec) in enumerate(zip(CONV_LAYERS, config.convs), start=1):
            in_channels = maps if i == 1 or layer.exchange_before else maps // split
            conv, act = conv_layer(i - 1, spec, in_channels, lrn_follows=layer.lrn)
            setattr(self, layer.name, conv)
            setattr(self, f"act{i}", act)
            maps = spec.out_channels
        self.pool = MaxPool2d(ops.max_pool2d, *config.pool)  # after the layers with `pool` (conv1, conv2, conv5)
        self.pool_input_relu = [m == "pool" for m in moves]  # per conv layer: the pool after it masks its dy
        for layer in FC_LAYERS:
            inputs = input_shape(config, layer.name)[0]
            last = layer is FC_LAYERS[-1]  # fc8: the logits, whole on every column; no nonlinearity
            setattr(self, layer.name, Linear(inputs if layer.exchange_before else inputs // split,
                                             config.num_classes if last else config.fc_features // split,
                                             None if last else config.activation))
        self.reset_parameters()
        if config.channels_last:  # the conv kernels read weights (K, KH, KW, C): no re-layout per step
            for conv in (getattr(self, layer.name) for layer in CONV_LAYERS):
                conv.weight.data = conv.weight.data.contiguous(memory_format=torch.channels_last)
        seed = config.dropout_seed if config.dropout_seed is not None else int(torch.randint(0, 2**62, ()))
        columns = tuple(range(config.columns)) if column is None else (column,)
        self.dropout = ColumnDropout(ops.dropout, config.dropout, seed, columns, replica,
                                     column_op=ops.column_dropout if uses_kernels(config.ops) else None)

    def reset_parameters(self) -> None:
        paper_init_(self, self.config)

    # ------------------------------------------------------------------ where columns meet
    def exchange(self, x: torch.Tensor, point: str) -> torch.Tensor:
        """Where the columns meet, before `point` (conv3, fc6, fc7): x is this device's share
        of the maps/features along dim 1; returns all of them. One device holds them all."""
        return x

    def sum_columns(self, x: torch.Tensor) -> torch.Tensor:
        """fc8's partial products summed over the columns. One device: already summed."""
        return x

    # ------------------------------------------------------------------ forward
    def _hidden(self, x: torch.Tensor) -> torch.Tensor:
        """fc7's activations (after ReLU and dropout) of this device's column(s)."""
        if self.config.channels_last and not channels_last_block(x):  # a block: conv1's padded input, no copy
            x = x.contiguous(memory_format=torch.channels_last)
        # conv1 (B, 96, 55, 55) -> pool (B, 96, 27, 27) ... conv5 (B, 256, 13, 13) -> pool (B, 256, 6, 6)
        for i, layer in enumerate(CONV_LAYERS, start=1):
            if layer.exchange_before:
                x = self.exchange(x, layer.name)  # the columns cross-connect before conv3 (section 3.2)
            x = getattr(self, f"act{i}")(getattr(self, layer.name)(x))
            if layer.pool:  # the last one in NCHW order: the flatten below is then a view, not a copy
                x = self.pool(x, input_relu=self.pool_input_relu[i - 1], contiguous_out=i == len(CONV_LAYERS))
        x = x.flatten(1)                                  # (B, 9216), channel-major (C, H, W) order
        for layer in FC_LAYERS[:-1]:                      # fc6, fc7 (B, 4096); fc8 is forward's
            if layer.exchange_before:
                x = self.exchange(x, layer.name)
            fuse_relu = layer.dropout and self.config.activation == "relu"  # the dropout applies the ReLU
            x = getattr(self, layer.name)(x, activate=not fuse_relu)
            if layer.dropout:
                x = self.dropout(x, relu=fuse_relu)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of images x (B, 3, H, W); softmax is left to the loss."""
        x = self._hidden(x)
        if self.column is None:  # one device: fc8 whole, its bias in the GEMM (no add, no separate bias sum)
            return self.fc8(x)
        # fc8 = sum over columns of (column's fc7 features) @ (its columns of W8)^T, plus the bias.
        # The bias in the compute dtype, as every layer's (the optimizer's 16-bit copy when attached).
        _, bias = compute_params(self.fc8, x.dtype)
        return self.sum_columns(self.fc8(x, add_bias=False)) + bias  # (B, 1000)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer's activations (B, 4096): fc7 after ReLU (and dropout in
        training mode; call in eval mode for the paper's Figure 4 features)."""
        return self._hidden(x)

    def neurons(self) -> dict[str, int]:
        """Neurons per layer (section 3.5's 253,440-186,624-...-1000; see config.py)."""
        return {name: math.prod(shape) for name, shape in layer_shapes(self.config).items()
                if not name.startswith("pool")}


def relu_mask_moves(config: AlexNetConfig) -> list[str | None]:
    """Per conv layer (CONV_LAYERS order): where its fused ReLU's gradient mask, dy * (y > 0),
    is applied instead of in its own backward (which then skips it: dy_masked), or None.
    "conv": the next conv's dgrad epilogue (that conv gets input_relu), where the ReLU output
    goes straight into the next conv and nowhere else (no pooling after, no column exchange
    before the next conv); "pool": the max-pooling after it (input_relu: its backward masks by
    the pooled y > 0, as ReLU and max-pooling commute). Only for a fused ReLU (no LRN after).
    With the paper's table: conv3 -> conv4, conv4 -> conv5, conv5 -> pool5. The flags come in
    pairs from here, so a mask is never skipped without its consumer applying it."""
    config = config.resolved()
    moves = []
    for i, layer in enumerate(CONV_LAYERS):
        fused_relu = config.activation == "relu" and not (layer.lrn and config.lrn)
        nxt = CONV_LAYERS[i + 1] if i + 1 < len(CONV_LAYERS) else None
        if not fused_relu:
            moves.append(None)
        elif layer.pool:
            moves.append("pool")
        elif nxt is not None and not nxt.exchange_before:
            moves.append("conv")
        else:
            moves.append(None)
    return moves


@torch.no_grad()
def paper_init_(model: nn.Module, config: AlexNetConfig) -> None:
    """Section 5: every weight ~ N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6, fc7 and
    0 in conv1, conv3, fc8 (the value 1 is `config.init_bias_one`)."""
    for name, module in model.named_children():
        if isinstance(module, (Conv2d, Linear)):
            module.weight.normal_(0.0, config.init_std)
            module.bias.fill_(config.init_bias_one if name in BIAS_ONE_LAYERS else 0.0)

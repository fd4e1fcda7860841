"""AlexNet's five convolutions (paper section 3.5, Figure 2) as benchmark problems, shared by
bench_conv.py (pytest-benchmark vs cuDNN) and conv_sweep.py (per-config tile sweep).

Two shape sets at batch 128: "single", the one-device network (conv2/4/5 grouped, groups=2),
and "shard", one GPU's half of the paper's two-GPU network (conv3 reads both GPUs' maps).
FLOPs = 2 * N*OH*OW * K * (C/g)*KH*KW for each of the forward, dgrad and wgrad passes.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `python bench/<script>.py`
from kernels.conv.common import ConvGeometry  # noqa: E402
from kernels.conv.dgrad import conv2d_input_grad  # noqa: E402
from kernels.conv.fwd import conv2d_forward  # noqa: E402
from kernels.conv.input_layout import pad_input, unpad_weight_grad  # noqa: E402
from kernels.conv.wgrad import conv2d_weight_grad  # noqa: E402

BATCH = 128
DTYPES = {"bf16": torch.bfloat16, "tf32": torch.float32}  # tf32: fp32 tensors, cudnn.allow_tf32 = True
PASSES = ("fwd", "dgrad", "wgrad")


@dataclass(frozen=True)
class ConvLayer:
    in_chan: int
    size: int  # input height = width
    out_chan: int
    kernel: int
    stride: int
    pad: int
    groups: int


LAYERS = {
    "single": {
        "conv1": ConvLayer(3, 224, 96, 11, 4, 2, 1),
        "conv2": ConvLayer(96, 27, 256, 5, 1, 2, 2),
        "conv3": ConvLayer(256, 13, 384, 3, 1, 1, 1),
        "conv4": ConvLayer(384, 13, 384, 3, 1, 1, 2),
        "conv5": ConvLayer(384, 13, 256, 3, 1, 1, 2),
    },
    "shard": {
        "conv1": ConvLayer(3, 224, 48, 11, 4, 2, 1),
        "conv2": ConvLayer(48, 27, 128, 5, 1, 2, 1),
        "conv3": ConvLayer(256, 13, 192, 3, 1, 1, 1),
        "conv4": ConvLayer(192, 13, 192, 3, 1, 1, 1),
        "conv5": ConvLayer(192, 13, 128, 3, 1, 1, 1),
    },
}


def passes_for(layer_name: str):
    """conv1 needs no dgrad (its input is the image)."""
    return [p for p in PASSES if not (layer_name == "conv1" and p == "dgrad")]


class ConvProblem:
    """Random channels_last inputs for one layer and dtype, our launchers and cuDNN's, per pass."""

    def __init__(self, layer: ConvLayer, dtype: torch.dtype, batch: int = BATCH, device="cuda"):
        L, self.layer = layer, layer
        cl = torch.channels_last
        self.x = torch.randn(batch, L.in_chan, L.size, L.size, device=device).to(dtype).contiguous(memory_format=cl)
        fan_in = L.in_chan // L.groups * L.kernel ** 2
        self.w = (torch.randn(L.out_chan, L.in_chan // L.groups, L.kernel, L.kernel, device=device) / fan_in ** 0.5
                  ).to(dtype).contiguous(memory_format=cl)
        self.b = torch.randn(L.out_chan, device=device).to(dtype)
        self.geom = ConvGeometry(batch, L.in_chan, L.size, L.size, L.out_chan, L.kernel, L.kernel, L.stride, L.stride,
                                 L.pad, L.pad, L.groups)
        self.dy = torch.randn(self.geom.output_shape, device=device).to(dtype).contiguous(memory_format=cl)
        self.flops = self.geom.flops

    def ours(self, pass_: str, config=None, splits=None):
        """Our pass as the autograd Function runs it: the forward includes `pad_input` (conv1's
        3 -> 4 channels), wgrad reads the padded x the forward saved and unpads dw."""
        g, cl = self.geom, torch.channels_last
        if pass_ == "fwd":
            def forward():
                x_k, w_k, geom_k = pad_input(self.x, self.w, g)
                return conv2d_forward(x_k, w_k, self.b, geom_k, config=config)
            return forward
        if pass_ == "dgrad":
            return lambda: conv2d_input_grad(self.dy, self.w, g, config=config)
        x_k, _, geom_k = pad_input(self.x, self.w, g)

        def weight_grad():
            dw, db = conv2d_weight_grad(self.dy, x_k, geom_k, weight_format=cl, config=config, splits=splits)
            return unpad_weight_grad(dw, g, cl), db
        return weight_grad

    def cudnn(self, pass_: str):
        L = self.layer
        if pass_ == "fwd":
            return lambda: F.conv2d(self.x, self.w, self.b, L.stride, L.pad, 1, L.groups)
        mask = [True, False, False] if pass_ == "dgrad" else [False, True, True]
        bias_sizes = None if pass_ == "dgrad" else [L.out_chan]

        def backward():
            out = torch.ops.aten.convolution_backward(self.dy, self.x, self.w, bias_sizes, [L.stride] * 2,
                                                      [L.pad] * 2, [1, 1], False, [0, 0], L.groups, mask)
            return out[0] if pass_ == "dgrad" else (out[1], out[2])
        return backward


def rel_error(ours, ref) -> float:
    """max |ours - ref| / max |ref| over all outputs of a pass."""
    pairs = [(ours, ref)] if isinstance(ours, torch.Tensor) else list(zip(ours, ref))
    return max(float((a.float() - b.float()).abs().max() / b.float().abs().max()) for a, b in pairs)

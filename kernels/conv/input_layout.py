"""How the forward and wgrad kernels read inputs with few channels (conv1's 3): `pad_input`
turns (x, weight, geometry) into what the kernels run, `unpad_weight_grad` turns the weight
gradient they compute back into the caller's.

- A strided conv with few channels becomes a stride-1 conv of its space-to-depth map (below).
- Other few-channel convs in one group get their channels zero-padded to a whole 8-byte word
  per pixel (3 -> 4), so the FLAT loops' gathers are aligned vector copies.
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
import triton

from .._common import as_format, cdiv
from .common import ConvGeometry
from .configs import use_flat_reduction

# ------------------------------------------------------------- conv1's input: space-to-depth
# A strided conv with few input channels (conv1: 3 channels, 11x11 stride 4) is rewritten as a
# stride-1 conv of a space-to-depth map: each SHxSW block of the padded image becomes one pixel
# of SH*SW sub-pixels of CP channels (C padded to a power of two), and the KHxKW kernel a
# ceil(KH/SH) x ceil(KW/SW) kernel over that map with the zero-padded weight regrouped the same
# way. conv1: a 57x57 map of 4*4*4 = 64 channels and a 3x3 kernel, so one BLOCK_K=64 step of
# the tap loop is one tap of 64 contiguous channels with no padding mask (no padding left, no
# tap past the map): the loop of conv3-5. The price is MMA work on zeros: 9*64 = 576 reduction
# elements per output for 3*11*11 = 363 useful (63%; the 4-channel FLAT loop did 512, 71%).
# The weight's zero rows and columns (kh or kw >= 11) meet real pixels of the neighbouring
# window, where 0 * inf would be NaN: the forward masks those sub-pixels of the last tap row and
# column (`s2d_edge`), so non-finite inputs reach exactly the outputs they reach in PyTorch; the
# weight gradient computes them too but they are dropped when it is folded back.
S2D_CHANNEL_QUANTUM = 16  # map channels are padded to a multiple of this (the tap loop's narrowest step)


def space_to_depth_geometry(geom: ConvGeometry) -> ConvGeometry | None:
    """The stride-1 geometry of `geom` over its space-to-depth map, or None where the rewrite
    does not apply: groups 1, fewer than 16 channels (the FLAT loops' case), a stride above 1
    and at least 16 map channels (else the map would be FLAT too)."""
    sh, sw = geom.stride_h, geom.stride_w
    cp = triton.next_power_of_2(geom.in_chan)
    if geom.groups != 1 or not use_flat_reduction(geom.in_chan) or (sh, sw) == (1, 1) or sh * sw * cp < 16:
        return None
    taps_h, taps_w = cdiv(geom.kernel_h, sh), cdiv(geom.kernel_w, sw)
    edge = (sh, sw, cp, geom.kernel_h - (taps_h - 1) * sh, geom.kernel_w - (taps_w - 1) * sw)
    return ConvGeometry(geom.n_img, cdiv(sh * sw * cp, S2D_CHANNEL_QUANTUM) * S2D_CHANNEL_QUANTUM,
                        geom.out_h + taps_h - 1, geom.out_w + taps_w - 1, geom.out_chan, taps_h, taps_w,
                        1, 1, 0, 0, 1, s2d_edge=edge)


def space_to_depth_input(x: torch.Tensor, geom: ConvGeometry, s2d: ConvGeometry) -> torch.Tensor:
    """x (N, C, H, W) as the map s2d.input_shape, dense channels_last: map pixel (n, i, j),
    channel (r*SW + s)*CP + c holds the padded image's x[n, c, i*SH + r - PH, j*SW + s - PW]
    (zero outside the image, for c >= C and past SH*SW*CP). Rows or columns of the padded
    image that no window reaches are dropped (negative F.pad)."""
    sh, sw, chan, cp = geom.stride_h, geom.stride_w, geom.in_chan, s2d.s2d_edge[2]
    n, hh, ww = geom.n_img, s2d.height, s2d.width
    xp = F.pad(x, (geom.pad_w, sw * ww - geom.width - geom.pad_w, geom.pad_h, sh * hh - geom.height - geom.pad_h))
    out = x.new_empty((n, hh, ww, s2d.in_chan))  # written once: the image's values, then the zero channels
    sub = out[..., :sh * sw * cp].view(n, hh, ww, sh, sw, cp)
    sub[..., :chan].copy_(xp.view(n, chan, hh, sh, ww, sw).permute(0, 2, 4, 3, 5, 1))
    sub[..., chan:] = 0
    out[..., sh * sw * cp:] = 0
    return out.permute(0, 3, 1, 2)  # (N, C', H', W') channels_last


def space_to_depth_weight(weight: torch.Tensor, geom: ConvGeometry, s2d: ConvGeometry) -> torch.Tensor:
    """weight (K, C, KH, KW) regrouped as the map's (K, C', KH', KW'): w'[k, (r*SW + s)*CP + c, a, b]
    = w[k, c, a*SH + r, b*SW + s], zero past KH, KW, C and SH*SW*CP."""
    sh, sw, chan, k, cp = geom.stride_h, geom.stride_w, geom.in_chan, geom.out_chan, s2d.s2d_edge[2]
    th, tw = s2d.kernel_h, s2d.kernel_w
    wp = F.pad(weight, (0, tw * sw - geom.kernel_w, 0, th * sh - geom.kernel_h, 0, cp - chan))
    w = wp.view(k, cp, th, sh, tw, sw).permute(0, 3, 5, 1, 2, 4).reshape(k, sh * sw * cp, th, tw)
    return F.pad(w, (0, 0, 0, 0, 0, s2d.in_chan - sh * sw * cp)).contiguous()


def space_to_depth_weight_grad(dw: torch.Tensor, geom: ConvGeometry) -> torch.Tensor:
    """The gradient of the image-space weight from the map's (K, C', KH', KW') one: the inverse
    regrouping of `space_to_depth_weight` (the zero-padded entries are dropped)."""
    sh, sw, chan, k = geom.stride_h, geom.stride_w, geom.in_chan, geom.out_chan
    cp, th, tw = triton.next_power_of_2(chan), dw.shape[2], dw.shape[3]
    w = dw[:, :sh * sw * cp].reshape(k, sh, sw, cp, th, tw).permute(0, 3, 4, 1, 5, 2)
    return w.reshape(k, cp, th * sh, tw * sw)[:, :chan, :geom.kernel_h, :geom.kernel_w]


def pad_input(x: torch.Tensor, weight: torch.Tensor, geom: ConvGeometry):
    """(x, weight, geom) as the forward and wgrad kernels read them: x in channels_last; for a
    strided conv with few input channels (conv1) the space-to-depth map, its regrouped weight
    and stride-1 geometry (see `space_to_depth_geometry`); for other few-channel convs in one
    group x and weight zero-padded along C so one pixel is a whole number of 8-byte words
    (bf16: 3 -> 4 channels, fp32: 3 -> 4). Then the (kh, kw, c) gathers of the FLAT loops are
    aligned vector loads that Triton turns into asynchronous copies (software-pipelined); with
    3 bf16 channels (6 bytes) they are 2-byte loads it cannot."""
    s2d = space_to_depth_geometry(geom)
    if s2d is not None:
        return space_to_depth_input(x, geom, s2d), space_to_depth_weight(weight, geom, s2d), s2d
    x = as_format(x, torch.channels_last)
    per_word = max(1, 8 // x.element_size())
    chan = geom.in_chan
    if geom.groups != 1 or not use_flat_reduction(chan) or chan % per_word == 0:
        return x, weight, geom
    padded = cdiv(chan, per_word) * per_word
    x = F.pad(x.permute(0, 2, 3, 1), (0, padded - chan)).permute(0, 3, 1, 2)  # NHWC, C padded
    weight = F.pad(weight, (0, 0, 0, 0, 0, padded - chan))
    return x, weight, replace(geom, in_chan=padded)


def unpad_weight_grad(dw: torch.Tensor, geom: ConvGeometry, fmt: torch.memory_format) -> torch.Tensor:
    """The gradient of the caller's weight (geometry `geom`) from the one `pad_input`'s kernels
    computed (padded channels or a space-to-depth map), in memory format `fmt`."""
    if tuple(dw.shape) == geom.weight_shape:
        return dw
    if space_to_depth_geometry(geom) is not None:
        return space_to_depth_weight_grad(dw, geom).contiguous(memory_format=fmt)
    return dw[:, :geom.c_per_g].contiguous(memory_format=fmt)

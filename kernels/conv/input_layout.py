"""How the forward and wgrad kernels read inputs with few channels (conv1's 3): `pad_input`
turns (x, weight, geometry) into what the kernels run, `wgrad_view` re-reads the same buffer
for the weight gradient, `unpad_weight_grad` turns the weight gradient back into the caller's.

Few channels in one group (the FLAT loops' case, C < 16: conv1) are read from a zero-padded
image: channels padded to a whole 8-byte word per pixel (3 -> 4) and the spatial padding
written into the buffer (conv1: 224 + 2*2 = 228 rows and columns), so the kernels run the
geometry with padding 0 and never test a tap against the image's sides.
- The forward's FLAT loop reads each window row as one contiguous run of KW*4 elements
  (11*4 = 44), aligned 8-byte copies, no mask but the reduction's tail (484 -> 512 at
  BLOCK_K=64: 71% of the MMA work useful, as before the padding moved out of the loop).
- The weight gradient reads the same buffer as a map of SW-pixel column blocks (`wgrad_view`):
  conv1's 228x228x4 image as 228x57x16, an 11x3 kernel of stride (4, 1), so its FLAT columns
  are runs of 3*16 = 48 contiguous elements (16-byte copies; the 12th column, kw = 11, meets
  a zero weight and its gradient is dropped when folded back, `fold_wgrad_view`).
`padded_image` builds the buffer (one copy, as the 3 -> 4 channel padding did); a caller that
already holds one (the augmentation writing conv1's input in this layout) passes a view of it
(`padded_view`), and `pad_input` recognises it and copies nothing.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from .._common import as_format, cdiv
from ..runtime.state import memo
from .common import ConvGeometry
from .configs import use_flat_reduction


def _padded_channels(chan: int, elem: int) -> int:
    per_word = max(1, 8 // elem)
    return cdiv(chan, per_word) * per_word


def takes_padded_image(geom: ConvGeometry) -> bool:
    """Whether the kernels read x as a zero-padded image (few channels, one group)."""
    return geom.groups == 1 and use_flat_reduction(geom.in_chan)


def padded_geometry(geom: ConvGeometry, elem: int) -> ConvGeometry:
    """The geometry the forward runs on the padded image: channels padded to an 8-byte word,
    no padding, the width a multiple of the stride (for `wgrad_view`; the columns past the
    last window are zeros, or dropped when the image is wider than any window reaches)."""
    width = geom.stride_w * (geom.out_w + cdiv(geom.kernel_w, geom.stride_w) - 1)
    return replace(geom, in_chan=_padded_channels(geom.in_chan, elem), height=geom.height + 2 * geom.pad_h,
                   width=width, pad_h=0, pad_w=0)


def padded_image(x: torch.Tensor, geom: ConvGeometry) -> torch.Tensor:
    """x (N, C, H, W) in a new zero-padded channels_last buffer of `padded_geometry(geom)`'s
    input shape: two launches, the zeroing and the copy of the image (filling only the border
    took five small fills, each a launch and a host-side scalar tensor: more host time per step
    than the zeroing's extra write costs the device)."""
    g = padded_geometry(geom, x.element_size())
    buf = x.new_zeros((g.n_img, g.height, g.width, g.in_chan))  # NHWC storage
    right = g.width - geom.width - geom.pad_w  # may be negative: columns no window reaches
    inner = buf[:, geom.pad_h:geom.pad_h + geom.height, geom.pad_w:geom.pad_w + geom.width + min(right, 0),
                :geom.in_chan]
    inner.copy_(x.permute(0, 2, 3, 1)[:, :, :inner.shape[2]])
    return buf.permute(0, 3, 1, 2)


# Padded buffers registered by `padded_view`: the storage tensor (weakly, by identity) -> its
# version counter when registered. In-place writes through any view bump the version the views
# share with their base, so a buffer written since (its padding possibly no longer zero) is not
# trusted; an entry goes when its buffer is freed.
_PADDED = memo("conv.padded_buffers", "conv1's padded input buffer -> its version when registered", by_tensor=True)


def _register(root: torch.Tensor) -> None:
    _PADDED[root] = root._version


def _registered(root: torch.Tensor) -> bool:
    return _PADDED.get(root) == root._version


def padded_view(buf: torch.Tensor, chan: int, pad: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """The (N, chan, H, W) image inside `buf`, a dense channels_last (N, C', H + 2*pad_h, W')
    buffer as `padded_image` makes it (the caller guarantees zeros outside the image and in
    channels past `chan`), registered so that `pad_input` of a conv with that padding reads
    `buf` instead of copying the image."""
    if not buf.is_contiguous(memory_format=torch.channels_last):
        raise ValueError("padded_view needs a dense channels_last buffer")
    _register(buf if buf._base is None else buf._base)
    (ph, pw), (h, w) = pad, size
    return buf[:, :chan, ph:ph + h, pw:pw + w]


def clone_padded(x: torch.Tensor) -> torch.Tensor | None:
    """For x a `padded_view`: a clone of its whole buffer, registered, and the same view of it
    (a CUDA graph's static input that conv1 still reads with no copy: alexnet/training/step_graph.py);
    None for any other x."""
    root = x._base
    if root is None or not _registered(root):
        return None
    clone = root.clone()  # dense: the same strides
    _register(clone)
    return clone.as_strided(x.shape, x.stride(), x.storage_offset())


def refill_padded(static: torch.Tensor, x: torch.Tensor) -> bool:
    """Copy x's padded buffer into static's (static from `clone_padded`, x a `padded_view` of
    the same layout), zeros included, keeping static's registration; False (nothing copied)
    where they are not such a pair."""
    root, static_root = x._base, static._base
    if (root is None or static_root is None or not _registered(root) or static_root.shape != root.shape
            or static_root.stride() != root.stride() or static.stride() != x.stride()
            or static.storage_offset() != x.storage_offset()):
        return False
    static_root.copy_(root, non_blocking=True)
    _register(static_root)  # its zeros are the source's, intact
    return True


def _registered_buffer(x: torch.Tensor, geom: ConvGeometry) -> torch.Tensor | None:
    """The padded buffer x is a view of (`padded_view`), as (N, C', H', W') channels_last, if
    its zeros are intact and it is the one `padded_geometry(geom)` describes; else None."""
    root = x._base
    if root is None or not _registered(root):
        return None
    g = padded_geometry(geom, x.element_size())
    n, c, h, w = g.input_shape
    if tuple(root.shape) == (n, h, w, c) and root.is_contiguous():
        buf = root.permute(0, 3, 1, 2)
    elif tuple(root.shape) == (n, c, h, w) and root.is_contiguous(memory_format=torch.channels_last):
        buf = root
    else:
        return None
    expect = buf[:, :geom.in_chan, geom.pad_h:geom.pad_h + geom.height, geom.pad_w:geom.pad_w + geom.width]
    if (x.shape, x.stride(), x.storage_offset()) != (expect.shape, expect.stride(), expect.storage_offset()):
        return None
    return buf


def pad_input(x: torch.Tensor, weight: torch.Tensor, geom: ConvGeometry):
    """(x, weight, geom) as the forward and wgrad kernels read them: x in channels_last; few
    channels in one group (conv1): the zero-padded image (`padded_image`, or the registered
    buffer x is a view of), the weight with zero channels to match, and `padded_geometry`."""
    if not takes_padded_image(geom):
        return as_format(x, torch.channels_last), weight, geom
    g = padded_geometry(geom, x.element_size())
    buf = _registered_buffer(x, geom)
    if buf is None:
        buf = padded_image(x, geom)
    if weight is not None:  # None: the caller does not read it (wgrad)
        weight = torch.nn.functional.pad(weight, (0, 0, 0, 0, 0, g.in_chan - geom.in_chan))
    return buf, weight, g


def wgrad_view(x: torch.Tensor, geom: ConvGeometry):
    """(x, geom) re-read for the weight gradient, or None: a padded image (dense channels_last,
    no padding, few channels, horizontal stride SW > 1 dividing the width) as a map of SW-pixel
    column blocks of SW*C channels, its kernel ceil(KW/SW) blocks wide at stride (SH, 1): the
    same storage, a view. Its weight gradient is folded back by `fold_wgrad_view`."""
    sw = geom.stride_w
    if (sw == 1 or geom.pad_h or geom.pad_w or not takes_padded_image(geom) or geom.width % sw
            or not x.is_contiguous(memory_format=torch.channels_last)):
        return None
    n, c, h, w = x.shape
    g = replace(geom, in_chan=sw * c, width=w // sw, kernel_w=cdiv(geom.kernel_w, sw), stride_w=1)
    if g.out_w != geom.out_w:
        return None
    return x.permute(0, 2, 3, 1).reshape(n, h, w // sw, sw * c).permute(0, 3, 1, 2), g


def folded_wgrad_buffer(geom: ConvGeometry, view_geom: ConvGeometry, like: torch.Tensor) -> tuple[torch.Tensor,
                                                                                                     torch.Tensor]:
    """(folded, dw_view): a channels_last buffer (K, C, KH, KW' * SW) of `geom`'s weight
    gradient (its width rounded up to whole SW-column blocks) and the view of it as `wgrad_view`'s
    (K, SW*C, KH, KW') gradient. In channels_last the w and c of a (kh) row are adjacent, so
    element (k, s*C + c, kh, b) of the view is (k, c, kh, b*SW + s) of the buffer: the
    kernel writing the view through its strides folds it, with no copy (`fold_wgrad_view` is
    the same map as a copy)."""
    k, sw, c, kh = geom.out_chan, geom.stride_w, geom.in_chan, geom.kernel_h
    tw = view_geom.kernel_w
    folded = torch.empty((k, c, kh, tw * sw), device=like.device, dtype=like.dtype, memory_format=torch.channels_last)
    s_k, _, s_h, _ = folded.stride()
    return folded, folded.as_strided((k, sw * c, kh, tw), (s_k, 1, s_h, sw * c))


def fold_wgrad_view(dw: torch.Tensor, geom: ConvGeometry) -> torch.Tensor:
    """dw (K, SW*C, KH, KW') of `wgrad_view`'s geometry as (K, C, KH, KW) of `geom`:
    dw[k, c, kh, b*SW + s] = dw'[k, s*C + c, kh, b]; columns past KW are dropped."""
    k, sw, c = geom.out_chan, geom.stride_w, geom.in_chan
    kh, tw = dw.shape[2], dw.shape[3]
    out = dw.reshape(k, sw, c, kh, tw).permute(0, 2, 3, 4, 1).reshape(k, c, kh, tw * sw)
    return out[..., :geom.kernel_w]


def unpad_weight_grad(dw: torch.Tensor, geom: ConvGeometry, fmt: torch.memory_format) -> torch.Tensor:
    """The gradient of the caller's weight (geometry `geom`) from the one `pad_input`'s kernels
    computed (zero channels added), in memory format `fmt`."""
    return dw if dw.shape[1] == geom.c_per_g else dw[:, :geom.c_per_g].contiguous(memory_format=fmt)

"""kernels.conv2d (kernels/conv*.py) against F.conv2d and its autograd in float64.

On the CPU interpreter every test runs in fp32 with one small tile config; on a GPU the same
tests add tf32, fp16 and bf16, and `test_every_gpu_config` runs each autotuning candidate.
"""
from contextlib import contextmanager

import numpy as np
import pytest
import torch
import triton
import triton.language as tl
from helpers import DEVICE, EXAMPLES, MEMORY_FORMATS, TOLERANCES, assert_close_verbose, requires_gpu
from hypothesis import given, settings
from hypothesis import strategies as st
from triton import Config

import kernels
import kernels.conv as conv_module
from kernels import reference
from kernels.conv import configs as conv_configs
from kernels.conv import dgrad as conv_dgrad
from kernels.conv import fwd as conv_fwd
from kernels.conv import wgrad as conv_wgrad
from kernels.conv.common import MAX_PIXELS, conv_geometry, dot_precision, image_block, pix_multiple
from kernels.conv.dgrad import _weight_operand, conv2d_input_grad
from kernels.conv.fwd import conv2d_forward
from kernels.conv.input_layout import pad_input, unpad_weight_grad
from kernels.conv.wgrad import conv2d_weight_grad

# precision name -> (dtype, torch.backends.cudnn.allow_tf32, (atol relative to the tensor's max, rtol))
PRECISIONS = {
    "fp32": (torch.float32, False, TOLERANCES[torch.float32]),
    "tf32": (torch.float32, True, (2e-3, 2e-3)),
    "fp16": (torch.float16, False, TOLERANCES[torch.float16]),
    "bf16": (torch.bfloat16, False, TOLERANCES[torch.bfloat16]),
}


@contextmanager
def allow_tf32(enabled: bool):
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = old


def _close(actual, expected, tol):
    atol, rtol = tol
    scale = float(expected.abs().max()) if expected.numel() else 1.0
    assert_close_verbose(actual.double().cpu(), expected, atol=atol * max(scale, 1e-30), rtol=rtol, check_dtype=True,
                         reason=f"atol {atol:.3g} relative to the reference's magnitude {scale:.3g}, rtol {rtol:.3g}")


@st.composite
def conv_problems(draw):
    """(n, C, H, W, K, KH, KW, stride, padding, groups): few channels per group with kernels
    up to 11 (the FLAT loops, like conv1), or >= 16 with kernels up to 5 (the tap loops).
    Half the problems differ between the axes in kernel, padding and size, and most strides
    differ too, so a kernel that swaps a height and a width quantity fails in either layout."""
    groups = draw(st.sampled_from([1, 2, 4]))
    if draw(st.booleans()):
        c_per_g, k_max = draw(st.sampled_from([16, 24, 32, 40])), 5
    else:
        c_per_g, k_max = draw(st.integers(1, 5)), 11
    k_per_g = draw(st.one_of(st.integers(1, 6), st.sampled_from([16, 20, 33])))
    unequal = draw(st.booleans())
    kh = draw(st.integers(2 if unequal else 1, k_max))
    kw = draw(st.integers(1, k_max).filter(lambda v: not unequal or v != kh))
    ph = draw(st.integers(1 if unequal else 0, kh // 2))
    pw = draw(st.integers(0, kw // 2).filter(lambda v: not unequal or v != ph))
    # a quarter unit strides (dgrad's own loop), most of the rest unequal per axis
    stride = draw(st.sampled_from([(1, 1), (1, 1), (1, 2), (2, 1), (3, 2), (1, 4), (2, 2), (4, 3)]))
    height = draw(st.integers(max(1, kh - 2 * ph), kh - 2 * ph + 7))
    width = draw(st.integers(max(1, kw - 2 * pw), kw - 2 * pw + 7).filter(lambda v: not unequal or v != height))
    return (draw(st.integers(1, 3)), c_per_g * groups, height, width, k_per_g * groups, kh, kw, stride, (ph, pw),
            groups)


def _inputs(problem, dtype, fmt, seed, bias=True):
    n, c, h, w, k, kh, kw, _, _, groups = problem
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g).to(dtype).to(DEVICE).contiguous(memory_format=fmt)
    weight = (torch.randn(k, c // groups, kh, kw, generator=g) / (c // groups * kh * kw) ** 0.5).to(dtype).to(DEVICE)
    b = torch.randn(k, generator=g).to(dtype).to(DEVICE) if bias else None
    return x, weight, b


def check_against_reference(problem, precision, fmt, seed, *, bias=True, relu=False, x_grad=True):
    """Run kernels.conv2d forward and backward and compare y and every gradient with float64."""
    dtype, tf32, tol = PRECISIONS[precision]
    stride, padding, groups = problem[7:]
    x, weight, b = _inputs(problem, dtype, fmt, seed, bias)
    leaves = [t.requires_grad_() for t in (x if x_grad else None, weight, b) if t is not None]
    with allow_tf32(tf32):
        y = kernels.conv2d(x, weight, b, stride, padding, groups, relu)
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype).to(DEVICE)
        y.backward(dy)
    # an input contiguous in both layouts (C == 1, or H == W == 1) counts as NCHW (kernels._common.memory_format)
    ambiguous = x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.contiguous_format if ambiguous else fmt)

    x64, w64 = x.detach().double().cpu(), weight.detach().double().cpu()
    b64 = b.detach().double().cpu() if bias else None
    ref_leaves = [t.requires_grad_() for t in (x64 if x_grad else None, w64, b64) if t is not None]
    y64 = reference.conv2d(x64, w64, b64, stride, padding, groups, relu)
    _close(y, y64.detach(), tol)
    # The ReLU mask comes from our y: where y64 is within rounding of 0 the two could disagree.
    pre64 = reference.conv2d(x64, w64, b64, stride, padding, groups)
    pre64.backward(dy.double().cpu() * (y.detach().cpu() > 0) if relu else dy.double().cpu())
    for ours, ref in zip(leaves, ref_leaves):
        _close(ours.grad, ref.grad, tol)
    if x_grad:
        assert x.grad.is_contiguous(memory_format=fmt)
    else:
        assert x.grad is None


@pytest.mark.parametrize("fmt", MEMORY_FORMATS)
@settings(max_examples=2 * EXAMPLES)
@given(problem=conv_problems(), seed=st.integers(0, 2**31 - 1), bias=st.booleans(), relu=st.booleans(),
       x_grad=st.booleans())
def test_matches_reference_fp32(fmt, problem, seed, bias, relu, x_grad):
    """fp32 with tf32 off: on a GPU this is the true-fp32 ("ieee") path, accurate to ~1e-5."""
    check_against_reference(problem, "fp32", fmt, seed, bias=bias, relu=relu, x_grad=x_grad)


@requires_gpu
@pytest.mark.parametrize("precision", ["tf32", "fp16", "bf16"])
@settings(max_examples=EXAMPLES)
@given(problem=conv_problems(), seed=st.integers(0, 2**31 - 1), nhwc=st.booleans(), relu=st.booleans())
def test_matches_reference_reduced_precision(precision, problem, seed, nhwc, relu):
    fmt = torch.channels_last if nhwc else torch.contiguous_format
    check_against_reference(problem, precision, fmt, seed, relu=relu)


@pytest.mark.parametrize("fmt", MEMORY_FORMATS)
@pytest.mark.parametrize("problem", [
    (2, 3, 11, 11, 4, 11, 11, 4, 0, 1),       # the whole image is one window, like conv1's kernel
    (1, 32, 3, 5, 16, 5, 5, 1, (1, 0), 2),    # 1x1 output from padding, grouped, tap loops
], ids=["flat", "taps"])
def test_output_1x1(fmt, problem):
    check_against_reference(problem, "fp32", fmt, seed=3, relu=True)


ALEXNET_LIKE = {  # small-batch versions of the paper's layer geometry (section 3.5)
    "conv1": (2, 3, 59, 59, 96, 11, 11, 4, 2, 1),
    "conv2": (2, 96, 13, 13, 256, 5, 5, 1, 2, 2),
    "conv4": (2, 384, 9, 9, 384, 3, 3, 1, 1, 2),
}


@requires_gpu
@pytest.mark.parametrize("layer", ALEXNET_LIKE)
def test_fp32_without_tf32_is_accurate(layer):
    check_against_reference(ALEXNET_LIKE[layer], "fp32", torch.channels_last, seed=5, relu=True)


def _forced(configs, **extra):
    return [Config({**c.kwargs, **extra}, num_warps=c.num_warps, num_stages=c.num_stages) for c in configs]


@requires_gpu
@pytest.mark.parametrize("batch", [2, 128], ids=["pixel-tiles", "image-major"])
@pytest.mark.parametrize("precision", ["bf16", "tf32", "fp32"])
@pytest.mark.parametrize("layer", ["conv1", "conv2", "conv4"])
@pytest.mark.parametrize("kind", ["fwd", "dgrad", "wgrad"])
def test_every_gpu_config(kind, layer, precision, batch):
    """Each autotuning candidate of the precision forced in turn, in the variant the model runs:
    channels_last, conv1's input padded to 4 channels, bias, and for conv4 (as conv3-5) the fused
    ReLU, whose mask the backward GEMMs find already applied to dy (by the consumer), and
    conv4's dgrad epilogue masking dx by its input > 0 (as conv4-5 do for the ReLU before them;
    a config that miscompiles or overflows shared memory fails here). Batch 128 (the model's)
    runs the image-major tiles of every block that divides it, batch 2 the pixel-order ones."""
    dtype, tf32, tol = PRECISIONS[precision]
    problem, relu = (batch, *ALEXNET_LIKE[layer][1:]), layer == "conv4"
    x, weight, b = _inputs(problem, dtype, torch.channels_last, seed=7)
    weight = weight.contiguous(memory_format=torch.channels_last)  # the model's (dgrad reads 16-bit ones in place)
    geom = conv_geometry(x, weight, b, *problem[7:])
    x_k, w_k, geom_k = pad_input(x, weight, geom)  # as the autograd Function runs fwd and wgrad
    dy = torch.randn(geom.output_shape, device=DEVICE, dtype=dtype).contiguous(memory_format=torch.channels_last)
    x64, w64, b64 = x.double().cpu(), weight.double().cpu(), b.double().cpu()
    y64 = reference.conv2d(x64, w64, b64, geom.stride_h, geom.pad_h, geom.groups, relu)
    y = y64.to(dtype).to(DEVICE).contiguous(memory_format=torch.channels_last) if relu else None  # the mask's source
    dy64 = dy.double().cpu() * (y.double().cpu() > 0) if relu else dy.double().cpu()
    dz = dy64.to(dtype).to(DEVICE).contiguous(memory_format=torch.channels_last)  # dy as the backward GEMMs get it
    tuning = {"fwd": conv_configs.FWD, "dgrad": conv_configs.DGRAD, "wgrad": conv_configs.WGRAD}[kind]
    red_chan = geom.k_per_g if kind == "dgrad" else geom_k.c_per_g
    with allow_tf32(tf32):
        meta = dict((geom if kind == "dgrad" else geom_k).constexprs(),
                    FLAT=conv_configs.use_flat_reduction(red_chan, kind), IMG_MULT=pix_multiple(batch),
                    PRECISION=dot_precision(dtype))
        if kind == "dgrad":  # the tiles kept for how it reads this weight
            meta.update(zip(("WT_SG", "WT_SK", "WT_SC", "WT_SH", "WT_SW"), _weight_operand(weight, geom)[1]))
        configs = [c for c in tuning.candidates(meta["PRECISION"], x.element_size())
                   if tuning.fits(c, meta, x.element_size())]
        assert configs
        for config in configs:
            if kind == "fwd":
                _close(conv2d_forward(x_k, w_k, b, geom_k, relu=relu, config=config), y64, tol)
            elif kind == "dgrad":
                ref = torch.nn.grad.conv2d_input(x64.shape, w64, dy64, geom.stride_h, geom.pad_h, 1, geom.groups)
                ref = ref * (x64 > 0) if relu else ref
                _close(conv2d_input_grad(dz, weight, geom, relu_input=x if relu else None, config=config), ref, tol)
            else:
                ref = torch.nn.grad.conv2d_weight(x64, w64.shape, dy64, geom.stride_h, geom.pad_h, 1, geom.groups)
                dw, db = conv2d_weight_grad(dz, x_k, geom_k, config=config)
                _close(unpad_weight_grad(dw, geom, torch.contiguous_format), ref, tol)
                _close(db, dy64.sum((0, 2, 3)), tol)


def test_tf32_wgrad_configs_stage_through_registers():
    """tf32 (4-byte) wgrad candidates are the register-staged list (K-major operands for tf32
    wgmma, 16-byte copies); 16-bit inputs, which also carry precision "tf32", never get it (its
    register move is 32-bit only), nor does true fp32 or the interpreter."""
    wgrad = conv_configs.WGRAD
    tf32, half = wgrad.candidates("tf32", 4), wgrad.candidates("tf32", 2)
    assert tf32 and all(c.kwargs.get("STAGE_REGS") for c in tf32)
    assert half and not any(c.kwargs.get("STAGE_REGS") for c in half + wgrad.candidates("ieee", 4))
    assert not wgrad.interpreter.kwargs.get("STAGE_REGS") and not wgrad.small.kwargs.get("STAGE_REGS")
    x32, x16 = torch.empty(1), torch.empty(1, dtype=torch.bfloat16)
    meta = dict(KH=3, KW=3, C_PER_G=192, K_PER_G=192, FLAT=False, PRECISION="tf32")
    every = wgrad.configs + wgrad.tf32 + wgrad.ieee
    assert all(c.kwargs.get("STAGE_REGS") for c in wgrad.prune(every, {"dy": x32}, **meta))
    assert not any(c.kwargs.get("STAGE_REGS") for c in wgrad.prune(every, {"dy": x16}, **meta))


# ------------------------------------------------------------------- forced paths and splits
MIXED = (2, 32, 7, 6, 32, 3, 2, 1, 1, 2)  # 16 channels per group in and out: every loop is valid


@pytest.mark.parametrize("fmt", MEMORY_FORMATS)
@pytest.mark.parametrize("flat", [False, True], ids=["taps", "flat"])
def test_forced_reduction_loops(flat, fmt):
    """Both reduction loops of each kernel, forced through a config (as bench/conv_sweep.py does);
    the launchers read x through its strides when it is not channels_last."""
    x, weight, b = _inputs(MIXED, torch.float32, fmt, seed=11)
    geom = conv_geometry(x, weight, b, *MIXED[7:])
    dy = torch.randn(geom.output_shape, device=DEVICE).contiguous(memory_format=torch.channels_last)
    y = conv2d_forward(x, weight, b, geom, relu=True, config=_forced([conv_configs.FWD.interpreter], FLAT=flat)[0])
    dx = conv2d_input_grad(dy, weight, geom, y=y, config=_forced([conv_configs.DGRAD.interpreter], FLAT=flat)[0])
    dw, db = conv2d_weight_grad(dy, x, geom, y=y, config=_forced([conv_configs.WGRAD.interpreter], FLAT=flat)[0])

    x64, w64, b64 = (t.double().cpu().requires_grad_() for t in (x, weight, b))
    y64 = reference.conv2d(x64, w64, b64, *MIXED[7:], relu=True)
    y64.backward(dy.double().cpu())
    tol = TOLERANCES[torch.float32]
    for ours, ref in [(y, y64.detach()), (dx, x64.grad), (dw, w64.grad), (db, b64.grad)]:
        _close(ours, ref, tol)


@pytest.mark.parametrize("problem, fmt", [
    ((3, 128, 5, 7, 32, 3, 3, 1, 1, 2), torch.channels_last),      # "same" conv: LINEAR_X
    ((2, 64, 9, 6, 20, 3, 2, (2, 1), (1, 0), 1), torch.contiguous_format),  # strided, NCHW x
], ids=["same-nhwc", "strided-nchw"])
@pytest.mark.parametrize("splits", [1, 2])
def test_weight_grad_tap_columns(problem, fmt, splits):
    """wgrad's tap-column path (>= 64 channels per group; fewer go FLAT), including its LINEAR_X
    addressing (dense channels_last x, stride 1, output as large as the input, as conv3-5:
    x's pixel is the output pixel shifted by the padding)."""
    x, weight, _ = _inputs(problem, torch.float32, fmt, seed=31)
    stride, padding, groups = problem[7:]
    geom = conv_geometry(x, weight, None, stride, padding, groups)
    dy = torch.randn(geom.output_shape, device=DEVICE).contiguous(memory_format=torch.channels_last)
    dw, db = conv2d_weight_grad(dy, x, geom, splits=splits)
    ref = torch.nn.grad.conv2d_weight(x.double().cpu(), weight.shape, dy.double().cpu(), stride, padding, 1, groups)
    _close(dw, ref, TOLERANCES[torch.float32])
    _close(db, dy.double().cpu().sum((0, 2, 3)), TOLERANCES[torch.float32])


@settings(max_examples=EXAMPLES)
@given(problem=conv_problems(), seed=st.integers(0, 2**31 - 1), splits=st.integers(2, 4),
       nhwc=st.booleans())
def test_split_weight_grad_with_bias_matches_reference(problem, seed, splits, nhwc):
    """The weight gradient split into 2-4 pixel ranges (a GPU's choice for a small grid; the
    interpreter keeps one unless told), dw and the bias column's db: every split's partial is
    summed. The batch is raised past one split's pixels so the split happens."""
    _, c, h, w, k, kh, kw, stride, padding, groups = problem
    out_pix = ((h + 2 * padding[0] - kh) // stride[0] + 1) * ((w + 2 * padding[1] - kw) // stride[1] + 1)
    n = -(-(conv_configs.SPLIT_PIX_QUANTUM * (splits - 1) + 1) // out_pix)  # > one quantum per split but the last
    fmt = torch.channels_last if nhwc else torch.contiguous_format
    x, weight, _ = _inputs((n, *problem[1:]), torch.float32, fmt, seed, bias=False)
    geom = conv_geometry(x, weight, None, stride, padding, groups)
    dy = torch.randn(geom.output_shape, generator=torch.Generator().manual_seed(seed + 1)).to(DEVICE)
    dy = dy.contiguous(memory_format=torch.channels_last)
    dw, db = conv2d_weight_grad(dy, x, geom, splits=splits)
    x64, dy64, tol = x.double().cpu(), dy.double().cpu(), TOLERANCES[torch.float32]
    _close(dw, torch.nn.grad.conv2d_weight(x64, weight.shape, dy64, stride, padding, 1, groups), tol)
    _close(db, dy64.sum((0, 2, 3)), tol)


def test_weight_grad_split_is_deterministic():
    """Split reductions match the reference and repeat bit for bit."""
    problem = (2, 6, 13, 12, 20, 3, 3, 1, 1, 2)  # 2 * 13 * 12 = 312 output pixels
    x, weight, _ = _inputs(problem, torch.float32, torch.channels_last, seed=13)
    geom = conv_geometry(x, weight, None, *problem[7:])
    dy = torch.randn(geom.output_shape, device=DEVICE).contiguous(memory_format=torch.channels_last)
    ref = torch.nn.grad.conv2d_weight(x.double().cpu(), weight.shape, dy.double().cpu(), 1, 1, 1, 2)
    for splits in (1, 3):
        dw, db = conv2d_weight_grad(dy, x, geom, splits=splits)
        _close(dw, ref, TOLERANCES[torch.float32])
        _close(db, dy.double().cpu().sum((0, 2, 3)), TOLERANCES[torch.float32])
        dw2, db2 = conv2d_weight_grad(dy, x, geom, splits=splits)
        assert torch.equal(dw, dw2) and torch.equal(db, db2)


# ------------------------------------------------------------------- image-major tiles
@triton.jit
def _image_block_kernel(out_ptr, HEIGHT: tl.constexpr, WIDTH: tl.constexpr, BLOCK: tl.constexpr):
    n0, h, w = image_block(tl.program_id(0), HEIGHT, WIDTH, BLOCK)
    tl.store(out_ptr + 3 * tl.program_id(0) + tl.arange(0, 4), tl.where(tl.arange(0, 4) == 0, n0,
             tl.where(tl.arange(0, 4) == 1, h, w)), mask=tl.arange(0, 4) < 3)


def test_image_block_maps_tiles_to_positions():
    """Tile t of the image-major order is images [n0, n0 + BLOCK) at position (h, w), positions
    fastest: t = (n0 / BLOCK) * H*W + h*W + w; every (image block, position) exactly once."""
    height, width, block, n_img = 3, 5, 16, 48
    tiles = n_img // block * height * width
    out = torch.full((3 * tiles + 1,), -1, dtype=torch.int32, device=DEVICE)
    _image_block_kernel[(tiles,)](out, HEIGHT=height, WIDTH=width, BLOCK=block)
    got = out[:-1].view(tiles, 3).cpu().tolist()
    assert got == [[b * block, h, w] for b in range(n_img // block) for h in range(height) for w in range(width)]


@st.composite
def image_major_problems(draw):
    """Problems whose batch is a multiple of the 16-wide blocks forced below, so the kernels run
    their image-major tiles (kernels/conv/common.py image_block): every loop (tap columns and
    FLAT ones in wgrad), odd maps, strides, padding and groups."""
    groups = draw(st.sampled_from([1, 2]))
    c_per_g = draw(st.sampled_from([3, 16, 24]))  # 3: the forward's FLAT loop, which keeps the pixel order
    k_per_g = draw(st.sampled_from([16, 20]))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    height = draw(st.integers(max(1, kh - 2 * ph), kh - 2 * ph + 3))
    width = draw(st.integers(max(1, kw - 2 * pw), kw - 2 * pw + 3))
    return (draw(st.sampled_from([16, 32])), c_per_g * groups, height, width, k_per_g * groups, kh, kw, stride,
            (ph, pw), groups)


@settings(max_examples=max(4, EXAMPLES // 2))  # three kernels per example, ~4 s each on the interpreter
@given(problem=image_major_problems(), seed=st.integers(0, 2**31 - 1), flat=st.booleans(),
       splits=st.sampled_from([1, 2]), relu_input=st.booleans())
def test_image_major_tiles_match_reference(problem, seed, flat, splits, relu_input, monkeypatch):
    """The forward, dgrad (with and without its ReLU-mask epilogue) and wgrad (tap or FLAT
    columns, split or not, with the bias column) with 16-wide blocks on a batch of 16 or 32:
    the tiles are images at one position, the reduction of wgrad steps over images."""
    launched = []
    for module in (conv_fwd, conv_dgrad, conv_wgrad):
        def spy(kernel, tuned, tuning, grid, args, meta, *, real=module.launch, **kw):
            launched.append(meta)
            return real(kernel, tuned, tuning, grid, args, meta, **kw)
        monkeypatch.setattr(module, "launch", spy)
    x, weight, b = _inputs(problem, torch.float32, torch.channels_last, seed)
    stride, padding, groups = problem[7:]
    geom = conv_geometry(x, weight, b, stride, padding, groups)
    dy = torch.randn(geom.output_shape, generator=torch.Generator().manual_seed(seed + 1)).to(DEVICE)
    dy = dy.contiguous(memory_format=torch.channels_last)
    tile = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16)
    pixel_tiles = Config(dict(tile, GROUP_M=2), num_warps=4, num_stages=1)
    y = conv2d_forward(x, weight, b, geom, config=pixel_tiles)
    dx = conv2d_input_grad(dy, weight, geom, config=pixel_tiles, relu_input=x if relu_input else None)
    dw, db = conv2d_weight_grad(dy, x, geom, config=Config(dict(tile, FLAT=flat), num_warps=4, num_stages=1),
                                splits=splits)
    x64, w64, dy64 = x.double().cpu(), weight.double().cpu(), dy.double().cpu()
    tol = TOLERANCES[torch.float32]
    _close(y, reference.conv2d(x64, w64, b.double().cpu(), stride, padding, groups), tol)
    ref_dx = torch.nn.grad.conv2d_input(x64.shape, w64, dy64, stride, padding, 1, groups)
    _close(dx, ref_dx * (x64 > 0) if relu_input else ref_dx, tol)
    _close(dw, torch.nn.grad.conv2d_weight(x64, w64.shape, dy64, stride, padding, 1, groups), tol)
    _close(db, dy64.sum((0, 2, 3)), tol)
    # every launch got the batch's factor that makes its 16-wide blocks image-major (wgrad: also
    # splits of whole 16-pixel steps)
    assert len(launched) == 3 and all(m["IMG_MULT"] % 16 == 0 for m in launched)
    assert launched[2]["PIX_PER_SPLIT"] % 16 == 0


# ---------------------------------------------------------------------- autograd plumbing
def test_no_input_grad_skips_dgrad(monkeypatch):
    def no_dgrad(*args, **kwargs):
        raise AssertionError("dgrad ran although x needs no gradient")

    monkeypatch.setattr(conv_module, "conv2d_input_grad", no_dgrad)
    x, weight, b = _inputs((2, 3, 9, 9, 4, 3, 3, 2, 1, 1), torch.float32, torch.channels_last, seed=17)
    weight.requires_grad_()
    kernels.conv2d(x, weight, b, 2, 1).sum().backward()
    assert x.grad is None and weight.grad is not None


def test_frozen_weight_gets_only_the_bias_grad(monkeypatch):
    calls = []
    real = conv_module.conv2d_weight_grad
    monkeypatch.setattr(conv_module, "conv2d_weight_grad", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    x, weight, b = _inputs((2, 4, 8, 7, 6, 3, 3, 1, 1, 2), torch.float32, torch.contiguous_format, seed=19)
    b.requires_grad_()
    y = kernels.conv2d(x, weight, b, 1, 1, 2, relu=True)
    y.backward(torch.ones_like(y))
    assert calls[0]["weight_grad"] is False and weight.grad is None
    _close(b.grad, (y.detach() > 0).double().sum((0, 2, 3)).cpu(), TOLERANCES[torch.float32])


def test_empty_batch():
    x = torch.randn(0, 4, 9, 9, device=DEVICE, requires_grad=True)
    weight = torch.randn(6, 2, 3, 3, device=DEVICE, requires_grad=True)
    b = torch.randn(6, device=DEVICE, requires_grad=True)
    y = kernels.conv2d(x, weight, b, 2, 1, 2)
    assert y.shape == (0, 6, 5, 5)
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(weight.grad, torch.zeros_like(weight)) and torch.equal(b.grad, torch.zeros_like(b))


def test_any_strides():
    """A non-contiguous view is accepted (copied to channels_last internally)."""
    x = torch.randn(2, 3, 10, 18, device=DEVICE)[..., ::2]
    weight = torch.randn(5, 3, 3, 3, device=DEVICE)
    _close(kernels.conv2d(x, weight, padding=1), reference.conv2d(x.double().cpu(), weight.double().cpu(), padding=1),
           TOLERANCES[torch.float32])


def _conv(x_shape=(1, 4, 8, 8), w_shape=(6, 4, 3, 3), bias=None, **kwargs):
    x = torch.randn(x_shape, device=DEVICE) if isinstance(x_shape, tuple) else x_shape
    weight = torch.randn(w_shape, device=DEVICE) if isinstance(w_shape, tuple) else w_shape
    return lambda: kernels.conv2d(x, weight, bias, **kwargs)


@pytest.mark.parametrize("bad, error, match", [
    (_conv(dilation=2), ValueError, "dilation"),
    (_conv(w_shape=(6, 2, 3, 3), groups=3), ValueError, "divisible by groups"),
    (_conv(w_shape=(6, 4, 3, 3), groups=2), ValueError, "per group"),
    (_conv(w_shape=(6, 4, 7, 3), padding=0, x_shape=(1, 4, 5, 9)), ValueError, "larger than the padded input"),
    (_conv(w_shape=(6, 4, 3, 3), bias=torch.randn(5, device=DEVICE)), ValueError, "bias has 5 elements"),
    (_conv(bias=torch.randn(6, 1, device=DEVICE)), ValueError, "bias must be 1-D"),
    (_conv(x_shape=(4, 8, 8)), ValueError, "x must be 4-D"),
    (_conv(w_shape=(6, 4, 3)), ValueError, "weight must be 4-D"),
    (_conv(x_shape=torch.ones(1, 4, 8, 8, dtype=torch.int64, device=DEVICE)), TypeError, "dtype"),
    (_conv(x_shape=torch.ones(1, 4, 8, 8, dtype=torch.float64, device=DEVICE)), TypeError, "dtype"),
    (_conv(w_shape=torch.randn(6, 4, 3, 3, device=DEVICE).half()), TypeError, "must match"),
    (_conv(bias=torch.randn(6, device=DEVICE).half()), TypeError, "must match"),
    (_conv(x_shape=torch.empty(1, 4, 8, 8, device="meta")), ValueError, "is on meta"),
    (_conv(w_shape=torch.empty(6, 4, 3, 3, device="meta")), ValueError, "is on meta"),
    (_conv(padding=-1), ValueError, "padding"),
    (_conv(stride=0), ValueError, "stride"),
    (_conv(groups=0), ValueError, "groups"),
])
def test_bad_input_raises_clear_error(bad, error, match):
    with pytest.raises(error, match=match):
        bad()


@pytest.mark.parametrize("stride, padding, groups", [(np.int64(2), np.int64(1), np.int64(2)), ((2, np.int32(2)), 1, 2)])
def test_integral_numbers_are_accepted(stride, padding, groups):
    """numpy integers (numbers.Integral) work as stride/padding/groups, as Python ints do."""
    x, weight, b = _inputs((1, 4, 9, 8, 6, 3, 3, 2, 1, 2), torch.float32, torch.channels_last, seed=23)
    _close(kernels.conv2d(x, weight, b, stride, padding, groups),
           reference.conv2d(x.double().cpu(), weight.double().cpu(), b.double().cpu(), 2, 1, 2),
           TOLERANCES[torch.float32])


@pytest.mark.parametrize("kwargs, name", [(dict(stride=1.0), "stride"), (dict(stride=(1, 2.5)), "stride"),
                                          (dict(padding=1.0), "padding"), (dict(groups=1.0), "groups"),
                                          (dict(stride=True), "stride")])
def test_non_integral_sizes_raise_type_error(kwargs, name):
    with pytest.raises(TypeError, match=f"{name} must be an integer"):
        _conv(**kwargs)()


def test_pixel_count_past_int32_is_refused():
    """N*H*W past the kernels' int32 pixel indices is refused before anything is allocated or
    launched (x is a broadcast view: 33*8192*8192 pixels, no memory)."""
    weight = torch.randn(4, 3, 3, 3, device=DEVICE)
    huge = torch.zeros(1, 1, 1, 1, device=DEVICE).expand(33, 3, 8192, 8192)
    with pytest.raises(ValueError, match="32-bit"):
        conv_geometry(huge, weight)
    with pytest.raises(ValueError, match="32-bit"):
        kernels.conv2d(huge, weight)
    fits = torch.zeros(1, 1, 1, 1, device=DEVICE).expand(MAX_PIXELS // (8192 * 8192), 3, 8192, 8192)
    assert conv_geometry(fits, weight).n_in_pix <= MAX_PIXELS


def test_double_backward_raises():
    """create_graph=True would silently drop the second-order terms: it raises instead."""
    x, weight, b = _inputs((1, 4, 6, 6, 4, 3, 3, 1, 1, 1), torch.float32, torch.channels_last, seed=29)
    x.requires_grad_()
    weight.requires_grad_()
    y = kernels.conv2d(x, weight, b, padding=1, relu=True)
    (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|no autograd formula"):
        gx.sum().backward()


SPECIALS = st.sampled_from([float("nan"), float("inf"), float("-inf")])


@settings(max_examples=EXAMPLES)
@given(specials=st.lists(st.tuples(st.integers(0, 2 * 4 * 7 * 6 - 1), SPECIALS), min_size=1, max_size=3),
       nan_weight=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_relu_keeps_nan_and_inf(specials, nan_weight, seed):
    """The fused ReLU propagates NaN (torch.relu(nan) is nan; max(nan, 0) would give 0) and
    inf, wherever they come from: the input, or a NaN weight (as a diverged conv3 would have)."""
    problem = (2, 4, 7, 6, 5, 3, 3, 1, 1, 1)
    x, weight, b = _inputs(problem, torch.float32, torch.channels_last, seed)
    flat = x.permute(0, 2, 3, 1).reshape(-1)  # a view of x's storage
    for index, value in specials:
        flat[index] = value
    if nan_weight:
        weight[1, 2, 0, 0] = float("nan")
    y = kernels.conv2d(x, weight, b, 1, 1, 1, relu=True)
    ref = reference.conv2d(x.double().cpu(), weight.double().cpu(), b.double().cpu(), 1, 1, 1, relu=True)
    y = y.double().cpu()
    assert torch.equal(y.isnan(), ref.isnan()) and torch.equal(y.isinf(), ref.isinf())
    assert not ref.isfinite().all()  # a special reaches the output (relu(-inf) = 0 alone could hide it)
    finite = ref.isfinite()
    if finite.any():
        assert_close_verbose(y[finite], ref[finite], atol=1e-5 * float(ref[finite].abs().max()), rtol=1e-5,
                             check_dtype=True, reason="fp32 sums of 45 terms, relative to the largest output")
    assert_close_verbose(y[y.isinf()], ref[ref.isinf()], rtol=0, atol=0, check_dtype=True,
                         reason="the infinities, signs included, at the same places")


@requires_gpu
def test_mixed_devices_raise():
    with pytest.raises(ValueError, match="CUDA tensor|is on"):
        kernels.conv2d(torch.randn(1, 4, 8, 8, device="cuda"), torch.randn(6, 4, 3, 3))


@pytest.mark.parametrize("dtype", [torch.float16, pytest.param(torch.bfloat16, marks=requires_gpu)])
@settings(max_examples=EXAMPLES)
@given(problem=conv_problems(), seed=st.integers(0, 2**31 - 1), flat=st.booleans())
def test_dgrad_reads_a_16_bit_channels_last_weight_in_place(dtype, problem, seed, flat):
    """In 16 bits the dgrad reads a channels_last weight through its strides (no per-call
    re-layout); an OIHW weight is copied to the k-contiguous layout first. Both give the same
    dx, bit for bit, close to float64 (fp16: the interpreter computes it; bf16 it cannot)."""
    x, weight, _ = _inputs(problem, dtype, torch.channels_last, seed, bias=False)
    geom = conv_geometry(x, weight, None, *problem[7:])
    dy = torch.randn(geom.output_shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    dy = dy.to(DEVICE).contiguous(memory_format=torch.channels_last)
    config = _forced([conv_configs.DGRAD.interpreter], FLAT=flat)[0] if DEVICE == "cpu" else None
    in_place = conv2d_input_grad(dy, weight.contiguous(memory_format=torch.channels_last), geom, config=config)
    copied = conv2d_input_grad(dy, weight.contiguous(), geom, config=config)
    assert torch.equal(in_place, copied)
    ref = torch.nn.grad.conv2d_input(geom.input_shape, weight.double().cpu(), dy.double().cpu(), problem[7],
                                     problem[8], 1, problem[9])
    _close(in_place, ref, TOLERANCES[dtype])

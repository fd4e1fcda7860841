"""kernels.augment against kernels.reference.augment with the same draws; alexnet.data.augment's
draws and lighting; alexnet.training.evaluation's views and error counts."""
import pytest
import torch
from compare import assert_close_verbose
from helpers import DEVICE, DTYPES, MEMORY_FORMATS, assert_close, requires_gpu
from hypothesis import given
from hypothesis import strategies as st

import kernels
from alexnet.data.augment import AugmentConfig, draw, lighting_shift
from alexnet.training.evaluation import crop_views, predict, topk_wrong, view_offsets
from kernels import reference


def _inputs(batch, height, width, size, gen=None):
    images = torch.randint(0, 256, (batch, height, width, 3), dtype=torch.uint8, generator=gen)
    mean = torch.rand(height, width, 3, generator=gen) * 255
    offsets = torch.stack([torch.randint(0, height - size + 1, (batch,), generator=gen),
                           torch.randint(0, width - size + 1, (batch,), generator=gen)], dim=1).int()
    flips = torch.rand(batch, generator=gen) < 0.5
    shift = torch.randn(batch, 3, generator=gen) * 20
    return [t.to(DEVICE) for t in (images, offsets, flips, shift, mean)]


# The crop size is a compile-time constant of the kernel: a few values keep GPU runs from
# compiling one kernel per example.
@given(batch=st.integers(1, 4), height=st.integers(7, 23), width=st.integers(7, 23), size=st.sampled_from([1, 4, 7]),
       channels_last=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_matches_reference(batch, height, width, size, channels_last, seed):
    args = _inputs(batch, height, width, size, torch.Generator().manual_seed(seed))
    y = kernels.augment(*args, size=size, channels_last=channels_last)
    expected = reference.augment(*args, size=size, dtype=torch.float64, channels_last=channels_last)
    assert y.shape == (batch, 3, size, size) and y.dtype == torch.float32
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert_close(y, expected, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", MEMORY_FORMATS)
def test_paper_sizes(dtype, fmt):
    """256x256 images, 224x224 crops, every dtype the model may run in."""
    args = _inputs(2, 256, 256, 224)
    channels_last = fmt == torch.channels_last
    y = kernels.augment(*args, size=224, dtype=dtype, channels_last=channels_last)
    assert y.dtype == dtype and y.is_contiguous(memory_format=fmt)
    assert_close(y, reference.augment(*args, size=224, dtype=torch.float64), dtype)


def test_crop_flip_and_mean_positions():
    """With images that hold their own coordinates, each output pixel says where it came from."""
    h, w, size = 12, 17, 7
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    image = torch.stack([rows, cols, rows * 0 + 5], dim=-1).to(torch.uint8)  # (h, w, 3)
    images = torch.stack([image, image])
    mean = torch.zeros(h, w, 3)
    mean[..., 2] = (rows * w + cols).float() / 1000  # the mean is taken at the same pixels
    offsets = torch.tensor([[3, 8], [5, 2]], dtype=torch.int32)
    flips = torch.tensor([False, True])
    shift = torch.tensor([[0.0, 0.0, 0.5], [0.0, 0.0, -0.5]])
    args = [t.to(DEVICE) for t in (images, offsets, flips, shift, mean)]
    y = kernels.augment(*args, size=size).cpu()
    ar = torch.arange(size)
    for n, (top, left) in enumerate(offsets.tolist()):
        src_col = left + (size - 1 - ar if flips[n] else ar)
        assert torch.equal(y[n, 0], (top + ar)[:, None].float().expand(size, size))
        assert torch.equal(y[n, 1], src_col[None, :].float().expand(size, size))
        expected_b = 5 - ((top + ar)[:, None] * w + src_col[None, :]).float() / 1000 + shift[n, 2]
        assert_close_verbose(y[n, 2], expected_b, rtol=1.3e-6, atol=1e-5, check_dtype=True,
                             reason="torch.testing's fp32 defaults: two fp32 roundings of values near 5")


def test_bad_inputs_raise():
    images, offsets, flips, shift, mean = _inputs(2, 10, 10, 8)
    with pytest.raises(TypeError, match="uint8"):
        kernels.augment(images.float(), offsets, flips, shift, mean, size=8)
    with pytest.raises(ValueError, match="shape"):
        kernels.augment(images, offsets[:1], flips, shift, mean, size=8)
    with pytest.raises(ValueError, match="crop size"):
        kernels.augment(images, offsets, flips, shift, mean, size=11)
    with pytest.raises(TypeError, match="output dtype"):
        kernels.augment(images, offsets, flips, shift, mean, size=8, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        reference.augment(images, offsets + 3, flips, shift, mean, size=8)
    if DEVICE == "cpu":  # on the GPU the kernel clamps instead of syncing to check
        with pytest.raises(ValueError, match=r"\[0, 2\]"):
            kernels.augment(images, offsets + 3, flips, shift, mean, size=8)


@requires_gpu
def test_gpu_clamps_offsets_out_of_range():
    images, offsets, flips, shift, mean = _inputs(3, 40, 40, 32)
    bad = offsets.clone()
    bad[0] = torch.tensor([-5, 100], dtype=torch.int32)
    y = kernels.augment(images, bad, flips, shift, mean, size=32)
    fixed = bad.clamp(min=0, max=8)
    assert_close(y, reference.augment(images, fixed, flips, shift, mean, size=32, dtype=torch.float64),
                 torch.float32)


def test_draws_ranges_and_reproducibility():
    config = AugmentConfig()
    d1 = draw(20000, (256, 256), config, generator=torch.Generator().manual_seed(7))
    d2 = draw(20000, (256, 256), config, generator=torch.Generator().manual_seed(7))
    for a, b in zip((d1.offsets, d1.flips, d1.alphas), (d2.offsets, d2.flips, d2.alphas)):
        assert torch.equal(a, b)
    assert d1.offsets.dtype == torch.int32 and d1.flips.dtype == torch.bool
    assert d1.offsets.min() == 0 and d1.offsets.max() == 32  # 33 positions per axis, both ends
    assert set(torch.bincount(d1.offsets[:, 0], minlength=33).tolist()) != {0}
    assert abs(d1.flips.float().mean().item() - 0.5) < 0.02
    assert abs(d1.alphas.std().item() - 0.1) < 0.005 and abs(d1.alphas.mean().item()) < 0.005
    d3 = draw(100, (256, 256), config, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(d1.offsets[:100], d3.offsets)
    off = draw(100, (256, 300), AugmentConfig(flip=False, lighting_std=0.0))
    assert not off.flips.any() and not off.alphas.any()
    assert off.offsets[:, 0].max() <= 32 and off.offsets[:, 1].max() <= 76


def test_lighting_shift_has_the_covariance_of_the_pixels():
    """shift = sum_i p_i alpha_i sqrt(lambda_i): with alpha ~ N(0, s) its covariance is
    s^2 * C, C the pixels' covariance (p_i, lambda_i its eigenvectors and eigenvalues)."""
    a = torch.randn(3, 3, dtype=torch.float64)
    cov = a @ a.T * 1000
    values, vectors = torch.linalg.eigh(cov)
    alphas = torch.randn(3, 3, dtype=torch.float64)
    shift = lighting_shift(alphas, values, vectors)
    expected = sum(vectors[:, i] * (alphas[:, i:i + 1] * values[i].sqrt()) for i in range(3))
    assert_close_verbose(shift, expected, rtol=1e-7, atol=1e-7, check_dtype=True,
                         reason="torch.testing's fp64 defaults: the same 3-term sum in float64")
    many = lighting_shift(torch.randn(200000, 3, dtype=torch.float64) * 0.1, values, vectors)
    # A sample covariance of 200,000 draws: its relative standard error is about sqrt(2 / 200000) = 0.3%
    # per entry; 3% is ten of those.
    assert_close_verbose(many.T.cov(), 0.01 * cov, rtol=0.03, atol=0.03 * cov.abs().max().item() * 0.01,
                         reason="sampling error of a 200,000-draw covariance (~0.3%), ten times over")


def test_ten_views_positions():
    assert view_offsets("ten", (256, 256)) == [
        (0, 0, False), (0, 32, False), (32, 0, False), (32, 32, False), (16, 16, False),
        (0, 0, True), (0, 32, True), (32, 0, True), (32, 32, True), (16, 16, True)]
    assert view_offsets("centre", (256, 256)) == [(16, 16, False)]
    with pytest.raises(ValueError, match="views"):
        view_offsets("five", (256, 256))
    h, w, size = 11, 14, 8
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    images = torch.stack([rows, cols, rows * 0], dim=-1).to(torch.uint8)[None].to(DEVICE)
    views = list(crop_views(images, torch.zeros(h, w, 3, device=DEVICE), "ten", size))
    assert len(views) == 10
    for (top, left, flip), v in zip(view_offsets("ten", (h, w), size), views):
        cols_seen = v[0, 1, 0].cpu()
        assert v[0, 0, :, 0].cpu().tolist() == list(range(top, top + size))
        assert cols_seen.tolist() == (list(range(left + size - 1, left - 1, -1)) if flip else
                                      list(range(left, left + size)))
        assert not v[0, 2].any()  # no lighting at test time


def test_predict_averages_softmax_over_views():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 6, 4)).to(DEVICE)
    images = torch.randint(0, 256, (3, 9, 9, 3), dtype=torch.uint8, device=DEVICE)
    mean = torch.rand(9, 9, 3, device=DEVICE) * 255
    probs = predict(model, images, mean, "ten", size=6)
    expected = torch.stack([torch.softmax(model(x), 1) for x in crop_views(images, mean, "ten", 6)]).mean(0)
    why = "torch.testing's fp32 defaults: the same fp32 softmaxes averaged in another order"
    assert_close_verbose(probs, expected, rtol=1.3e-6, atol=1e-5, check_dtype=True, reason=why)
    assert_close_verbose(probs.sum(1), torch.ones(3, device=DEVICE), rtol=1.3e-6, atol=1e-5, check_dtype=True,
                         reason=why)


def test_topk_wrong():
    scores = torch.randn(500, 20)
    labels = torch.randint(0, 20, (500,))
    rank = (scores > scores.gather(1, labels[:, None])).sum(1)  # how many classes beat the label
    got = topk_wrong(scores, labels, (1, 5))
    assert got.tolist() == [(rank >= 1).sum().item(), (rank >= 5).sum().item()]
    assert topk_wrong(scores[:, :3], labels % 3, (1, 5))[1] == 0  # k past the classes: never wrong

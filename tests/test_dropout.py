"""kernels.dropout: seeded, reproducible, the right rate, exact scaling, mask-following gradient."""
import math

import pytest
import torch
from helpers import DEVICE, DTYPES
from hypothesis import given
from hypothesis import strategies as st

import kernels


def _x(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) + 0.5).to(dtype).to(DEVICE)  # never zero: zeros mark drops


@pytest.mark.parametrize("dtype", DTYPES)
@given(numel=st.integers(1, 5000), p=st.sampled_from([0.1, 0.5, 0.9]), seed=st.integers(0, 2**31 - 1))
def test_kept_values_scaled_exactly_and_gradient_follows_mask(dtype, numel, p, seed):
    x = _x((numel,), dtype, seed).requires_grad_()
    torch.manual_seed(seed)
    y = kernels.dropout(x, p)
    kept = y != 0
    scale = 1.0 / (1.0 - p)
    expected = torch.where(kept, (x.detach().float() * scale).to(dtype), torch.zeros_like(x))
    assert torch.equal(y, expected)
    dy = _x((numel,), dtype, seed + 1)
    y.backward(dy)
    assert torch.equal(x.grad, torch.where(kept, (dy.float() * scale).to(dtype), torch.zeros_like(dy)))


@pytest.mark.parametrize("p", [0.2, 0.5, 0.75])
def test_kept_fraction_within_binomial_bound(p):
    n = 1 << 17
    kept = (kernels.dropout(_x((n,)), p) != 0).double().mean().item()
    bound = 5 * math.sqrt(p * (1 - p) / n) + 2**-16  # 5 sigma, plus p's 16-bit resolution
    assert abs(kept - (1 - p)) < bound, (kept, 1 - p, bound)


def test_same_seed_same_mask_different_seed_different_mask():
    x = _x((3, 1000))
    torch.manual_seed(123)
    a = kernels.dropout(x)
    torch.manual_seed(123)
    b = kernels.dropout(x)
    c = kernels.dropout(x)  # next draw from the generator: a new seed
    assert torch.equal(a, b)
    assert not torch.equal(a != 0, c != 0)


def test_explicit_generator():
    x = _x((2048,))
    gen_device = DEVICE
    a = kernels.dropout(x, generator=torch.Generator(gen_device).manual_seed(7))
    b = kernels.dropout(x, generator=torch.Generator(gen_device).manual_seed(7))
    c = kernels.dropout(x, generator=torch.Generator(gen_device).manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_mask_chunks_are_independent():
    # Each Philox call feeds four chunks of a block: no two 256-element chunks may repeat.
    mask = (kernels.dropout(_x((1 << 14,))) != 0).view(-1, 256)
    assert len({tuple(row.tolist()) for row in mask}) == mask.shape[0]


def test_channels_last_layout_kept_and_gradient_matches():
    x = _x((2, 5, 3, 4)).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = kernels.dropout(x, 0.3)
    assert y.is_contiguous(memory_format=torch.channels_last)
    y.backward(torch.ones(2, 5, 3, 4, device=DEVICE))  # contiguous NCHW gradient
    assert torch.equal(x.grad != 0, y != 0)


def test_eval_mode_and_p0_are_identity_p1_drops_all():
    x = _x((100,)).requires_grad_()
    assert kernels.dropout(x, 0.5, training=False) is x
    assert kernels.dropout(x, 0.0) is x
    y = kernels.dropout(x, 1.0)
    assert torch.equal(y, torch.zeros_like(y))
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_backward_stores_nothing_mask_sized():
    x = _x((4096,)).requires_grad_()
    y = kernels.dropout(x)
    saved = [t for t in y.grad_fn.saved_tensors]
    assert all(t.numel() == 1 for t in saved), [t.shape for t in saved]


def test_empty():
    assert kernels.dropout(_x((0, 5))).shape == (0, 5)


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan")])
def test_bad_p(p):
    with pytest.raises(ValueError, match="p must be in"):
        kernels.dropout(_x((4,)), p)


def test_bad_dtype_and_device():
    with pytest.raises(TypeError, match="dtype"):
        kernels.dropout(torch.ones(4, dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match="is on meta"):
        kernels.dropout(torch.empty(4, device="meta"))


# ------------------------------------------------------------------ column dropout (the model's layer)
def _streams(seeds, call=0):
    return torch.tensor(seeds, dtype=torch.int64, device=DEVICE), torch.tensor([call], device=DEVICE)


@given(rows=st.integers(1, 9), width=st.integers(1, 70), columns=st.integers(1, 3),
       call=st.sampled_from([0, 1, 7, 2**32 + 3]), p=st.sampled_from([0.1, 0.5, 0.9]),
       seed=st.integers(0, 2**62))
def test_column_dropout_kernel_draws_the_reference_masks_bit_for_bit(rows, width, columns, call, p, seed):
    """The Triton kernel (CUDA, or the interpreter) and the CPU implementation (Philox in torch
    ops, kernels.reference.column_dropout) drop the same units and scale them the same way,
    at any call index (its high word included), and both return call + 1."""
    from kernels import reference

    x = _x((rows, columns * width), seed=seed % 1000)
    seeds, calls = _streams([seed + c for c in range(columns)], call)
    y, next_call = kernels.column_dropout(x, seeds, calls, p)
    expected, expected_next = reference.column_dropout(x.cpu(), seeds.cpu(), calls.cpu(), p)
    assert torch.equal(y.cpu(), expected) and int(next_call) == int(expected_next) == call + 1
    assert int(calls) == call  # the input is not advanced in place


@given(rows=st.integers(1, 9), width=st.integers(1, 70), columns=st.integers(1, 3), p=st.sampled_from([0.1, 0.5]),
       seed=st.integers(0, 2**62))
def test_column_dropout_with_relu_is_relu_then_dropout_both_ways(rows, width, columns, p, seed):
    """relu=True (the fc layers' ReLU fused into the launch): y and the gradient are exactly
    those of torch.relu followed by column dropout, NaN included; the reference agrees."""
    from kernels import reference

    g = torch.Generator().manual_seed(seed % 1000)
    x = (torch.randn(rows, columns * width, generator=g) + 0.1).to(DEVICE)
    x.view(-1)[:: 7] = float("nan")
    seeds, calls = _streams([seed + c for c in range(columns)], 3)
    fused_x = x.clone().requires_grad_()
    y, _ = kernels.column_dropout(fused_x, seeds, calls, p, relu=True)
    plain_x = x.clone().requires_grad_()
    expected, _ = kernels.column_dropout(torch.relu(plain_x), seeds, calls, p)
    assert torch.equal(y.isnan(), expected.isnan()) and torch.equal(y.nan_to_num(), expected.nan_to_num())
    ref = reference.column_dropout(x.cpu(), seeds.cpu(), calls.cpu(), p, relu=True)[0]
    assert torch.equal(y.cpu().isnan(), ref.isnan()) and torch.equal(y.cpu().nan_to_num(), ref.nan_to_num())
    dy = torch.randn(x.shape, generator=g).to(DEVICE)
    y.backward(dy)
    expected.backward(dy)
    assert torch.equal(fused_x.grad.nan_to_num(), plain_x.grad.nan_to_num())
    assert torch.equal(fused_x.grad.isnan(), plain_x.grad.isnan())


def test_column_dropout_at_call_0_is_the_plain_kernel_per_column():
    """One launch for all columns: column c's block gets exactly the mask the plain dropout
    kernel draws for that block with seed c, so the single-device (B, 2F) launch and a rank's
    (B, F) launch agree; a later call draws a new mask; the backward applies the forward's."""
    from kernels.dropout import apply_dropout_mask

    g = torch.Generator().manual_seed(0)
    x = (torch.rand(5, 3 * 40, generator=g) + 0.5).to(DEVICE).requires_grad_()
    seeds, calls = _streams([123456789, 987654321, 5])
    y, next_call = kernels.column_dropout(x, seeds, calls, 0.5)
    for c, seed in enumerate(seeds.tolist()):
        block = x.detach()[:, 40 * c:40 * (c + 1)].contiguous()
        assert torch.equal(y[:, 40 * c:40 * (c + 1)], apply_dropout_mask(block, torch.tensor([seed], device=DEVICE),
                                                                          0.5))
    second, _ = kernels.column_dropout(x.detach(), seeds, next_call, 0.5)  # a later call before the backward
    dy = torch.rand(y.shape, generator=g).to(DEVICE) + 0.5
    y.backward(dy)
    assert torch.equal(x.grad, torch.where(y != 0, 2 * dy, torch.zeros_like(dy)))
    assert not torch.equal(second != 0, y != 0)


def test_column_dropout_double_backward_is_exact_and_saves_nothing_mask_sized():
    x = _x((6, 32)).requires_grad_()
    y, _ = kernels.column_dropout(x, *_streams([3, 4]), 0.5)
    assert all(t.numel() <= 2 for t in y.grad_fn.saved_tensors)  # the seeds and the next call index
    dy = _x((6, 32), seed=1).requires_grad_()
    (dx,) = torch.autograd.grad(y, x, dy, create_graph=True)
    (ddy,) = torch.autograd.grad(dx, dy, torch.ones_like(dx))
    assert torch.equal(ddy, torch.where(y != 0, 2.0, 0.0))  # d(dx)/d(dy) is the mask again


def test_column_dropout_keeps_nan_where_dropped_and_takes_any_strides_and_empty():
    x = _x((4, 64))
    x[0, :] = float("nan")
    y, _ = kernels.column_dropout(x, *_streams([1, 2]), 0.5)
    assert torch.isnan(y[0]).all()  # x * 0 where dropped, as torch's dropout
    wide = _x((64, 4)).t()  # non-contiguous: the same values give the same result
    assert torch.equal(kernels.column_dropout(wide, *_streams([1, 2]), 0.5)[0],
                       kernels.column_dropout(wide.contiguous(), *_streams([1, 2]), 0.5)[0])
    empty, next_call = kernels.column_dropout(_x((0, 8)), *_streams([1, 2], 4), 0.5)
    assert empty.shape == (0, 8) and int(next_call) == 5


def test_column_dropout_checks():
    seeds, calls = _streams([1, 2])
    with pytest.raises(ValueError, match="equal columns"):
        kernels.column_dropout(_x((2, 7)), seeds, calls, 0.5)
    with pytest.raises(TypeError, match="call must be a 1-D int64"):
        kernels.column_dropout(_x((2, 8)), seeds, calls.int(), 0.5)
    with pytest.raises(ValueError, match="p < 1"):
        kernels.column_dropout(_x((2, 8)), seeds, calls, 1.0)
    with pytest.raises(ValueError, match="2-D"):
        kernels.column_dropout(_x((2, 8, 1)), seeds, calls, 0.5)


@pytest.mark.gpu
def test_cuda_graph_replays_advance_the_dropout_count():
    """--cuda-graph with the column op: StepRunner pins the layer's call count before the
    capture, so every replay draws new masks (and a short batch run plainly in between moves
    the same count): the weights and the count equal the plain run's bit for bit."""
    from alexnet.network.layers import ColumnDropout, Linear
    from alexnet.training.optim import FlatPaperSGD, param_groups
    from alexnet.training.step import training_step
    from alexnet.training.step_graph import StepRunner

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc6, self.fc7, self.fc8 = Linear(12, 16, "relu"), Linear(16, 16, "relu"), Linear(16, 5)
            for param in self.parameters():
                torch.nn.init.normal_(param, 0.1, 0.3)
            self.dropout = ColumnDropout(kernels.dropout, 0.5, seed=3, columns=(0, 1),
                                         column_op=kernels.column_dropout)

        def forward(self, x):
            return self.fc8(self.dropout(self.fc7(self.dropout(self.fc6(x)))))

    runs = []
    for capture in (False, True):
        model = Net().cuda()
        optimizer = FlatPaperSGD(param_groups(model), lr=0.05)
        runner = StepRunner(training_step, model, optimizer, torch.ones((), dtype=torch.bool, device="cuda"),
                            capture=capture, warmup=2, log=lambda message: None)
        g = torch.Generator().manual_seed(2)
        batches = [(torch.randn(6, 12, generator=g), torch.randint(0, 5, (6,), generator=g)) for _ in range(7)]
        batches.insert(5, (batches[0][0][:4], batches[0][1][:4]))  # a short batch between replays
        losses = [runner(x.cuda(), y.cuda())[0].clone() for x, y in batches]
        runs.append((losses, [p.detach().clone() for p in model.parameters()], model.dropout.get_rng_state("cuda")))
        assert (runner.graph is not None) == capture
    (plain_losses, plain_weights, plain_state), (losses, weights, state) = runs
    assert [int(s) for s in state] == [int(s) for s in plain_state] == [2 * 8, 2 * 8]
    assert all(torch.equal(a, b) for a, b in zip(losses + weights, plain_losses + plain_weights, strict=True))

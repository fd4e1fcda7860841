"""kernels.cross_entropy: the step's loss, gradient, error count and finiteness in one launch,
against F.cross_entropy / torch.argmax in float64."""
import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICE, DTYPES, TOLERANCES, assert_close_verbose
from hypothesis import given
from hypothesis import strategies as st

from kernels import reference
from kernels.cross_entropy import softmax_cross_entropy


def _problem(rows, classes, dtype, seed, hit=0.3, ties=False):
    """Random logits (never all equal) and labels, about `hit` of them the row's argmax. With
    `ties`, about half the rows repeat their maximum at a random other column (past 4096
    classes often in another chunk of the kernel's row loop): the first index must win."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, classes, generator=g) * 4).to(dtype)
    if ties and classes > 1:
        tie_rows = torch.rand(rows, generator=g) < 0.5
        cols = torch.randint(0, classes, (rows,), generator=g)
        best = logits.max(1).values
        logits[tie_rows, cols[tie_rows]] = best[tie_rows]
    labels = torch.randint(0, classes, (rows,), generator=g)
    take = torch.rand(rows, generator=g) < hit
    labels = torch.where(take, logits.float().argmax(1), labels)
    return logits.to(DEVICE), labels.to(DEVICE)


# Half the class counts need more than one 4096-class chunk per row (the kernel's second pass
# re-reads the row for the gradient); ties draw a repeated maximum (first index wins).
@pytest.mark.parametrize("dtype", DTYPES)
@given(rows=st.integers(1, 70), classes=st.sampled_from([1, 2, 7, 100, 1000, 1001, 4097, 5000, 8193, 9001]),
       seed=st.integers(0, 2**31 - 1), ties=st.booleans())
def test_matches_torch_in_float64(dtype, rows, classes, seed, ties):
    logits, labels = _problem(rows, classes, dtype, seed, ties=ties)
    finite = torch.ones((), dtype=torch.bool, device=DEVICE)
    loss, dlogits, wrong = softmax_cross_entropy(logits, labels, finite)
    x = logits.double().requires_grad_()
    expected = F.cross_entropy(x, labels)
    expected.backward()
    atol, rtol = TOLERANCES[dtype]
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert_close_verbose(loss.double(), expected.detach(), atol=1e-5, rtol=1e-5, reason="mean loss")
    assert dlogits.dtype == dtype and dlogits.shape == logits.shape
    assert_close_verbose(dlogits.double(), x.grad, atol=atol / rows, rtol=rtol, reason="dlogits")
    assert wrong.dtype == torch.int64 and int(wrong) == int((logits.argmax(1) != labels).sum())
    assert bool(finite)


def test_argmax_ties_and_non_finite_rows_follow_torch():
    x = torch.tensor([[1.0, 3.0, 3.0, 0.0],                  # tie: the first maximum (1)
                      [0.0, float("nan"), 5.0, float("nan")],  # NaN is the maximum: its first index (1)
                      [float("-inf")] * 4,                   # all -inf: index 0; loss NaN
                      [0.0, float("inf"), 1.0, 2.0],         # +inf: loss NaN
                      [float("-inf"), 0.0, 1.0, 2.0]],       # the label's logit -inf: loss inf
                     device=DEVICE)
    labels = torch.tensor([1, 1, 0, 1, 0], device=DEVICE)
    for rows in ([0], [1], [2], [3], [4], [0, 1, 2, 3, 4]):
        finite = torch.ones((), dtype=torch.bool, device=DEVICE)
        loss, dlogits, wrong = softmax_cross_entropy(x[rows], labels[rows], finite)
        ref_loss, ref_grad, ref_wrong = reference.softmax_cross_entropy(x[rows].double(), labels[rows])
        assert int(wrong) == int(ref_wrong) == int((x[rows].argmax(1) != labels[rows]).sum()), rows
        why = f"rows {rows}: fp32 against float64 on values of at most 5 (torch's float64 defaults)"
        assert_close_verbose(loss.double(), ref_loss, rtol=1e-7, atol=1e-7, equal_nan=True, check_dtype=True,
                             reason=why)
        assert_close_verbose(loss.double(), F.cross_entropy(x[rows].double(), labels[rows]), rtol=1e-7, atol=1e-7,
                             equal_nan=True, check_dtype=True, reason=why)
        assert_close_verbose(dlogits.double(), ref_grad, rtol=1e-7, atol=1e-7, equal_nan=True, check_dtype=True,
                             reason=why)
        assert bool(finite) == bool(torch.isfinite(ref_loss)), rows


@pytest.mark.parametrize("later", [4096, 4500, 8191])
def test_argmax_tie_across_chunks_takes_the_first_index(later):
    """Rows over 4096 classes are read in chunks: a maximum repeated in a later chunk must not
    take the guess (torch.argmax: the first index wins)."""
    x = torch.randn(3, 8192, device=DEVICE)
    x[:, 10] = x[:, later] = 50.0
    x[2, 4095] = x[2, later] = 60.0  # the tie at the last column of the first chunk
    labels = torch.tensor([10, later, 4095], device=DEVICE)
    _, _, wrong = softmax_cross_entropy(x, labels)
    assert x.argmax(1).tolist() == [10, 10, 4095]
    assert int(wrong) == 1  # row 1: the label is the later copy of the maximum


def test_a_whole_chunk_of_minus_inf_before_the_finite_logits():
    """Past 4096 classes a row is read in chunks: a first chunk all -inf must not poison the
    running sum (exp(-inf - -inf) is NaN)."""
    x = torch.randn(2, 5000, device=DEVICE)
    x[0, :4200] = float("-inf")
    labels = torch.tensor([4500, 3], device=DEVICE)
    loss, dlogits, wrong = softmax_cross_entropy(x, labels)
    x64 = x.double().requires_grad_()
    expected = F.cross_entropy(x64, labels)
    expected.backward()
    assert torch.isfinite(loss)
    assert_close_verbose(loss.double(), expected.detach(), atol=1e-5, rtol=1e-5, reason="mean loss")
    assert_close_verbose(dlogits.double(), x64.grad, atol=1e-7, rtol=1e-5, reason="dlogits")
    assert int(wrong) == int((x.argmax(1) != labels).sum())


def test_finite_is_anded_in_place_and_never_set_back():
    logits, labels = _problem(8, 10, torch.float32, 1)
    finite = torch.zeros((), dtype=torch.bool, device=DEVICE)
    softmax_cross_entropy(logits, labels, finite)
    assert not bool(finite)  # a finite loss does not clear an earlier non-finite one


def test_labels_out_of_range_poison_their_rows():
    logits, labels = _problem(6, 10, torch.float32, 2)
    labels[2], labels[4] = 10, -100
    finite = torch.ones((), dtype=torch.bool, device=DEVICE)
    loss, dlogits, _ = softmax_cross_entropy(logits, labels, finite)
    assert torch.isnan(loss) and not bool(finite)
    assert torch.isnan(dlogits[[2, 4]]).all() and torch.isfinite(dlogits[[0, 1, 3, 5]]).all()


def test_empty_batch_is_nan_as_torch():
    logits = torch.randn(0, 10, device=DEVICE)
    labels = torch.zeros(0, dtype=torch.int64, device=DEVICE)
    finite = torch.ones((), dtype=torch.bool, device=DEVICE)
    loss, dlogits, wrong = softmax_cross_entropy(logits, labels, finite)
    assert torch.isnan(loss) and torch.isnan(F.cross_entropy(logits, labels))
    assert dlogits.shape == (0, 10) and int(wrong) == 0 and not bool(finite)


def test_strided_rows():
    logits, labels = _problem(9, 300, torch.float32, 3)
    wide = torch.randn(9, 400, device=DEVICE)
    wide[:, :300] = logits
    a = softmax_cross_entropy(wide[:, :300], labels)
    b = softmax_cross_entropy(logits, labels)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def test_refuses_bad_arguments():
    logits, labels = _problem(4, 10, torch.float32, 4)
    with pytest.raises(TypeError, match="labels must be an int64"):
        softmax_cross_entropy(logits, labels.int())
    with pytest.raises(TypeError, match="labels must be an int64"):
        softmax_cross_entropy(logits, labels[:3])
    with pytest.raises(ValueError, match="2-D"):
        softmax_cross_entropy(logits[0], labels)
    with pytest.raises(ValueError, match="at least one class"):
        softmax_cross_entropy(logits[:, :0], labels)
    with pytest.raises(ValueError, match="not differentiable"):
        softmax_cross_entropy(logits.requires_grad_(), labels)
    with pytest.raises(TypeError, match="finite"):
        softmax_cross_entropy(logits.detach(), labels, torch.ones(()))


def test_opcheck():
    logits, labels = _problem(5, 37, torch.float32, 5)
    finite = torch.ones((), dtype=torch.bool, device=DEVICE)
    torch.library.opcheck(torch.ops.alexnet_triton.softmax_cross_entropy, (logits, labels, finite))

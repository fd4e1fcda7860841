"""Every tensor argument of every op drawn dense, strided (gaps poisoned) or expanded (stride 0)
(tests/views.py), the kernel against its reference on the very same views: a kernel that
ignores an argument's strides reads the poison, or past the allocation, and differs. The
small side inputs are the point (conv2d's bias, the loss's labels, column dropout's seeds,
the augmentation's offsets/flips/shift/mean, pooling's argmax, LRN's u, SGD's gradients);
the big operands are drawn too."""
import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICE, assert_close
from hypothesis import given
from hypothesis import strategies as st
from views import layouts, view

import kernels
from kernels import reference

OPS = torch.ops.alexnet_triton
F32 = torch.float32


def _draw(*names):
    return st.fixed_dictionaries({name: layouts() for name in names})


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE)


@given(lay=_draw("x", "weight", "bias"), stride=st.sampled_from([(1, 1), (2, 1)]), padding=st.sampled_from([0, 1]),
       relu=st.booleans())
def test_conv2d_forward(lay, stride, padding, relu):
    x = view(_randn(2, 4, 7, 5, seed=1), lay["x"])
    w = view(_randn(6, 4, 3, 2, seed=2), lay["weight"])
    b = view(_randn(6, seed=3), lay["bias"])
    y = kernels.conv2d(x, w, b, stride=stride, padding=padding, relu=relu)
    expected = F.conv2d(x.double(), w.double(), b.double(), stride, padding)
    assert_close(y, expected.relu() if relu else expected, F32)


@given(lay=_draw("dy", "weight", "y", "relu_input"), stride=st.sampled_from([(1, 1), (1, 2)]))
def test_conv2d_input_grad(lay, stride):
    x = _randn(2, 4, 6, 7, seed=4)
    w = view(_randn(6, 4, 3, 3, seed=5), lay["weight"])
    out = F.conv2d(x, w, None, stride, 1)
    dy = view(_randn(*out.shape, seed=6), lay["dy"])
    y = view(out, lay["y"])
    relu_input = view(x, lay["relu_input"])
    dx = OPS.conv2d_input_grad(dy, w, y, list(x.shape), list(stride), [1, 1], 1, False, relu_input)
    masked = torch.where(y.double() > 0, dy.double(), 0)
    expected = torch.ops.aten.convolution_backward(masked, x.double(), w.double(), None, list(stride), [1, 1], [1, 1],
                                                   False, [0, 0], 1, [True, False, False])[0]
    assert_close(dx, torch.where(relu_input > 0, expected, 0), F32)


@given(lay=_draw("dy", "x", "y"), stride=st.sampled_from([(1, 1), (2, 1)]))
def test_conv2d_weight_grad(lay, stride):
    x = view(_randn(2, 4, 6, 5, seed=7), lay["x"])
    w = _randn(6, 4, 3, 3, seed=8)
    out = F.conv2d(x, w, None, stride, 1)
    dy = view(_randn(*out.shape, seed=9), lay["dy"])
    y = view(out, lay["y"])
    dw, db = OPS.conv2d_weight_grad(dy, x, w, y, list(stride), [1, 1], 1, True, True)
    masked = torch.where(y.double() > 0, dy.double(), 0)
    _, edw, edb = torch.ops.aten.convolution_backward(masked, x.double(), w.double(), [6], list(stride), [1, 1],
                                                      [1, 1], False, [0, 0], 1, [False, True, True])
    assert_close(dw, edw, F32)
    assert_close(db, edb, F32)


@given(lay=_draw("dy", "y"))
def test_relu_grad(lay):
    dy, y = view(_randn(2, 3, 4, 5, seed=10), lay["dy"]), view(_randn(2, 3, 4, 5, seed=11), lay["y"])
    assert torch.equal(OPS.relu_grad(dy, y), torch.where(y > 0, dy, 0))


@given(lay=_draw("x", "dy", "u"), relu=st.booleans())
def test_lrn_forward_and_backward(lay, relu):
    x = view(_randn(2, 7, 3, 4, seed=12), lay["x"])
    name = "relu_lrn" if relu else "local_response_norm"
    y, u = getattr(OPS, name)(x, 5, 1e-2, 0.75, 2.0, 1, True)
    ref = reference.relu_lrn if relu else reference.local_response_norm
    assert_close(y, ref(x.double(), 5, 1e-2, 0.75, 2.0), F32)
    a = torch.relu(x.double()) if relu else x.double()
    assert_close(u, reference.local_response_norm(a, 5, 1e-2, 1.75, 2.0), F32)
    u, dy = view(u, lay["u"]), view(_randn(2, 7, 3, 4, seed=13), lay["dy"])
    dx = OPS.lrn_backward(dy, x, u, 5, 1e-2, 0.75, 2.0, relu, 1)
    from kernels.ops import _lrn_backward_reference
    assert_close(dx, _lrn_backward_reference(dy.double(), x.double(), u.double(), 5, 1e-2, 0.75, 2.0, relu, 1), F32)


@given(lay=_draw("x", "dy", "argmax", "relu_out"))
def test_max_pool2d_forward_and_backward(lay):
    x = view(_randn(2, 3, 7, 8, seed=14), lay["x"])
    y, idx = OPS.max_pool2d(x, [3, 3], [2, 2])
    assert torch.equal(y, F.max_pool2d(x, 3, 2))
    dy, idx, relu_out = view(_randn(*y.shape, seed=15), lay["dy"]), view(idx, lay["argmax"]), view(y, lay["relu_out"])
    dx = OPS.max_pool2d_backward(dy, idx, list(x.shape), False, [3, 3], [2, 2], relu_out)
    from kernels.ops import _pool_backward_reference
    expected = _pool_backward_reference(dy.double(), idx, list(x.shape), False, [3, 3], [2, 2], relu_out.double())
    assert_close(dx, expected, F32)


@given(lay=_draw("x", "seeds", "call", "dy", "relu_input"), relu=st.booleans())
def test_column_dropout(lay, relu):
    x = view(_randn(3, 12, seed=16), lay["x"])
    seeds = view(torch.tensor([11, 2**40 + 5, 33], device=DEVICE), lay["seeds"])
    call = view(torch.tensor([4], device=DEVICE), lay["call"])
    y, next_call = OPS.column_dropout(x, seeds, call, 0.5, relu)
    ey, enext = reference.column_dropout(x, seeds, call, 0.5, relu)
    assert torch.equal(y, ey) and torch.equal(next_call, enext)
    dy, relu_input = view(_randn(3, 12, seed=17), lay["dy"]), view(x, lay["relu_input"]) if relu else None
    dx = OPS.column_dropout_backward(dy, seeds, view(next_call, lay["call"]), 0.5, relu_input)
    edx = reference.column_dropout(dy, seeds, next_call - 1, 0.5)[0]
    assert torch.equal(dx, edx if relu_input is None else reference.relu_mask(edx, relu_input))


@given(lay=_draw("x"))
def test_dropout_of_a_view_is_dropout_of_its_dense_copy(lay):
    x, seed = view(_randn(3, 10, seed=18), lay["x"]), torch.tensor(5, device=DEVICE)
    assert torch.equal(OPS.dropout(x, seed, 0.5), OPS.dropout(x.contiguous(), seed, 0.5))


@given(lay=_draw("logits", "labels"), classes=st.sampled_from([3, 9, 40]))
def test_softmax_cross_entropy(lay, classes):
    logits = view(_randn(5, classes, seed=19), lay["logits"])
    labels = view(torch.tensor([0, 2, 1, 2, 0], device=DEVICE), lay["labels"])
    finite = torch.ones((), dtype=torch.bool, device=DEVICE)
    loss, dlogits, wrong = OPS.softmax_cross_entropy(logits, labels, finite)
    eloss, edlogits, ewrong = reference.softmax_cross_entropy(logits.double(), labels)
    assert_close(loss, eloss, F32)
    assert_close(dlogits, edlogits, F32)
    assert int(wrong) == int(ewrong) and bool(finite)


@pytest.mark.parametrize("padded", [False, True], ids=["augment", "augment_padded"])
@given(lay=_draw("images", "offsets", "flips", "shift", "mean"))
def test_augment(padded, lay):
    g = torch.Generator().manual_seed(20)
    b, h, w, size = 3, 9, 11, 6
    a = dict(images=torch.randint(0, 256, (b, h, w, 3), dtype=torch.uint8, generator=g),
             offsets=torch.stack([torch.randint(0, h - size + 1, (b,), generator=g),
                                  torch.randint(0, w - size + 1, (b,), generator=g)], 1),
             flips=torch.tensor([True, False, True]), shift=torch.randn(b, 3, generator=g),
             mean=torch.randn(h, w, 3, generator=g))
    a = [view(t.to(DEVICE), lay[name]) for name, t in a.items()]
    if padded:
        y = OPS.augment_padded(*a, size, F32, [1, 2], [8, 10], 4)
        expected = reference.augment_padded(*a, size, torch.float64, [1, 2], [8, 10], 4)
    else:
        y = OPS.augment(*a, size, F32, False)
        expected = reference.augment(*a, size, torch.float64, False)
    assert_close(y, expected, F32)


@given(lay=_draw("grads", "lr"))
def test_sgd_step(lay):
    w, v = _randn(40, seed=21), _randn(40, seed=22)
    grads, lr = view(_randn(40, seed=23), lay["grads"]), view(torch.tensor([0.1], device=DEVICE), lay["lr"])
    w64, v64 = w.double(), v.double()
    kernels.sgd_step_(w, v, grads, lr)
    reference.sgd_step_(w64, v64, grads.double(), lr.double())
    assert_close(w, w64, F32)
    assert_close(v, v64, F32)


@pytest.mark.parametrize("name", ["weights", "velocity"])
@pytest.mark.parametrize("layout", ["strided", "expanded"])
def test_sgd_refuses_views_it_would_update_in_place(name, layout):
    t = dict(weights=_randn(40), velocity=_randn(40), grads=_randn(40))
    t[name] = view(t[name], layout)
    with pytest.raises(ValueError, match=f"{name} must be contiguous: it is updated in place"):
        kernels.sgd_step_(t["weights"], t["velocity"], t["grads"], torch.tensor([0.1], device=DEVICE))

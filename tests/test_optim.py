"""The paper's SGD update and the plateau schedule (alexnet/training/optim.py)."""
import io
import math

import pytest
import torch
from helpers import DEVICE, assert_close_verbose

from alexnet.training.optim import FlatPaperSGD, PaperSGD, PlateauSchedule, param_groups, set_lr


def test_update_matches_hand_computation_across_an_lr_change():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    b = torch.nn.Parameter(torch.tensor([0.5], dtype=torch.float64))
    opt = PaperSGD([dict(params=[w], weight_decay=5e-4), dict(params=[b], weight_decay=0.0)], lr=0.01)
    grads_w = [torch.tensor([0.3, -0.1]), torch.tensor([0.2, 0.4]), torch.tensor([-0.5, 0.1])]
    grads_b = [torch.tensor([1.0]), torch.tensor([-2.0]), torch.tensor([0.5])]
    lrs = [0.01, 0.01, 0.001]  # the third step follows an lr reduction
    v_w, v_b = torch.zeros(2, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    w_ref, b_ref = w.detach().clone(), b.detach().clone()
    for gw, gb, lr in zip(grads_w, grads_b, lrs):
        set_lr(opt, lr)
        w.grad, b.grad = gw.double(), gb.double()
        opt.step()
        # v <- 0.9 v - 0.0005 lr w - lr g ; w <- w + v (biases: no decay)
        v_w = 0.9 * v_w - 0.0005 * lr * w_ref - lr * gw.double()
        w_ref = w_ref + v_w
        v_b = 0.9 * v_b - lr * gb.double()
        b_ref = b_ref + v_b
        why = "float64 update, the same formula: a few roundings"
        assert_close_verbose(w.detach(), w_ref, atol=0, rtol=1e-15, check_dtype=True, reason=why)
        assert_close_verbose(b.detach(), b_ref, atol=0, rtol=1e-15, check_dtype=True, reason=why)


def test_differs_from_torch_sgd_after_an_lr_change():
    """The paper keeps lr inside the velocity; torch.optim.SGD rescales the whole velocity."""
    p1 = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    p2 = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    ours = PaperSGD([p1], lr=0.1, weight_decay=0.0)
    theirs = torch.optim.SGD([p2], lr=0.1, momentum=0.9)
    for step in range(3):
        lr = 0.1 if step < 2 else 0.01
        set_lr(ours, lr)
        set_lr(theirs, lr)
        p1.grad = torch.ones(3, dtype=torch.float64)
        p2.grad = torch.ones(3, dtype=torch.float64)
        ours.step()
        theirs.step()
        if step < 2:
            assert_close_verbose(p1.detach(), p2.detach(), rtol=1e-7, atol=1e-7, check_dtype=True,
                                 reason="float64, the same steps before any lr change (torch's defaults)")
    assert not torch.allclose(p1, p2)


def test_param_groups_decay_weights_not_biases():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 2))
    groups = param_groups(model)
    assert [len(g["params"]) for g in groups] == [2, 2]
    assert groups[0]["weight_decay"] == 5e-4 and groups[1]["weight_decay"] == 0.0
    assert all(p.dim() == 1 for p in groups[1]["params"])


def test_plateau_schedule_reduces_three_times_then_stops():
    sched = PlateauSchedule(lr=0.01, patience=2)
    events = [sched.step(e) for e in [0.9, 0.8, 0.8, 0.8, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]]
    assert events == ["improved", "improved", "waiting", "reduced", "improved", "waiting", "reduced",
                      "waiting", "reduced", "waiting", "stop", "stop"]
    assert sched.reductions == 3 and sched.finished
    assert math.isclose(sched.lr, 1e-5)


def test_plateau_schedule_state_round_trip():
    a = PlateauSchedule(patience=3)
    for e in [0.5, 0.4, 0.45]:
        a.step(e)
    b = PlateauSchedule()
    b.load_state_dict(a.state_dict())
    assert b == a
    assert a.step(0.41) == b.step(0.41)


def test_bad_hyper_parameters():
    with pytest.raises(ValueError):
        PaperSGD([torch.nn.Parameter(torch.ones(1))], lr=-1.0)
    with pytest.raises(ValueError, match="finite"):
        PlateauSchedule().step(float("nan"))


def _small_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(5 * 4 * 4, 7))
    model[0].weight.data = model[0].weight.data.contiguous(memory_format=torch.channels_last)
    return model.to(DEVICE)


def test_flat_sgd_matches_paper_sgd_and_keeps_parameters_as_views():
    """The fused one-launch update (kernels.sgd over flat buffers) gives PaperSGD's weights and
    velocities over steps with an lr change; parameters stay views of the flat buffer (in
    their layout), and gradients accumulate into the flat gradient buffer."""
    flat_model, ref_model = _small_model(0), _small_model(0)
    flat = FlatPaperSGD(param_groups(flat_model), lr=0.01)
    ref = PaperSGD(param_groups(ref_model), lr=0.01)
    assert flat_model[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 6, 6, device=DEVICE)
    labels = torch.tensor([0, 3, 6, 1], device=DEVICE)
    for lr in (0.01, 0.01, 0.001):
        for model, opt in ((flat_model, flat), (ref_model, ref)):
            set_lr(opt, lr)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), labels).backward()
            opt.step()
        for (name, p), q in zip(flat_model.named_parameters(), ref_model.parameters()):
            why = f"{name}: fp32 updates by the kernel and by torch's ops, gradients summed in other orders"
            assert_close_verbose(p, q, rtol=1e-5, atol=1e-7, check_dtype=True, reason=why)
            assert_close_verbose(flat.state[p]["velocity"], ref.state[q]["velocity"], rtol=1e-5, atol=1e-8,
                                 check_dtype=True, reason=why)
    for buffer, tensors in ((flat.flat_params, list(flat_model.parameters())),
                            (flat.flat_grads, [p.grad for p in flat_model.parameters()])):
        start = buffer.data_ptr()
        assert all(start <= t.data_ptr() < start + 4 * buffer.numel() for t in tensors)
    assert flat.n_decay == sum(p.numel() for n, p in flat_model.named_parameters() if n.endswith("weight"))


class _KernelConvNet(torch.nn.Module):
    """A conv through the project's op (kernels.conv2d: its eager backward writes into the
    optimizer's buffer) and a torch Linear (its gradient arrives elsewhere)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv_weight = torch.nn.Parameter(torch.randn(4, 3, 3, 3).contiguous(memory_format=torch.channels_last))
        self.conv_bias = torch.nn.Parameter(torch.randn(4))
        self.fc = torch.nn.Linear(4 * 4 * 4, 5)
        self.unused_bias = torch.nn.Parameter(torch.ones(3))  # no gradient ever (no decay: stays as PaperSGD leaves it)

    def forward(self, x):
        import kernels

        return self.fc(kernels.conv2d(x, self.conv_weight, self.conv_bias, relu=True).flatten(1))


def _in_buffer(flat, t):
    return t is not None and t.untyped_storage()._cdata == flat.flat_grads.untyped_storage()._cdata


def test_flat_sgd_gradients_land_in_the_buffer_without_accumulation():
    """zero_grad sets the gradients to None; the conv's backward writes its gradients straight
    into the flat buffer (no accumulation launch); the Linear's arrive elsewhere and step()
    copies them into their slots; an unused parameter's slot reads zero. Backward twice
    without zero_grad accumulates. The update equals PaperSGD's."""
    model, ref_model = _KernelConvNet().to(DEVICE), _KernelConvNet().to(DEVICE)
    flat = FlatPaperSGD(param_groups(model), lr=0.1)
    ref = PaperSGD(param_groups(ref_model), lr=0.1)
    x = torch.randn(2, 3, 6, 6, device=DEVICE)
    for _ in range(2):
        for m, opt in ((model, flat), (ref_model, ref)):
            opt.zero_grad()
            m(x).square().sum().backward()
        assert _in_buffer(flat, model.conv_weight.grad) and _in_buffer(flat, model.conv_bias.grad)
        assert not _in_buffer(flat, model.fc.weight.grad) and model.unused_bias.grad is None
        flat.step()
        ref.step()
        assert _in_buffer(flat, model.fc.weight.grad) and _in_buffer(flat, model.fc.bias.grad)
        for (name, p), q in zip(model.named_parameters(), ref_model.parameters(), strict=True):
            assert_close_verbose(p, q, rtol=1e-5, atol=1e-6, check_dtype=True,
                                 reason=f"{name}: fp32 updates by the kernel and by torch's ops")
    flat.zero_grad()
    model(x).square().sum().backward()
    once = model.conv_weight.grad.clone()
    model(x).square().sum().backward()  # accumulates into the adopted view
    assert_close_verbose(model.conv_weight.grad, 2 * once, rtol=1.3e-6, atol=1e-5, check_dtype=True,
                         reason="one gradient added to itself in fp32 (torch's fp32 defaults)")
    assert _in_buffer(flat, model.conv_weight.grad)
    torch.save(model, io.BytesIO())  # nothing unpicklable attached to the parameters


def test_flat_sgd_refuses_what_it_cannot_flatten():
    model = _small_model(0).double()
    with pytest.raises(ValueError, match="fp32"):
        FlatPaperSGD(model.parameters())
    model = _small_model(0)
    groups = param_groups(model)
    groups[1]["weight_decay"] = 1e-3
    with pytest.raises(ValueError, match="one weight decay"):
        FlatPaperSGD(groups)

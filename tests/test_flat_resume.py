"""Resuming the fused flat-buffer optimiser on the CPU (issue 26): FlatPaperSGD (its update
the Triton kernel, through the interpreter here) on a small model, stopped, saved as a
checkpoint saves it (weights and velocities by name), rebuilt from scratch, restored as
alexnet.train restores it (`load_velocity`) and continued, ends bit-identical to an
uninterrupted run. Not restoring the velocity into the flat buffer fails it."""
import torch

from alexnet.training.loop import velocity_by_name
from alexnet.training.optim import FlatPaperSGD, load_velocity, param_groups

STEPS, STOP = 6, 3


def _batches():
    g = torch.Generator().manual_seed(7)
    return [(torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(STEPS)]


def _build(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    return model, FlatPaperSGD(param_groups(model, 5e-4), lr=0.1, momentum=0.9, weight_decay=5e-4)


def _train(model, optimizer, batches):
    for x, y in batches:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def test_flat_sgd_resume_equals_an_uninterrupted_run():
    batches = _batches()
    model, optimizer = _build(0)
    _train(model, optimizer, batches)
    straight = {k: v.clone() for k, v in model.state_dict().items()}

    model, optimizer = _build(0)
    _train(model, optimizer, batches[:STOP])
    saved = {"model": {k: v.clone() for k, v in model.state_dict().items()},
             "velocity": {k: v.clone() for k, v in velocity_by_name(model, optimizer).items()}}
    assert any(v.abs().sum() > 0 for v in saved["velocity"].values())  # the momentum matters

    model, optimizer = _build(1)  # a new process: other initial weights, zero velocity
    model.load_state_dict(saved["model"])
    load_velocity(optimizer, model, saved["velocity"])
    assert sorted(optimizer.flat_velocity[optimizer.flat_velocity != 0].tolist()) == sorted(
        torch.cat([v.flatten() for v in saved["velocity"].values()]).tolist())  # in the buffer the kernel reads
    _train(model, optimizer, batches[STOP:])
    for name, value in model.state_dict().items():
        assert torch.equal(value, straight[name]), name

"""alexnet/training/checkpoint.py: loading never runs code from the file, the structure is checked,
interrupted writes are cleaned up."""
import pickle

import pytest
import torch

from alexnet.training import checkpoint


class _RunsCode:
    """Unpickling this object calls exec: what a crafted .pt would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_crafted_checkpoint_is_refused_without_running_code(tmp_path, writer):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    payload = {"model": {"w": torch.zeros(2)}, "model_config": {}, "hook": _RunsCode(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(checkpoint.CheckpointError, match="refused without running") as refused:
        checkpoint.load(path)
    assert "weights_only` set to `False`" not in str(refused.value)  # no advice to run the file after all
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.model_from_checkpoint(path, ops="reference", device="cpu")
    assert not marker.exists()


def test_plain_data_loads_and_the_structure_is_checked(tmp_path):
    good = {"format": 1, "model": {"w": torch.ones(3)}, "velocity": {"w": torch.zeros(3)}, "schedule": {"lr": 0.01},
            "loader": {"epoch": 0}, "step": 3, "best_top1": float("inf"), "rng": [{"torch": torch.zeros(4)}],
            "config": {"data": None}, "model_config": {"num_classes": 2}, "classes": ["a", "b"]}
    checkpoint.save(good, tmp_path / "c.pt")
    loaded = checkpoint.check_structure(checkpoint.load(tmp_path / "c.pt"), "c.pt")
    assert torch.equal(loaded["model"]["w"], good["model"]["w"]) and loaded["best_top1"] == float("inf")
    for broken, message in [({**good, "model": {"w": [1.0]}}, "tensors"), ({**good, "step": "3"}, "'step'"),
                            ({k: v for k, v in good.items() if k != "rng"}, "no rng"), ([1, 2], "a list")]:
        with pytest.raises(checkpoint.CheckpointError, match=message):
            checkpoint.check_structure(broken, "c.pt")


def test_a_truncated_or_foreign_file_is_a_clear_error(tmp_path):
    checkpoint.save({"model": {"w": torch.ones(1000)}}, tmp_path / "c.pt")
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.pt").write_text("not a checkpoint\n")
    for name in ("cut.pt", "text.pt"):
        with pytest.raises(checkpoint.CheckpointError, match="not a readable checkpoint|refused"):
            checkpoint.load(tmp_path / name)


def test_stale_temporary_files_are_removed(tmp_path):
    """Only the temporaries of the names the run writes go (issue 26: `train --out .` removed
    every .*.tmp of the folder); another program's look-alikes stay."""
    from alexnet.training.outdir import RUN_FILES

    checkpoint.save({"a": torch.ones(1)}, tmp_path / "checkpoint_last.pt")
    stale = tmp_path / ".checkpoint_last.pt.abc1234_.tmp"
    stale.write_bytes(b"half a checkpoint")
    others = [tmp_path / name for name in (".notes.tmp", ".editor.swp.abcdefgh.tmp", ".checkpoint_last.pt.tmp",
                                           ".checkpoint_last.pt.abcdefgh.tmp.keep")]
    for other in others:
        other.write_text("not the run's")
    assert checkpoint.remove_stale_temps(tmp_path, RUN_FILES) == [stale]
    assert not stale.exists() and (tmp_path / "checkpoint_last.pt").exists()
    assert all(other.exists() for other in others)

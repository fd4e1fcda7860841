"""Precision and path by the GPU's capability (alexnet/training/session.py resolve_precision,
check_ops; alexnet/network/config.py resolve_ops), with the device's properties faked: an
sm_75 T4 trains in fp32 on the reference ops (cuDNN) and says so; bf16/tf32 there, or
--ops triton, are refused in one line before anything is written; an sm_86 gets bf16 and the
Triton kernels; the CPU fp32 as before."""
from types import SimpleNamespace

import pytest
import torch

from alexnet.base.errors import UsageError
from alexnet.network.config import resolve_ops
from alexnet.training.session import check_ops, resolve_precision
from kernels.runtime import device as device_specs

T4 = SimpleNamespace(name="Tesla T4", major=7, minor=5, multi_processor_count=40)
SM86 = SimpleNamespace(name="NVIDIA A10", major=8, minor=6, multi_processor_count=72)
CUDA = torch.device("cuda", 0)


@pytest.fixture
def gpu(monkeypatch):
    """A CUDA device 0 with the properties given (torch.cuda faked; nothing runs on it)."""
    def fake(props):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
        device_specs.clear()
    yield fake
    device_specs.clear()


def test_t4_auto_is_fp32_on_the_reference_ops(gpu):
    gpu(T4)
    assert resolve_precision("auto", CUDA) == "fp32" and resolve_precision("fp32", CUDA) == "fp32"
    assert resolve_ops("auto") == "reference"
    note = check_ops("auto", CUDA)
    assert note == ("alexnet.train: Tesla T4 is compute capability 7.5, below the 8.0 that Triton supports and this "
                    "project's kernels are compiled for (bench/RESULTS.md, compile matrix): running the reference "
                    "ops (cuDNN) instead")
    assert check_ops("reference", CUDA) is None


@pytest.mark.parametrize("precision", ["bf16", "tf32"])
def test_t4_refuses_what_it_lacks(gpu, precision):
    gpu(T4)
    with pytest.raises(UsageError) as err:
        resolve_precision(precision, CUDA)
    assert err.value.message == (f"alexnet.train: --precision {precision} needs compute capability 8.0 or newer; "
                                 "cuda:0 (Tesla T4) is 7.5: use --precision auto or fp32")
    with pytest.raises(UsageError, match=r"^alexnet.train: --ops triton: Tesla T4 is compute capability 7.5.*"
                                         r"use --ops auto or reference$"):
        check_ops("triton", CUDA)


def test_sm86_auto_is_bf16_on_the_triton_kernels(gpu):
    gpu(SM86)
    assert resolve_precision("auto", CUDA) == "bf16" and resolve_precision("tf32", CUDA) == "tf32"
    assert resolve_ops("auto") == "triton" and check_ops("auto", CUDA) is None and check_ops("triton", CUDA) is None


def test_cpu_auto_is_fp32():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"  # the references run it on the CPU
    assert check_ops("triton", cpu) is None


def test_train_refuses_bf16_on_a_t4_before_writing(gpu, tmp_path, capsys):
    from alexnet import train

    gpu(T4)
    out = tmp_path / "run"
    assert train.main(["--precision", "bf16", "--out", str(out), "--max-steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["alexnet.train: --precision bf16 needs compute capability 8.0 or newer; cuda (Tesla T4) is 7.5: "
                   "use --precision auto or fp32"]
    assert not out.exists()

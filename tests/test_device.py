"""kernels/runtime/device.py: the tuning asks the device the tensors are on. With an sm_86 and
an sm_90 device's properties faked (torch.cuda.get_device_properties), the conv configs kept
for a layer and the weight-gradient split counts follow the faked device, not a constant."""
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from kernels.conv import configs as conv_configs
from kernels.conv.common import ConvGeometry, pix_multiple
from kernels.runtime import device as device_specs

SM86 = SimpleNamespace(name="faked RTX 3090", major=8, minor=6, multi_processor_count=82,
                       shared_memory_per_block_optin=101376, shared_memory_per_multiprocessor=102400,
                       regs_per_multiprocessor=65536)
SM90 = SimpleNamespace(name="faked H100", major=9, minor=0, multi_processor_count=132,
                       shared_memory_per_block_optin=232448, shared_memory_per_multiprocessor=233472,
                       regs_per_multiprocessor=65536)
CONV3 = ConvGeometry(128, 256, 13, 13, 384, 3, 3, 1, 1, 1, 1, 1)
CONV1 = ConvGeometry(128, 16, 228, 57, 96, 3, 11, 1, 1, 0, 0, 1)  # conv1's wgrad column-block view


@pytest.fixture
def faked(monkeypatch):
    """Device 0 an sm_86, device 1 an sm_90 (as torch reports them); the spec cache emptied."""
    props = {0: SM86, 1: SM90}
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props[index])
    device_specs.clear()
    yield {"sm86": torch.device("cuda", 0), "sm90": torch.device("cuda", 1)}
    device_specs.clear()


def _labels(configs):
    return {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages)
            for c in configs}


def test_spec_comes_from_the_device_properties(faked):
    sm86, sm90 = device_specs.spec_for(faked["sm86"]), device_specs.spec_for(faked["sm90"])
    assert (sm86.arch, sm86.sm_count, sm86.smem_per_block, sm86.smem_per_sm) == (86, 82, 101376, 102400)
    assert (sm90.arch, sm90.sm_count, sm90.smem_per_block, sm90.mma) == (90, 132, 232448, "wgmma")
    assert sm86.smem_budget < sm86.smem_per_block and sm86.bf16 and sm86.triton_ok
    # an arch the table does not know takes the rest from its nearest known neighbour below
    newer = device_specs.from_properties(SimpleNamespace(major=12, minor=1, multi_processor_count=48))
    assert (newer.arch, newer.sm_count, newer.smem_per_block) == (121, 48, device_specs.KNOWN[120].smem_per_block)
    old = device_specs.from_properties(SimpleNamespace(major=7, minor=5, multi_processor_count=40))
    assert not old.bf16 and not old.triton_ok


@pytest.mark.parametrize("pass_", ["fwd", "dgrad", "wgrad"])
def test_kept_configs_follow_the_device(faked, pass_):
    """conv3 at batch 128 in bf16: sm_90 keeps its listed tiles as listed (8-warp 128x256x64 in
    3 stages, 144 KB); sm_86 (99 KB per block, mma.sync) keeps them in as few fewer stages as fit
    its shared memory and drops the tiles that would spill there (4-warp 128x128x64)."""
    tuning = {"fwd": conv_configs.FWD, "dgrad": conv_configs.DGRAD, "wgrad": conv_configs.WGRAD}[pass_]
    meta = dict(CONV3.constexprs(), FLAT=False, IMG_MULT=pix_multiple(128), PRECISION="tf32", HAS_BIAS=pass_ == "fwd")
    if pass_ == "dgrad":
        meta.update(WT_SG=0, WT_SK=1, WT_SC=1, WT_SH=1, WT_SW=1)
    every = tuning.configs + tuning.tf32 + tuning.ieee
    specs = {name: device_specs.spec_for(dev) for name, dev in faked.items()}
    kept = {name: tuning.kept(every, meta, 2, spec) for name, spec in specs.items()}
    for name, spec in specs.items():
        assert kept[name]
        assert all(conv_configs.smem_bytes(c, 2, spec) <= spec.smem_budget for c in kept[name])
    assert all(any(c is d for d in every) for c in kept["sm90"])
    assert (128, 256, 64, 8, 3) in _labels(kept["sm90"]) and (128, 256, 64, 8, 2) in _labels(kept["sm86"])
    assert (128, 128, 64, 4, 3) in _labels(kept["sm90"])
    assert not {c[:4] for c in _labels(kept["sm86"])} & {(128, 128, 64, 4)}
    assert all(conv_configs._thread_registers(c, 2) <= conv_configs.MMA_SYNC_REGS for c in kept["sm86"])
    # what the tuner runs on each device: prune reads the spec of the tensors' device (off CUDA: offline())
    with device_specs.use_offline(specs["sm86"]):
        on_86 = tuning.prune(every, {"x": torch.empty(1, dtype=torch.bfloat16, device="meta")}, **meta)
    assert _labels(on_86) == _labels(kept["sm86"])


def test_split_counts_follow_the_device(faked, monkeypatch):
    """The wgrad split model reads the SM count and shared memory per SM of the device the
    tensors are on: an 82-SM sm_86 and a 132-SM sm_90 get different counts, and an sm_90 with
    half the SMs another."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the model runs for CUDA devices only
    cfg = conv_configs.WGRAD.configs[0]
    counts = {}
    for name, dev in faked.items():
        spec = device_specs.spec_for(dev)
        s = conv_configs.wgrad_splits(CONV1, torch.bfloat16, "tf32", True, dev, cfg)
        assert s == conv_configs.wgrad_splits(CONV1, torch.bfloat16, "tf32", True, torch.device("cpu"), cfg, spec=spec)
        counts[name] = s
    assert counts["sm86"] != counts["sm90"]
    monkeypatch.setattr(SM90, "multi_processor_count", 66)  # the same arch with half the SMs
    device_specs.clear()
    half = conv_configs.wgrad_splits(CONV1, torch.bfloat16, "tf32", True, faked["sm90"], cfg)
    assert half != counts["sm90"]
    assert half == conv_configs.wgrad_splits(CONV1, torch.bfloat16, "tf32", True, torch.device("cpu"), cfg,
                                             spec=replace(device_specs.KNOWN[90], sm_count=66, name="faked H100"))


def test_precision_by_capability():
    """auto: bf16 from sm_80, fp32 below it and on the CPU; bf16/tf32 refused below sm_80 in one
    line; the Triton kernels refused below 8.0 (Triton's supported hardware)."""
    t4 = device_specs.from_properties(SimpleNamespace(name="Tesla T4", major=7, minor=5, multi_processor_count=40))
    sm86 = device_specs.from_properties(SM86)
    assert device_specs.auto_precision(sm86) == "bf16" and device_specs.auto_precision(None) == "fp32"
    assert device_specs.auto_precision(t4) == "fp32"
    for precision in ("bf16", "tf32"):
        line = device_specs.precision_refusal(t4, precision, "cuda:0")
        assert line == (f"--precision {precision} needs compute capability 8.0 or newer; cuda:0 (Tesla T4) is 7.5: "
                        "use --precision auto or fp32")
        assert device_specs.precision_refusal(sm86, precision) is None
        assert device_specs.precision_refusal(None, precision) is None  # the CPU: the references run it
    assert device_specs.precision_refusal(t4, "fp16") is None and device_specs.precision_refusal(t4, "fp32") is None
    assert "below the 8.0 that Triton supports" in device_specs.triton_refusal(t4)
    assert device_specs.triton_refusal(sm86) is None


def test_restaging_keeps_to_what_the_h100_keeps():
    """A tile too big for the H100 the lists are tuned on (tf32 256x128x64 in 3 stages, 288 KB)
    is not squeezed into 2 stages on a B200 (same shared memory; it spills there), while an
    sm_86 gets the H100's tf32 wgrad tiles in fewer stages. Where no listed tile fits a shape's
    rules, the one kept is still one the device can run."""
    meta = dict(CONV3.constexprs(), FLAT=False, IMG_MULT=pix_multiple(128), PRECISION="tf32", HAS_BIAS=True)
    b200, sm86 = device_specs.KNOWN[100], device_specs.from_properties(SM86)
    fwd = conv_configs.FWD
    assert (256, 128, 64, 8, 2) not in _labels(fwd.kept(fwd.configs, meta, 4, b200))
    wgrad = conv_configs.WGRAD
    kept = wgrad.kept(wgrad.tf32, dict(meta, HAS_BIAS=False), 4, sm86)
    assert (128, 256, 32, 8, 2) in _labels(kept) and (128, 256, 32, 8, 4) not in _labels(kept)
    conv1 = ConvGeometry(128, 4, 228, 228, 96, 11, 11, 4, 4, 0, 0, 1)  # conv1's padded image: FLAT
    only = fwd.kept(fwd.configs, dict(conv1.constexprs(), FLAT=True, IMG_MULT=128, PRECISION="tf32"), 4, sm86)
    assert len(only) == 1 and conv_configs.for_device(only[0], 4, sm86) is only[0]

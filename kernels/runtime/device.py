"""What the kernels' tuning asks of a GPU: a `DeviceSpec` per device, read from the device the
tensors are on (torch.cuda.get_device_properties), with a table of the architectures this
project compiles for (`KNOWN`) filling in what the properties do not say (the MMA kind, the
rates the wgrad split model assumes).

    spec_for(device)   the spec of a torch device: a CUDA device's own properties (cached per
                       index); any other device (CPU, 'meta', the interpreter) gets `offline()`
    offline()          the spec of compile-only instruments and CPU runs: an H100 (`KNOWN[90]`)
                       unless `use_offline(spec)` says otherwise
    current()          spec_for the current CUDA device, or offline() without one

Process-wide state (declared in kernels/runtime/state.py): the `offline_device` switch (set by
`use_offline`, a context manager that restores it; bench/conv_sass.py --arch and
bench/host_step.py set it) and the `device.specs` memo (specs read from the devices; `clear()`
empties it, tests that fake a device's properties call it).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .state import SWITCHES, memo, override

__all__ = ["DeviceSpec", "KNOWN", "spec_for", "offline", "current", "use_offline", "clear", "assume", "TRITON_MIN_ARCH",
           "supports", "auto_precision", "precision_refusal", "triton_refusal"]

# Triton's NVIDIA backend supports compute capability 8.0 and newer for its tensor-core path
# (Triton's README: "Supported Hardware: NVIDIA GPUs (Compute Capability 8.0+)"); sm_75 still
# compiles but bf16 does not exist there and the project's fp16 tiles spill 8-22 KB per thread
# (bench/RESULTS.md, "Compile matrix"). Below this the ops run their references (cuDNN).
TRITON_MIN_ARCH = 80


@dataclass(frozen=True)
class DeviceSpec:
    """One GPU as the tuning sees it. `arch`: compute capability as major*10 + minor."""
    arch: int
    name: str
    smem_per_block: int       # bytes one program may hold (the opt-in maximum)
    smem_per_sm: int          # bytes all resident programs of one SM hold together
    sm_count: int
    regs_per_sm: int = 65536  # 32-bit registers of one SM (255 per thread at most on every listed arch)
    mma: str = "mma"          # tensor-core instructions Triton emits: "wgmma" (sm_90), "tcgen05" (sm_100),
    #                           "mma" (mma.sync: sm_80/86/89/120; sm_75 without bf16/tf32)
    tflops_16bit: float = 1.0  # sustained TFLOP/s of one SM the wgrad split model assumes: 16-bit MMA,
    tflops_tf32: float = 0.5   # tf32 MMA,
    tflops_ieee: float = 0.1   # IEEE fp32 on the FMA pipes
    hbm_bytes_per_s: float = 1e12

    @property
    def bf16(self) -> bool:
        """bf16 (and tf32) tensor cores: sm_80 and newer."""
        return self.arch >= 80

    @property
    def triton_ok(self) -> bool:
        """Whether the project's Triton kernels run here (`TRITON_MIN_ARCH`)."""
        return self.arch >= TRITON_MIN_ARCH

    def pipeline_buffers(self, num_stages: int) -> int:
        """Operand buffers Triton's software pipeliner allocates for `num_stages` stages: all of
        them where the MMA reads shared memory asynchronously (wgmma, tcgen05), one fewer with
        mma.sync and cp.async (sm_75-89, sm_120; bench/conv_sass.py: 128x128x64 bf16 in 3 stages
        holds 96 KB on sm_90 and sm_100, 64 KB on sm_80/86/89/120)."""
        return num_stages if self.mma in ("wgmma", "tcgen05") else max(1, num_stages - 1)

    @property
    def smem_budget(self) -> int:
        """Bytes of pipeline buffers a tile may stream: the per-block limit less what the
        kernels' epilogues and Triton's layout conversions take beside them (7 KB; on an H100
        220 KB of the 227)."""
        return self.smem_per_block - SMEM_RESERVE

    def rate(self, kind: str) -> float:
        """Sustained FLOP/s of one SM for `kind` ("16bit", "tf32", "ieee"), as the split model assumes."""
        return {"16bit": self.tflops_16bit, "tf32": self.tflops_tf32, "ieee": self.tflops_ieee}[kind] * 1e12


SMEM_RESERVE = 7 * 1024

# Per-block / per-SM shared memory and register file from NVIDIA's CUDA programming guide
# (compute capability table); SM counts of a typical part (the device's own count is used when
# there is one); the rates are rough sustained figures per SM (dense peak x ~0.6-0.75).
KNOWN = {
    75: DeviceSpec(75, "T4", 65536, 65536, 40, tflops_16bit=0.9, tflops_tf32=0.1, tflops_ieee=0.1,
                   hbm_bytes_per_s=0.3e12),
    80: DeviceSpec(80, "A100", 166912, 167936, 108, tflops_16bit=2.2, tflops_tf32=1.1, tflops_ieee=0.15,
                   hbm_bytes_per_s=1.6e12),
    86: DeviceSpec(86, "RTX 3090 / A10", 101376, 102400, 82, tflops_16bit=0.6, tflops_tf32=0.3, tflops_ieee=0.35,
                   hbm_bytes_per_s=0.9e12),
    89: DeviceSpec(89, "RTX 4090 / L4", 101376, 102400, 128, tflops_16bit=0.9, tflops_tf32=0.45, tflops_ieee=0.5,
                   hbm_bytes_per_s=1.0e12),
    90: DeviceSpec(90, "H100", 232448, 233472, 132, mma="wgmma",
                   tflops_16bit=4.5, tflops_tf32=2.2, tflops_ieee=0.25, hbm_bytes_per_s=2.5e12),
    100: DeviceSpec(100, "B200", 232448, 233472, 148, mma="tcgen05",
                    tflops_16bit=9.0, tflops_tf32=4.5, tflops_ieee=0.3, hbm_bytes_per_s=6e12),
    120: DeviceSpec(120, "RTX 5090", 101376, 102400, 170, tflops_16bit=0.9, tflops_tf32=0.45, tflops_ieee=0.4,
                    hbm_bytes_per_s=1.5e12),
}

_CACHE = memo("device.specs", "a CUDA device index -> its DeviceSpec, read once")


def offline() -> DeviceSpec:
    """The spec used where no GPU answers: an H100 unless `use_offline` set another."""
    return SWITCHES.offline_device or KNOWN[90]


def use_offline(spec: DeviceSpec):
    """Within the block (or for good, if never exited) `offline()` is `spec` (the
    `offline_device` switch, kernels/runtime/state.py)."""
    return override(offline_device=spec)


def clear() -> None:
    """Forget the specs read from devices (the next `spec_for` asks again)."""
    _CACHE.clear()


def assume(index: int, spec: DeviceSpec) -> None:
    """Take CUDA device `index` to be `spec` without asking it (bench/host_step.py times the
    split model on a machine without a GPU); `clear()` undoes it."""
    _CACHE[index] = spec


def _table_entry(arch: int) -> DeviceSpec:
    """The known architecture closest below `arch` (same major where there is one): what a
    device's properties do not say is taken from it."""
    same_major = [a for a in KNOWN if a // 10 == arch // 10 and a <= arch]
    below = [a for a in KNOWN if a <= arch]
    return KNOWN[max(same_major or below or [min(KNOWN)])]


def from_properties(props) -> DeviceSpec:
    """A spec from torch.cuda.get_device_properties' answer (any object with its attribute
    names): what it states wins over the table (older torch builds lack the shared-memory fields)."""
    arch = props.major * 10 + props.minor
    base = _table_entry(arch)
    return replace(
        base, arch=arch, name=getattr(props, "name", base.name),
        smem_per_block=getattr(props, "shared_memory_per_block_optin", None) or base.smem_per_block,
        smem_per_sm=getattr(props, "shared_memory_per_multiprocessor", None) or base.smem_per_sm,
        sm_count=getattr(props, "multi_processor_count", None) or base.sm_count,
        regs_per_sm=getattr(props, "regs_per_multiprocessor", None) or base.regs_per_sm)


def spec_for(device: torch.device | None) -> DeviceSpec:
    """The spec of `device`: a CUDA device's properties (read once per index), else `offline()`."""
    if device is None or device.type != "cuda":
        return offline()
    index = device.index if device.index is not None else torch.cuda.current_device()
    spec = _CACHE.get(index)
    if spec is None:
        spec = _CACHE[index] = from_properties(torch.cuda.get_device_properties(index))
    return spec


def current() -> DeviceSpec:
    """spec_for the current CUDA device, or `offline()` where there is none."""
    return spec_for(torch.device("cuda")) if torch.cuda.is_available() else offline()


# ------------------------------------------------------------------ precision by capability
# precision -> the least compute capability (major*10 + minor) that has it: bf16 and tf32 tensor
# cores from sm_80 (Ampere); fp16 tensor cores from sm_70; fp32 everywhere.
PRECISION_ARCH = {"fp32": 0, "fp16": 70, "tf32": 80, "bf16": 80}


def _cc(arch: int) -> str:
    return f"{arch // 10}.{arch % 10}"


def supports(spec: DeviceSpec, precision: str) -> bool:
    """Whether `spec`'s device has `precision` ("fp32", "fp16", "tf32", "bf16")."""
    return spec.arch >= PRECISION_ARCH[precision]


def auto_precision(spec: DeviceSpec | None) -> str:
    """What `--precision auto` trains in: bf16 where the device has it (sm_80 and newer), else
    fp32 (the CPU, an sm_75 T4: its fp16 would need loss scaling, which the recipe does not do)."""
    return "bf16" if spec is not None and spec.bf16 else "fp32"


def precision_refusal(spec: DeviceSpec | None, precision: str, where: str = "this device") -> str | None:
    """One line refusing `precision` on `spec`'s device (None: the CPU, where tf32/bf16 run the
    reference ops in fp32/bf16 and are allowed), or None where the device has it."""
    if spec is None or supports(spec, precision):
        return None
    return (f"--precision {precision} needs compute capability {_cc(PRECISION_ARCH[precision])} or newer; "
            f"{where} ({spec.name}) is {_cc(spec.arch)}: use --precision auto or fp32")


def triton_refusal(spec: DeviceSpec) -> str | None:
    """Why the Triton kernels do not run on `spec`'s device (None where they do): below
    `TRITON_MIN_ARCH`."""
    if spec.triton_ok:
        return None
    return (f"{spec.name} is compute capability {_cc(spec.arch)}, below the {_cc(TRITON_MIN_ARCH)} that Triton "
            "supports and this project's kernels are compiled for (bench/RESULTS.md, compile matrix)")

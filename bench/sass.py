"""Reading a cubin's machine code (SASS) for the steady state of its main loop, no GPU needed:
used by bench/conv_sass.py, which compiles the kernels.

The steady-state loop is the innermost backward branch whose body holds the tensor-core
instructions (HGMMA; HMMA on sm_80; FFMA for IEEE fp32); where the compiler unrolled a short
reduction (no loop holds the MMAs) it is the span from the first global load to the last MMA,
prologue and drain included. A `Reading` holds, per kernel: instructions per BLOCK_K step
(loop instructions / steps per iteration, steps from the MMA shapes), HGMMA and LDGSTS counts
(LDGSTS by bytes per copy), local-memory (spill) instructions inside the loop, registers,
spill bytes (stack), shared memory against the per-block limit, and wgmma SS (both operands
from shared memory) or RS (A through registers).

The issue ratio = instructions per step x warps per scheduler / tensor-core cycles per step
at peak (an H100 SM does 2048 16-bit or 1024 tf32 FMA per cycle: 512 cycles for a 128x128x64
bf16 step; IEEE fp32 counts the FMA pipes, 128 per cycle; A100: 1024 / 512). Above 1 the loop
cannot feed the tensor cores however well it is pipelined. Compiler readings, predictions of
speed, not timings; deterministic for a given Triton version.
"""
from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import triton

from kernels.runtime.device import KNOWN

# per target: bytes of shared memory one block may hold (opt-in maximum; kernels/runtime/device.py)
SMEM_LIMIT = {arch: spec.smem_per_block for arch, spec in KNOWN.items()}
# tensor-core (and FMA-pipe) FMA per cycle and SM, where one figure holds for the target: sm_86/89/120
# parts differ (GeForce halves 16-bit MMA with fp32 accumulation), sm_100's tcgen05 is not read here
FMA_PER_CYCLE = {90: {"16bit": 2048, "tf32": 1024, "ieee": 128}, 80: {"16bit": 1024, "tf32": 512, "ieee": 64},
                 75: {"16bit": 512, "ieee": 64}}
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


@dataclass
class Reading:
    layer: str
    pass_: str
    dtype: str
    config: str
    kept: bool
    instructions_per_step: float | None = None
    issue_ratio: float | None = None
    loop_instructions: int = 0
    steps_per_iteration: float = 0.0
    mma: int = 0  # HGMMA (sm_90) / HMMA (sm_80) / FFMA (IEEE) inside the loop
    ldgsts: int = 0
    ldgsts_bytes: dict | None = None
    ldg: int = 0  # plain global loads (into registers) inside the loop
    spill_instructions: int = 0  # STL/LDL inside the loop
    spill_bytes: int = 0
    registers: int = 0
    smem_bytes: int = 0
    smem_limit: int = 0
    wgmma: str = "-"  # SS, RS or - (no wgmma)
    splits: int = 1
    variant: str = ""
    error: str | None = None

    def row(self) -> dict:
        d = asdict(self)
        d["pass"] = d.pop("pass_")
        return d


_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][\w.]*)([^;]*);")


def sass(cubin: bytes) -> tuple[str, str]:
    """(SASS text, resource usage) of a cubin, from the cuobjdump bundled with Triton."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(BIN / "cuobjdump"), "-sass", f.name], capture_output=True, text=True,
                              check=True).stdout
        res = subprocess.run([str(BIN / "cuobjdump"), "-res-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    return text, res


def instructions(text: str) -> list[tuple[int, str, str]]:
    """(address, opcode, operands) of every instruction."""
    return [(int(m[1], 16), m[3], m[4]) for m in _INSTR.finditer(text)]


def _mma_fma(op: str, operands: str, warps: int) -> int:
    """FMA one instruction issues for the whole CTA's math (0 if it is not an MMA/FMA)."""
    if op.startswith("HGMMA"):  # per warpgroup: 64xNxK
        m, n, k = map(int, re.match(r"HGMMA\.(\d+)x(\d+)x(\d+)", op).groups())
        return m * n * k * (warps // 4)
    if op.startswith("HMMA"):  # per warp: HMMA.16816 = m16n8k16, HMMA.1688 = m16n8k8
        shape = re.match(r"HMMA\.(\d+)", op)[1]
        m, n, k = {"16816": (16, 8, 16), "1688": (16, 8, 8), "884": (8, 8, 4)}.get(shape, (16, 8, 8))
        return m * n * k * warps
    if op.startswith("FFMA"):
        return 32 * warps
    return 0


_MMA = ("HGMMA", "HMMA")


def loops(ins) -> list:
    """The bodies (instruction lists) of every loop: each backward branch's range."""
    out = []
    for addr, op, operands in ins:
        m = re.match(r"\s*(0x[0-9a-f]+)", operands)
        if op == "BRA" and m and int(m[1], 16) < addr:
            out.append([i for i in ins if int(m[1], 16) <= i[0] <= addr])
    return out


def unrolled(ins) -> bool:
    """Whether the MMA work sits in straight-line code, no loop holding it (a short constant
    trip count the compiler unrolled: conv1's 9 map taps at BLOCK_K=64)."""
    return any(op.startswith(_MMA) for _, op, _ in ins) and not any(
        op.startswith(_MMA) for body in loops(ins) for _, op, _ in body)


def steady_loop(ins, warps: int):
    """The instructions of the innermost loop (a backward branch's range) holding MMA work;
    unrolled (`unrolled`): the span from the first global load to the last MMA, prologue and
    drain included; for FMA-only code the loop with the most FFMA."""
    bodies = loops(ins)
    tensor = [b for b in bodies if any(op.startswith(_MMA) for _, op, _ in b)]
    if tensor:
        return min(tensor, key=len)
    mma = [i for i, (_, op, _) in enumerate(ins) if op.startswith(_MMA)]
    if mma:
        first = next(i for i, (_, op, _) in enumerate(ins) if op.startswith(("LDGSTS", "LDG") + _MMA))
        return ins[first:mma[-1] + 1]
    return max(bodies, key=lambda b: sum(op.startswith("FFMA") for _, op, _ in b), default=[])


def _ldgsts_bytes(op: str) -> int:
    m = re.search(r"\.(32|64|128)(\.|$)", op)
    return int(m[1]) // 8 if m else 4


def read_kernel(kernel, r: Reading, tile: tuple[int, int, int], warps: int, rate: int | None, arch: int) -> Reading:
    text, res = sass(kernel.asm["cubin"])
    ins = instructions(text)
    loop = steady_loop(ins, warps)
    if unrolled(ins):
        r.variant += " (unrolled)"
    bm, bn, bk = tile
    fma = sum(_mma_fma(op, operands, warps) for _, op, operands in loop)
    r.loop_instructions = len(loop)
    r.steps_per_iteration = fma / (bm * bn * bk) if loop else 0.0
    r.mma = sum(op.startswith(("HGMMA", "HMMA", "FFMA")) for _, op, _ in loop)
    copies = [op for _, op, _ in loop if op.startswith("LDGSTS")]
    r.ldgsts = len(copies)
    r.ldgsts_bytes = {str(b): sum(_ldgsts_bytes(op) == b for op in copies) for b in (4, 8, 16)}
    r.ldg = sum(op.startswith("LDG") and not op.startswith("LDGSTS") and not op.startswith("LDGDEPBAR")
                for _, op, _ in loop)
    r.spill_instructions = sum(op.startswith(("STL", "LDL")) for _, op, _ in loop)
    hgmma = [(op, operands) for _, op, operands in loop if op.startswith("HGMMA")]
    if hgmma:
        r.wgmma = "RS" if any(re.match(r"\s*R\d+, R\d+", o) for _, o in hgmma) else "SS"
    m = re.search(r"REG:(\d+) STACK:(\d+)", res)
    r.registers, r.spill_bytes = (int(m[1]), int(m[2])) if m else (0, 0)
    r.smem_bytes, r.smem_limit = kernel.metadata.shared, SMEM_LIMIT[arch]
    if r.steps_per_iteration:
        r.instructions_per_step = round(len(loop) / r.steps_per_iteration, 1)
        if rate:
            r.issue_ratio = round(r.instructions_per_step * (warps / 4) / (bm * bn * bk / rate), 3)
    return r


# ----------------------------------------------------------------------- reports
def table_row(r: Reading) -> str:
    if r.error:
        return f"{r.layer:11} {r.pass_:5} {r.dtype:4} {r.config:22} {'kept' if r.kept else 'off ':4}  FAILED {r.error}"
    ratio = f"{r.issue_ratio:5.2f}" if r.issue_ratio is not None else "    -"
    per = f"{r.instructions_per_step:6.0f}" if r.instructions_per_step is not None else "     -"
    b = r.ldgsts_bytes or {}
    return (f"{r.layer:11} {r.pass_:5} {r.dtype:4} {r.config:22} {'kept' if r.kept else 'off ':4} {per} {ratio} "
            f"{r.mma:4} {r.ldgsts:4} ({b.get('16', 0)}/{b.get('8', 0)}/{b.get('4', 0)}) {r.ldg:3} "
            f"{r.spill_instructions:3} {r.spill_bytes:6} {r.registers:4} {r.smem_bytes // 1024:4}K "
            f"{'OVER' if r.smem_bytes > r.smem_limit else 'ok':4} {r.wgmma:3} {r.splits:3}  {r.variant}")


HEADER = ("layer       pass  dt   config                 kept  instr ratio  mma  cp  (16/8/4B) ldg "
          "spl spillB regs  smem fit wg  spl  variant")


def summary(rows: list[dict]) -> str:
    """A markdown table, one line per layer x pass x dtype: the best and worst kept config's
    instructions per step and issue ratio, kept configs that spill / overflow shared memory /
    use wgmma RS, and the copy widths (from `--json` lines, e.g. an earlier run's)."""
    out = ["| layer | pass | dtype | kept | best config | instr/step | ratio | worst ratio | spilling | "
           "smem > limit | RS | 4-byte copies |", "|" + "---|" * 12]
    groups: dict = {}
    for r in rows:
        if r["kept"] and not r.get("error"):
            groups.setdefault((r["layer"], r["pass"], r["dtype"]), []).append(r)
    for (layer, pass_, dtype), rs in groups.items():
        best = min(rs, key=lambda r: r["issue_ratio"] if r["issue_ratio"] is not None else 9e9)
        worst = max(r["issue_ratio"] or 0 for r in rs)
        out.append(f"| {layer} | {pass_} | {dtype} | {len(rs)} | {best['config']} | "
                   f"{best['instructions_per_step']:.0f} | "
                   f"{best['issue_ratio']:.2f} | {worst:.2f} | {sum(r['spill_bytes'] > 0 for r in rs)} | "
                   f"{sum(r['smem_bytes'] > r['smem_limit'] for r in rs)} | {sum(r['wgmma'] == 'RS' for r in rs)} | "
                   f"{sum((r.get('ldgsts_bytes') or {}).get('4', 0) > 0 for r in rs)} |")
    return "\n".join(out)


def matrix(rows: list[dict]) -> str:
    """The compile matrix, a markdown table from `--json` rows of one or more targets: per target
    (`arch`) and dtype, the layer x pass combinations, kept configs, those that failed to compile,
    those over the target's per-block shared memory, those that spill (and the largest spill),
    and the layer x pass combinations left without a kept config that compiles, fits and does
    not spill."""
    out = ["| arch | dtype | layer x pass | kept configs | compile failures | over shared memory | spilling "
           "(max B) | without a clean config |", "|" + "---|" * 8]
    groups: dict = {}
    for r in rows:
        if r["layer"] != "calibration" and r["kept"]:
            groups.setdefault((r.get("arch", 90), r["dtype"]), []).append(r)
    for (arch, dtype), rs in sorted(groups.items()):
        combos: dict = {}
        for r in rs:
            combos.setdefault((r["layer"], r["pass"]), []).append(r)
        failed = [r for r in rs if r.get("error")]
        over = [r for r in rs if not r.get("error") and r["smem_bytes"] > r["smem_limit"]]
        spill = [r for r in rs if not r.get("error") and r["spill_bytes"] > 0]
        bad = {id(r) for r in failed + over + spill}
        bare = sorted(f"{layer} {pass_}" for (layer, pass_), cs in combos.items() if all(id(r) in bad for r in cs))
        worst = max((r["spill_bytes"] for r in spill), default=0)
        out.append(f"| sm_{arch} | {dtype} | {len(combos)} | {len(rs)} | {len(failed)} | {len(over)} | "
                   f"{len(spill)}{f' ({worst})' if spill else ''} | {', '.join(bare) or 'none'} |")
    return "\n".join(out)

"""bench/sass.py, the compile-only instrument for the convolutions' loops: its SASS reading
(bench/sass.py) on a hand-written listing, and one real sm_90 compile (one layer, one pass, one config, plus the
calibration GEMM) in a subprocess without the interpreter."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _sass():
    """bench/sass.py, the SASS reading bench/conv_sass.py uses."""
    from bench import sass

    return sass


LISTING = """
        /*0000*/                   S2R R0, SR_TID.X ;
        /*0010*/                   IMAD R2, R0, 0x4, RZ ;
        /*0020*/                   LDGSTS.E.BYPASS.LTC128B.128 [R3], desc[UR4][R4.64] ;
        /*0030*/              @!P0 BRA 0x10 ;
        /*0040*/                   IADD3 R5, R5, 0x1, RZ ;
        /*0050*/                   LDGSTS.E.BYPASS.LTC128B.128 [R3], desc[UR4][R4.64] ;
        /*0060*/                   LDGSTS.E [R6], desc[UR4][R8.64] ;
        /*0070*/                   LDL R9, [R1+0x10] ;
        /*0080*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4].tnspA.tnspB, R24 ;
        /*0090*/                   HGMMA.64x128x16.F32.BF16 R24, R120, gdesc[UR8].tnspB, R24, gsb0 ;
        /*00a0*/               @P1 BRA 0x40 ;
        /*00b0*/                   EXIT ;
        /*00c0*/                   BRA 0xc0;
"""


def test_steady_loop_is_the_innermost_loop_with_the_mma():
    sass = _sass()

    ins = sass.instructions(LISTING)
    assert len(ins) == 13
    loop = sass.steady_loop(ins, warps=4)
    assert [a for a, _, _ in loop] == list(range(0x40, 0xa1, 0x10))  # not the first loop, not the self-branch
    ops = [op for _, op, _ in loop]
    assert sum(sass._mma_fma(op, "", 4) for op in ops) == 2 * 64 * 128 * 16
    assert sorted(sass._ldgsts_bytes(op) for op in ops if op.startswith("LDGSTS")) == [4, 16]


UNROLLED = """
        /*0000*/                   S2R R0, SR_TID.X ;
        /*0010*/                   LDGSTS.E.BYPASS.LTC128B.128 [R3], desc[UR4][R4.64] ;
        /*0020*/                   IMAD R2, R0, 0x4, RZ ;
        /*0030*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4], R24 ;
        /*0040*/                   LDGSTS.E.BYPASS.LTC128B.128 [R3], desc[UR4][R4.64] ;
        /*0050*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8], R24, gsb0 ;
        /*0060*/                   STG.E desc[UR4][R6.64], R24 ;
        /*0070*/                   EXIT ;
        /*0080*/                   BRA 0x80;
"""


def test_an_unrolled_reduction_is_read_whole():
    """A short constant trip count (conv1's 9 map taps at BLOCK_K=64) compiles to straight-line
    code: the reading spans the first global copy to the last MMA, prologue and drain included."""
    sass = _sass()

    ins = sass.instructions(UNROLLED)
    assert sass.unrolled(ins) and not sass.unrolled(sass.instructions(LISTING))
    assert [a for a, _, _ in sass.steady_loop(ins, warps=4)] == list(range(0x10, 0x51, 0x10))


def test_one_layer_one_pass_compiles_for_sm90():
    import triton

    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    missing = [t for t in ("ptxas", "cuobjdump") if not (bin_dir / t).exists()]
    if missing:
        pytest.skip(f"this Triton wheel has no {', '.join(missing)} in {bin_dir}: no sm_90 compile toolchain")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, do not interpret
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "conv_sass.py"), "--layers", "conv3", "--passes",
                          "dgrad", "--dtypes", "bf16", "--max-configs", "1", "--json"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["layer"] for r in rows] == ["calibration", "conv3"], out.stdout
    for r in rows:
        assert r["error"] is None, r
        for key in ("pass", "dtype", "config", "kept", "instructions_per_step", "issue_ratio", "spill_bytes",
                    "smem_bytes", "smem_limit"):
            assert key in r
        assert r["steps_per_iteration"] == 1.0 and r["wgmma"] in ("SS", "RS") and r["mma"] > 0
        assert 0 < r["smem_bytes"] <= r["smem_limit"] == 232448
    gemm, conv = rows
    assert 0.1 < gemm["issue_ratio"] < 0.5, gemm  # the tutorial GEMM: ~0.26 under triton 3.6
    # batch 128: the 128-row tile runs image-major (kernels/conv/common.py image_block)
    assert (conv["pass"], conv["dtype"], conv["variant"]) == ("dgrad", "bf16", "NHWC image-major dy pre-masked")
    assert conv["instructions_per_step"] >= gemm["instructions_per_step"]  # index work on top of a GEMM's


def test_arch_89_keeps_what_an_rtx_4090_keeps():
    """--arch 89 compiles for sm_89 and keeps the configs that device keeps (kernels/runtime/
    device.py): conv3's wgrad drops 4-warp 128x128x64 (spills on mma.sync parts), keeps
    128x128x32 in 4 stages (48 KB with mma.sync's stages - 1 buffers); no issue ratio (no one
    tensor-core rate for sm_89 parts), rows carry `arch`."""
    import triton

    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    if not (bin_dir / "ptxas").exists() or not (bin_dir / "cuobjdump").exists():
        pytest.skip(f"this Triton wheel has no ptxas/cuobjdump in {bin_dir}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "conv_sass.py"), "--arch", "89", "--layers", "conv3",
                          "--passes", "wgrad", "--dtypes", "bf16", "--max-configs", "2", "--json"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert all(r["arch"] == 89 and r["error"] is None for r in rows), rows
    conv = [r for r in rows if r["layer"] == "conv3"]
    assert [(r["config"], r["kept"]) for r in conv] == [("128x128x32 w4 s4", True)]
    assert 0 < conv[0]["smem_bytes"] <= conv[0]["smem_limit"] == 101376  # spills: Triton 3.6 none, 3.9 8 B
    assert conv[0]["issue_ratio"] is None and conv[0]["mma"] > 0 and conv[0]["wgmma"] == "-"


def test_matrix_counts_failures_overflows_and_spills():
    sass = _sass()

    def row(layer, pass_, arch, spill=0, smem=1000, error=None, kept=True):
        return {"layer": layer, "pass": pass_, "dtype": "bf16", "arch": arch, "kept": kept, "spill_bytes": spill,
                "smem_bytes": smem, "smem_limit": 2000, "error": error}

    rows = [row("calibration", "gemm", 89, spill=8), row("conv1", "fwd", 89), row("conv1", "fwd", 89, spill=152),
            row("conv2", "wgrad", 89, smem=4000), row("conv2", "wgrad", 89, error="CompilationError: x"),
            row("conv3", "fwd", 89, spill=4, kept=False), row("conv1", "fwd", 120)]
    lines = sass.matrix(rows).splitlines()
    assert lines[2] == "| sm_89 | bf16 | 2 | 4 | 1 | 1 | 1 (152) | conv2 wgrad |"
    assert lines[3] == "| sm_120 | bf16 | 1 | 1 | 0 | 0 | 0 | none |"

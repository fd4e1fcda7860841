"""bench/gpu_report.py's verify stage on the CPU, with a fake worker in place of the GPU
subprocess: the table, the restart after a crash (the crashed config skipped), and the
exclusions written into the plan cache. The worker itself runs the real launchers on a GPU."""
from __future__ import annotations

import json

from bench import gpu_report
from kernels.runtime import verify

G = [["single", "conv2", "fwd", "bf16"], ["single", "conv3", "wgrad", "bf16"], ["shard", "conv1", "fwd", "tf32"]]


def _lines(*events):
    return ["some compiler noise"] + [gpu_report.VERIFY_TAG + json.dumps(e) for e in events]


def _try(config, key="k"):
    return dict(e="try", key=key, config=config, status="", why="")


def _result(config, status, why="", key="k"):
    return dict(e="result", key=key, config=config, status=status, why=why)


def test_the_verify_stage_tables_restarts_after_a_crash_and_excludes_failures(tmp_path):
    calls = []

    def fake_worker(groups, scratch, out, timeout_s):
        calls.append([list(g) for g in groups])
        if len(calls) == 1:  # group 0 done, group 1 dies inside config D
            return _lines(dict(e="group", group=G[0]), _try("A", "k0"), _result("A", "verified", key="k0"),
                          _try("B", "k0"), _result("B", "mismatch", "12 of 40 elements off", "k0"),
                          _try("C", "k0"), _result("C", "compile error", "CompilationError: x", "k0"),
                          dict(e="group-done", group=G[0], seconds=1.5),
                          dict(e="group", group=G[1]), _try("D", "k1")), -11
        # the new worker is told to skip D: the report's scratch cache excludes it
        assert "D" in verify.PlanCache(scratch).get("k1")["excluded"]
        return _lines(dict(e="group", group=G[1]), _try("E", "k1"), _result("E", "out of resources", "smem", "k1"),
                      _try("F", "k1"), _result("F", "verified", key="k1"),
                      dict(e="group-done", group=G[1], seconds=2.0),
                      dict(e="group", group=G[2]), _try("A", "k2"), _result("A", "verified", key="k2"),
                      dict(e="group-done", group=G[2], seconds=0.5)), 0

    cache = tmp_path / "plans.json"
    result = gpu_report.verify_stage(G, tmp_path / "out", run_worker=fake_worker, plan_cache=cache)
    assert calls == [G, G[1:]]  # the second worker resumes at the group in flight
    status = {(r["layer"], r["config"]): r["status"] for r in result["rows"]}
    assert status == {("conv2", "A"): "verified", ("conv2", "B"): "mismatch", ("conv2", "C"): "compile error",
                      ("conv3", "D"): "crashed", ("conv3", "E"): "out of resources", ("conv3", "F"): "verified",
                      ("conv1", "A"): "verified"}
    assert result["counts"] == {"verified": 3, "mismatch": 1, "compile error": 1, "out of resources": 1,
                                "crashed": 1}
    assert [g["seconds"] for g in result["groups"]] == [1.5, 2.0, 0.5]
    written = json.loads(cache.read_text())
    assert sorted(written["k0"]["excluded"]) == ["B", "C"] and sorted(written["k1"]["excluded"]) == ["D", "E"]
    assert "k2" not in written and result["excluded"] == 4
    table = gpu_report.markdown_table(result["rows"])
    assert "| single | conv3 | wgrad | bf16 | D | crashed |" in table


def test_a_worker_that_dies_before_any_group_leaves_them_not_reached(tmp_path):
    result = gpu_report.verify_stage(G[:1], tmp_path, run_worker=lambda *a: (["ImportError"], 1),
                                     plan_cache=tmp_path / "plans.json")
    assert [r["status"] for r in result["rows"]] == ["not reached"]
    assert not (tmp_path / "plans.json").exists()


def test_the_dry_run_lists_the_verify_stage(capsys):
    assert gpu_report.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "verify" in out and "--stage-verify" in out
    assert [s.name for s in gpu_report.stages(gpu_report.ROOT)][:3] == ["env", "warm", "verify"]


def test_the_groups_cover_every_layer_pass_and_dtype_at_both_shapes():
    groups = gpu_report.verify_groups()
    assert len(groups) == 2 * 2 * (5 * 3 - 1)  # dtypes x shape sets x (layers x passes, conv1 has no dgrad)
    assert ["shard", "conv3", "dgrad", "tf32"] in groups

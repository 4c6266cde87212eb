"""The equal-wall-clock view (`streamloco.bench.wallclock`): hand-computable cases, the
results.json section it writes, and the report it feeds. No wall-clock is measured here."""

from __future__ import annotations

import copy
import json

import pytest

from streamloco.bench import wallclock as W
from streamloco.bench.schema import validate
from streamloco.bench.utilization import CommPattern

# ---- the pure pieces ------------------------------------------------------------------------


def test_utilization_one_half_takes_twice_the_time():
    # 8 Mbit/s = 1e6 B/s, no latency. All-gather at M=2: upload 0.5 MB then download the other
    # 0.5 MB = 1 s blocked per 1 s step, every step (H=1, tau=0): utilization 1/2.
    dp = CommPattern("DP", 1, 1, 0, (500_000,))
    lt = W.link_time(
        dp, islands=2, steps=10, step_s=1.0, mbps=8.0, latency_ms=0.0, collective="allgather"
    )
    assert lt.utilization == pytest.approx(0.5)
    assert lt.s_per_step == pytest.approx(2.0)
    assert lt.wall_s == pytest.approx(20.0)
    # a ring at M=2 puts 2(M-1)/M x payload = 1 MB on the link once: the same 1 s per step
    ring = CommPattern("DP", 1, 1, 0, (1_000_000,))
    lt = W.link_time(ring, islands=2, steps=10, step_s=1.0, mbps=8.0, latency_ms=0.0,
                     collective="ring")  # fmt: skip
    assert lt.utilization == pytest.approx(0.5) and lt.s_per_step == pytest.approx(2.0)


def test_a_rare_exchange_hides_almost_entirely():
    # H=10, tau=1, F=1: a 1 s all-gather (0.5 s up, 0.5 s down) every 10 steps of 1 s. Sent
    # after step 10, applied after step 11: the step hides it, nothing blocked. Sent after the
    # last step (20), the engine's finish applies it with no step left to hide it: 1 s blocked.
    p = CommPattern("S", 10, 1, 1, (500_000,))
    lt = W.link_time(p, islands=2, steps=20, step_s=1.0, mbps=8.0, latency_ms=0.0,
                     collective="allgather")  # fmt: skip
    assert lt.wall_s == pytest.approx(21.0)
    assert lt.utilization == pytest.approx(20.0 / 21.0)
    assert lt.s_per_step == pytest.approx(21.0 / 20.0)


def test_loss_at_interpolates_and_never_extrapolates():
    pts = [[10.0, 6.0], [20.0, 5.0], [40.0, 4.0]]
    assert W.loss_at(pts, 10.0) == 6.0
    assert W.loss_at(pts, 15.0) == pytest.approx(5.5)
    assert W.loss_at(pts, 30.0) == pytest.approx(4.5)
    assert W.loss_at(pts, 40.0) == 4.0
    assert W.loss_at(pts, 40.0 * (1 + 1e-12)) == 4.0  # rounding at the finish is not "after"
    assert W.loss_at(pts, 9.99) is None  # before the first eval point
    assert W.loss_at(pts, 40.1) is None  # after the run finished
    assert W.loss_at([], 1.0) is None


def test_comparison_times_fastest_finish_then_a_round_budget():
    assert W.round_budget(291.0) == 120.0
    assert W.round_budget(3700.0) == 3600.0
    assert W.round_budget(0.5) is None
    assert W.comparison_times([500.0, 291.0, 900.0]) == [
        ("fastest run finishes", 291.0),
        ("round budget", 120.0),
    ]
    # the budget is a distinct, earlier time: at most 90% of the fastest finish
    assert W.comparison_times([121.0, 4000.0]) == [
        ("fastest run finishes", 121.0),
        ("round budget", 60.0),
    ]
    assert W.comparison_times([3600.0])[1] == ("round budget", 1800.0)
    assert W.comparison_times([0.4]) == [("fastest run finishes", 0.4)]


def test_median_step_s_leaves_out_eval_chunks_and_the_end():
    tokens = 1000  # per step of the group
    # chunks end at 10, 20, ..., 60; eval at 30 and at the end (60)
    chunks = [(10, 2000.0), (20, 1000.0), (30, 100.0), (40, 4000.0), (50, 1000.0), (60, 50.0)]
    # kept: 0.5, 1.0, 0.25, 1.0 s/step -> median 0.75
    assert W.median_step_s(chunks, tokens, [30, 60], 60) == pytest.approx(0.75)
    # an eval inside a chunk (step 45 in (40, 50]) removes that chunk: 0.5, 1.0, 0.25
    assert W.median_step_s(chunks, tokens, [30, 45, 60], 60) == pytest.approx(0.5)
    assert W.median_step_s([(60, 10.0)], tokens, [60], 60) is None
    assert W.median_step_s([], tokens, [], 60) is None


# ---- from a results dict ----------------------------------------------------------------------

STEPS = 100
TOKENS_PER_STEP = 1000


def _run(rid, method, groups, losses, **kw) -> dict:
    history = [[s, s * TOKENS_PER_STEP, None, loss] for s, loss in losses]
    r = {
        "id": rid,
        "label": kw.pop("label", rid),
        "method": method,
        "groups": groups,
        "baseline_for": [],
        "H": None,
        "F": None,
        "tau": None,
        "codec": None,
        "zstd": False,
        "final_eval_loss": losses[-1][1],
        "eval_by_lang": {"spa": losses[-1][1]},
        "eval_history": history,
        "bytes_per_group": None,
        "peak_sync_bytes": None,
        "ratio_vs_ddp_bf16": None,
        "ratio_vs_ddp_fp32": None,
        "loss_gap_vs_ddp": None,
        "wall_s": 500.0,
        "tokens_per_s": 200.0,
    }
    return r | kw


@pytest.fixture
def results() -> dict:
    """DDP and one Streaming run at M=2; 1 s compute per step for both. DDP's 125 KB bf16
    gradient rides a ring (125 KB on the link) every step: at 1 Mbit/s that is 1 s per step,
    utilization 1/2. Streaming sends 1 byte per fragment: about 100% utilization."""
    ddp = _run(
        "ddp",
        "ddp",
        1,
        [(50, 6.0), (100, 5.0)],
        label="DDP",
        baseline_for=[2],
        ddp_bytes_per_step={"2": {"bf16": 1.0, "fp32": 2.0}},
        step_s=1.0,
        payload_bytes=[125_000],
    )
    stream = _run(
        "m2-s",
        "streaming",
        2,
        [(25, 6.5), (50, 5.5), (75, 5.2), (100, 5.1)],
        label="Streaming 4-bit",
        H=10,
        F=2,
        tau=1,
        codec="e3m0",
        step_s=1.0,
        payload_bytes=[1, 1],
        bytes_per_group=10.0,
        loss_gap_vs_ddp=0.02,
    )
    return {
        "version": 1,
        "meta": {
            "preset": "test",
            "command": "streamloco bench",
            "machine": {},
            "model": {"size": "tiny", "params": 62_500, "vocab_size": 8000, "seq_len": 8},
            "steps": STEPS,
            "global_batch": 8,
            "tokens_per_run": STEPS * TOKENS_PER_STEP,
            "wall_s": 1000.0,
            "languages": ["spa"],
            "bench": {"bandwidths_mbps": [1.0], "latency_ms": 0.0},
        },
        "runs": [ddp, stream],
        "targets": [],
    }


def _rows(wc: dict, mbps: float) -> dict[str, dict]:
    return {r["key"]: r for r in wc["rows"] if r["mbps"] == mbps}


def test_view_maps_eval_points_to_wall_clock_and_compares_at_equal_time(results):
    wc = W.view(results)
    assert sorted({r["mbps"] for r in wc["rows"]}) == [1.0, 25.0, 100.0]  # always 25 and 100
    at1 = _rows(wc, 1.0)
    ddp, s = at1["ddp"], at1["m2-s"]
    assert ddp["collective"] == "ring" and s["collective"] == "allgather"
    assert ddp["utilization"] == pytest.approx(0.5) and ddp["s_per_step"] == pytest.approx(2.0)
    assert ddp["finish_s"] == pytest.approx(200.0)
    assert ddp["points"] == [[pytest.approx(100.0), 6.0, 50_000], [pytest.approx(200.0), 5.0,
                                                                  100_000]]  # fmt: skip
    # DDP's twin overlaps the 1 s all-reduce with the last 2/3 s of the step: 1/3 s blocked
    over = at1["ddp+overlap"]
    assert over["run_id"] == "ddp" and over["label"] == "DDP, all-reduce overlapped"
    assert over["utilization"] == pytest.approx(0.75) and over["hide_s"] == pytest.approx(2 / 3)
    assert s["utilization"] > 0.999
    t_fast = s["finish_s"]
    assert t_fast == pytest.approx(100.0, rel=1e-3)
    cmp = [c for c in wc["comparisons"] if c["mbps"] == 1.0]
    assert [c["name"] for c in cmp] == ["fastest run finishes", "round budget"]
    first, budget = cmp
    assert first["t_s"] == pytest.approx(t_fast)
    # DDP at ~100 s has done ~50 steps: its first eval point; Streaming has finished
    assert first["loss"]["ddp"] == pytest.approx(6.0, abs=1e-3)
    assert first["loss"]["m2-s"] == 5.1
    assert first["tokens"]["ddp"] == pytest.approx(50_000, rel=1e-3)
    assert first["tokens"]["m2-s"] == pytest.approx(100_000)  # capped at the run's tokens
    # the round budget (60 s): DDP has no eval point yet (never extrapolated); Streaming is at
    # step ~60: between its 50 (5.5) and 75 (5.2) points
    assert budget["t_s"] == 60.0
    assert budget["loss"]["ddp"] is None
    assert budget["loss"]["m2-s"] == pytest.approx(5.5 - 0.3 * (60 / s["s_per_step"] - 50) / 25)
    validate(results | {"wallclock": wc})


def test_targets_met_missed_and_not_evaluated(results):
    results["meta"]["bench"]["bandwidths_mbps"] = [25.0]
    # at 25 Mbit/s DDP's ring step is 0.04 s of 1 s: both finish near 100 s and are compared
    # at their final losses
    wc = W.view(results)
    t, t_over = W.targets(wc, results)  # against DDP, and against DDP overlapped
    assert "Streaming 4-bit at M=2" in t["what"] and "25 Mbit/s" in t["what"]
    assert "than DDP at" in t["what"] and "than DDP, all-reduce overlapped" in t_over["what"]
    assert t["value"] == pytest.approx(5.1 - W.loss_at(_rows(wc, 25.0)["ddp"]["points"],
                                                       t_first(wc, 25.0)))  # fmt: skip
    assert t["met"] is (t["value"] < 0) and t["target"] == 0.0

    better = copy.deepcopy(results)
    better["runs"][1]["eval_history"][-1][3] = 4.0  # Streaming ends below DDP's 5.0
    for t in W.targets(W.view(better), better):
        assert t["met"] is True and t["value"] < 0

    worse = copy.deepcopy(results)
    worse["runs"][1]["eval_history"][-1][3] = 5.9
    for t in W.targets(W.view(worse), worse):
        assert t["met"] is False and t["value"] > 0

    # a DDP whose first eval point comes after the comparison time: not evaluated, and says why
    late = copy.deepcopy(results)
    late["runs"][0]["step_s"] = 3.0  # DDP 3x slower to compute: first eval at 150+ s
    for t in W.targets(W.view(late), late):
        assert t["met"] is None and t["value"] is None and "no eval point of DDP" in t["what"]


def t_first(wc: dict, mbps: float) -> float:
    return next(c["t_s"] for c in wc["comparisons"] if c["mbps"] == mbps)


def test_step_time_sources_in_order(results):
    r = copy.deepcopy(results["runs"][1])
    assert W.step_time(r, results, 0.25) == (0.25, "bench.wallclock_step_s")
    r["step_s_source"] = "measured: x"
    assert W.step_time(r, results) == (1.0, "measured: x")
    del r["step_s"]
    results["utilization"] = {
        "groups": 2,
        "rows": [{"variant": "+ 4-bit", "mbps": 25.0, "measured": 0.9, "model": 0.9,
                  "step_s": 0.4}],
    }  # fmt: skip
    step, source = W.step_time(r, results)
    assert step == 0.4 and "'+ 4-bit'" in source and "M=2" in source
    del results["utilization"]
    step, source = W.step_time(r, results)
    assert step == pytest.approx(500.0 / STEPS) and "includes evaluation" in source


def test_the_user_step_time_applies_to_every_run(results):
    out = W.with_step_s(results, 0.01)
    assert "wallclock" not in results  # the input is not changed
    assert all(r["step_s"] == 0.01 for r in out["wallclock"]["rows"])
    assert out["wallclock"]["step_s_override"] == 0.01
    # a faster GPU step makes DDP's 1 s exchange dominate: utilization ~1%
    assert _rows(out["wallclock"], 1.0)["ddp"]["utilization"] == pytest.approx(0.01 / 1.01)
    again = W.with_step_s(out, 0.02)
    assert sum(t.get("kind") == "wallclock" for t in again["targets"]) == 2  # replaced


def test_payloads_from_the_codec_when_not_recorded_and_zstd_scaled(results):
    from streamloco.outer_optim.codecs import make_codec

    r = copy.deepcopy(results["runs"][1])
    del r["payload_bytes"]
    sizes, source = W.payloads(r, results)
    codec = make_codec("e3m0", 128)
    assert sizes == (codec.payload_size((31_250,)),) * 2 and "evenly" in source
    assert 31_250 // 2 < sizes[0] < 31_250  # 4 bits per value plus block scales

    ddp = copy.deepcopy(results["runs"][0])
    del ddp["payload_bytes"]
    (bf16,), _ = W.payloads(ddp, results)
    assert 2 * 62_500 <= bf16 <= 2 * 62_500 + 256  # 16 bits per parameter plus a header

    # a zstd run with its plain twin: bytes scaled by the measured ratio
    results["runs"][1] |= {"zstd": True, "bytes_per_group": 6.0}
    twin = copy.deepcopy(results["runs"][1]) | {
        "id": "m2-s-plain",
        "zstd": False,
        "derived_from": "m2-s",
        "bytes_per_group": 8.0,
    }
    results["runs"].append(twin)
    assert W.zstd_scale(results["runs"][1], results) == 0.75
    assert W.zstd_scale(twin, results) == 1.0
    pattern, _, source = W.pattern_for(results["runs"][1] | {"payload_bytes": [400, 800]},
                                       results)  # fmt: skip
    assert pattern.payload_bytes == (300, 600) and "zstd" in source


def test_schema_round_trip_and_bad_sections(results):
    full = W.augment(results)
    assert "wallclock" not in results and full["wallclock"]["rows"]
    back = json.loads(json.dumps(full))
    validate(back)
    again = W.augment(back)  # computed again: the same numbers, the same targets, no doubles
    assert again == back

    validate(results)  # a results.json from before the view still validates

    bad = copy.deepcopy(back)
    bad["wallclock"]["rows"][0]["run_id"] = "nope"
    bad["wallclock"]["rows"][1]["mbps"] = -1
    bad["wallclock"]["rows"][2]["points"][0] = [1.0, "x", 3]
    bad["wallclock"]["comparisons"][0]["loss"]["ddp"] = "low"
    del bad["wallclock"]["steps"]
    with pytest.raises(ValueError) as e:
        validate(bad)
    msg = str(e.value)
    for path in (
        "wallclock.rows[0].run_id: names no run",
        "wallclock.rows[1].mbps: expected a positive number",
        "wallclock.rows[2].points[0]: expected [seconds, loss, tokens]",
        "wallclock.comparisons[0].loss.ddp: expected a number or null",
        "wallclock.steps: missing",
    ):
        assert path in msg, (path, msg)


def test_report_draws_the_view_from_an_old_results_json(results, tmp_path):
    import matplotlib.image

    from streamloco.bench.report import write_report

    paths = write_report(results, tmp_path)
    png = tmp_path / "loss_vs_wallclock.png"
    assert png in paths
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(png)
    # three bandwidths (1, 25, 100 Mbit/s) side by side, one M: wider than tall, not blank
    assert img.shape[1] > 2 * img.shape[0] and img.std() > 0.01
    md = (tmp_path / "results.md").read_text()
    assert "## Equal wall-clock on a slow link" in md
    assert "### 1 Mbit/s, M = 2 worker groups" in md and "### 25 Mbit/s, M = 2" in md
    assert "](loss_vs_wallclock.png)" in md
    ddp_line = next(ln for ln in md.splitlines() if ln.startswith("| DDP | 1 | 2 |"))
    assert "50.0%" in ddp_line and "3m20s" in ddp_line  # utilization, all tokens in 200 s
    assert "at equal wall-clock on 25 Mbit/s" in md  # the target


def test_cli_report_only_takes_the_users_step_time(results, tmp_path, capsys):
    from streamloco.cli import main

    (tmp_path / "results.json").write_text(json.dumps(results))
    assert main(["bench", "--report-only", str(tmp_path)]) == 0
    measured = (tmp_path / "results.md").read_text()
    assert "each run's measured compute time per inner step" in measured
    assert main(["bench", "--report-only", str(tmp_path), "--bench.wallclock_step_s=0.01"]) == 0
    md = (tmp_path / "results.md").read_text()
    assert "0.01 s per inner step for every run (bench.wallclock_step_s)" in md
    assert json.loads((tmp_path / "results.json").read_text()) == results  # input untouched
    capsys.readouterr()
    assert main(["bench", "--report-only", str(tmp_path), "--bench.wallclock_step_s=-1"]) == 2
    assert "bench.wallclock_step_s: must be >= 0" in capsys.readouterr().err


def test_one_group_runs_against_ddp_on_one_island(results):
    # the quality preset's DiLoCo M=1, and DDP as its baseline: one island, so DDP's ring moves
    # nothing (utilization 1) while our transport still uploads to the broker
    one = _run("m1-diloco", "diloco", 1, [(50, 5.6), (100, 4.9)], H=30, F=1, tau=0,
               codec="fp32", step_s=1.0, payload_bytes=[250_000])  # fmt: skip
    results["runs"].append(one)
    ddp = results["runs"][0]
    ddp["baseline_for"] = [1, 2]
    ddp["ddp_bytes_per_step"]["1"] = {"bf16": 0.0, "fp32": 0.0}
    validate(results)
    wc = W.view(results)
    m1 = {r["key"]: r for r in wc["rows"] if r["groups"] == 1 and r["mbps"] == 1.0}
    assert set(m1) == {"ddp", "ddp+overlap", "m1-diloco"}
    assert m1["ddp"]["utilization"] == 1.0 and m1["ddp"]["s_per_step"] == 1.0
    # 250 KB up at 1 Mbit/s = 2 s every 30 steps (tau=0: the apply waits for it), 4 rounds
    # (steps 30, 60, 90, and the final sync at 100)
    assert m1["m1-diloco"]["finish_s"] == pytest.approx(100.0 + 4 * 2.0)
    assert all("M=1" not in t["what"] for t in W.targets(wc, results))  # no Streaming at M=1

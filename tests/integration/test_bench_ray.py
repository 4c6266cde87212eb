"""`streamloco bench` end to end on the session's local Ray: a tiny bench, its results.json,
report and plots, and a rerun into the same directory that reuses every finished run."""

from __future__ import annotations

import json

import pytest

from helpers import ROOT
from streamloco.bench.spec import load_bench


@pytest.mark.ray
@pytest.mark.timeout(900)  # eight short trainings on Ray (ddp, diloco, streaming, sparse + util.)
def test_bench_end_to_end_on_ray(local_ray, tmp_path, capsys):
    from streamloco.bench.run import run_bench

    bench_toml = tmp_path / "tiny.toml"
    bench_toml.write_text(
        f"""
[bench]
base = "{ROOT / "configs" / "smoke.toml"}"
groups = [2]
global_batch = 8
diloco_sync_every = 10
streaming_sync_every = [10]
bandwidths_mbps = [5.0]
latency_ms = 5.0
utilization_steps = 10
dp_steps = 3
cpus = 2.0
max_gap = {{ "2" = 0.05 }}
min_ratio_vs_bf16 = 10.0
sparse_sync_every = [10]
sparse_block_size = 256
sparse_topk = 8
min_ratio_sparse_vs_bf16 = 50.0

[train]
steps = 20
eval_every = 10
eval_batches = 2
eval_batch_size = 4
log_every = 5
"""
    )
    bench, cfg, base = load_bench(bench_toml)
    out = tmp_path / "out"
    results = run_bench(bench, cfg, base, out, preset="test", command="test", progress=False)

    saved = json.loads((out / "results.json").read_text())
    assert saved["runs"] == results["runs"]
    runs = {r["id"]: r for r in saved["runs"]}
    assert list(runs) == [
        "ddp",
        "m2-diloco-h10",
        "m2-streaming-h10",
        "m2-streaming-h10-zstd",
        "m2-sparse-h10",
        "m2-sparse-h10-zstd",
    ]
    ddp = runs["ddp"]
    assert ddp["bytes_per_group"] is None and ddp["baseline_for"] == [2]
    assert [h[0] for h in ddp["eval_history"]] == [10, 20]
    assert ddp["tokens"] == 20 * 8 * cfg.model.seq_len
    for rid, r in runs.items():
        assert r["tokens"] == ddp["tokens"], rid  # equal tokens
        if rid == "ddp":
            continue
        assert r["globals_identical"] is True
        assert r["loss_gap_vs_ddp"] == pytest.approx(
            r["final_eval_loss"] / ddp["final_eval_loss"] - 1
        )
        assert r["ratio_vs_ddp_bf16"] == pytest.approx(
            r["ddp_bytes_per_group"]["bf16"] / r["bytes_per_group"]
        )
        assert 0 < r["peak_sync_bytes"] < r["bytes_per_group"]
        assert r["eval_history"][-1][2] == pytest.approx(r["bytes_per_group"])
    plain, packed = runs["m2-streaming-h10"], runs["m2-streaming-h10-zstd"]
    assert plain["derived_from"] == packed["id"] and not plain["zstd"] and packed["zstd"]
    assert plain["final_eval_loss"] == packed["final_eval_loss"]
    assert plain["bytes_per_group"] > packed["bytes_per_group"]
    # 4-bit payloads: several times fewer bytes than fp32 DiLoCo at the same H
    diloco = runs["m2-diloco-h10"]["bytes_per_group"]
    assert runs["m2-streaming-h10"]["bytes_per_group"] < diloco / 4
    assert {t["what"].split(" at ")[0] for t in saved["targets"]} >= {
        "Streaming H=10 4-bit",
        "Sparse H=10 top-8/256 2-bit + EF",
    }
    # 8 of 256 kept: several times fewer bytes than the 4-bit streaming run at the same H
    sparse = runs["m2-sparse-h10"]
    assert sparse["codec"] == "sparse" and sparse["method"] == "sparse"
    assert sparse["bytes_per_group"] < runs["m2-streaming-h10"]["bytes_per_group"] / 4

    util = saved["utilization"]["rows"]
    assert [r["variant"] for r in util] == ["DP", "DiLoCo", "Streaming", "+ overlap", "+ 4-bit"]
    for r in util:
        assert 0 < r["measured"] <= 1 and 0 < r["model"] <= 1
        assert r["bytes_per_group"] == pytest.approx(r["model_bytes_per_group"], rel=0.02)
    assert saved["extrapolation"]["rows"]

    # the equal-wall-clock view's inputs, recorded per run: the compute time per step (chunks
    # without evaluation: (0, 5] and (10, 15]) and one group's exact payload per fragment
    for rid, r in runs.items():
        assert r["step_s"] > 0 and r["step_s_source"].startswith("measured"), rid
        assert len(r["payload_bytes"]) == (r["F"] or 1), rid
    plain = runs["m2-streaming-h10"]  # no zstd: a round moves the payload up and one down
    assert plain["peak_sync_bytes"] == pytest.approx(2 * max(plain["payload_bytes"]), rel=0.02)
    wc = saved["wallclock"]
    assert sorted({r["mbps"] for r in wc["rows"]}) == [5.0, 25.0, 100.0]
    assert {r["run_id"] for r in wc["rows"]} == set(runs)
    assert [t for t in saved["targets"] if t.get("kind") == "wallclock"]
    for name in (
        "results.md",
        "loss_vs_tokens.png",
        "loss_vs_bytes.png",
        "loss_vs_wallclock.png",
        "utilization.png",
    ):
        assert (out / name).stat().st_size > 0
    assert "Streaming H=10 4-bit + zstd" in (out / "results.md").read_text()

    # Rerun into the same directory: every finished run is reused, nothing trains again.
    capsys.readouterr()
    bench.utilization = bench.extrapolate = False
    again = run_bench(bench, cfg, base, out, preset="test", command="test", progress=False)
    said = capsys.readouterr().out
    assert said.count("reusing") == 4 and "utilization" not in said
    assert [r["final_eval_loss"] for r in again["runs"]] == [
        r["final_eval_loss"] for r in saved["runs"]
    ]

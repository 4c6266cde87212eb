"""`streamloco bench`: the run plan (pure), the pieces it relies on (no outer loop for DDP, bytes
before zstd, a fixed eval set), and one small bench end to end on the session's local Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from streamloco.bench.spec import load_bench, plan_runs, run_config
from streamloco.config import load_config
from streamloco.simulate import run_simulation
from streamloco.workers.data_source import build_data_source

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "configs" / "bench").glob("*.toml"))


@pytest.fixture
def repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # bench files name their base config relative to the repo root


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_preset_plans_runs_at_equal_tokens(path, repo_root, tmp_path):
    bench, cfg, base = load_bench(path)
    specs = plan_runs(bench, cfg)
    cfgs = {s.id: run_config(base, bench, s.id, s.changes, tmp_path) for s in specs}
    assert {s.method for s in specs} == {"ddp", "diloco", "streaming"}
    for spec in specs:
        c = cfgs[spec.id]
        # equal tokens: the same steps and the same sequences per step over all groups
        assert c.train.steps == cfg.train.steps
        assert c.train.groups * c.train.batch_size == bench.global_batch
        # every run is evaluated on the same held-out sequences
        assert c.train.eval_batch_size == cfg.train.eval_batch_size > 0
        assert c.run.out_dir == str(tmp_path / "runs") and c.run.name == spec.id
        if spec.method == "ddp":
            assert not c.outer.enabled and c.train.groups == 1
        elif spec.method == "diloco":
            assert (c.outer.fragments, c.outer.overlap, c.outer.codec) == (1, 0, "fp32")
        else:
            assert c.outer.fragments >= 2 and c.outer.overlap == bench.overlap
            assert c.outer.codec == "e3m0" and spec.without_zstd is not None
    assert {s.groups for s in specs if s.method != "ddp"} == set(bench.groups)


def test_bench_config_errors_name_the_key(repo_root, tmp_path):
    def bench_file(text: str) -> Path:
        path = tmp_path / "b.toml"
        path.write_text(text)
        return path

    cases = {
        "[bench]\nbogus = 1\n": "bench.bogus: unknown key",
        "[bench]\nglobal_batch = 30\ngroups = [4]\nmax_gap = {'4' = 0.02}\n": "bench.global_batch",
        "[bench]\ngroups = [2, 8]\n": "bench.max_gap: no target for M=8",
        "[bench]\ngroups = [1]\n": "bench.groups",
        "[bench]\nbase = 'nope.toml'\n": "bench.base: training config nope.toml does not exist",
        "[bench]\n[train]\nsteps = -1\n": "train.steps",
    }
    for text, message in cases.items():
        with pytest.raises(ValueError, match=message.replace(".", r"\.")):
            load_bench(bench_file(text))
    with pytest.raises(ValueError, match=r"bench\.fragments"):
        load_bench(bench_file("[bench]\n"), ["--bench.fragments=-1"])
    bench, cfg, _ = load_bench(bench_file("[bench]\nstreaming_sync_every = [31]\n"))
    with pytest.raises(ValueError, match="H=31 is not a multiple of F=2"):
        plan_runs(bench, cfg)


def test_bench_command_line_errors(repo_root, tmp_path, capsys):
    from streamloco.cli import main

    assert main(["bench", "--preset", "nope"]) == 2
    assert "presets: default, gpu, quick" in capsys.readouterr().err
    assert main(["bench", "--preset", "quick", "--config", "x.toml"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["bench", "--report-only", str(tmp_path)]) == 2
    assert "no results.json" in capsys.readouterr().err
    (tmp_path / "results.json").write_text('{"version": 1, "runs": [')  # cut short
    assert main(["bench", "--report-only", str(tmp_path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "results.md").exists()


def test_targets_cover_every_streaming_run_with_or_without_zstd():
    from streamloco.bench.run import targets
    from streamloco.bench.spec import BenchConfig

    def row(label, h, zstd, gap, ratio):
        return {
            "label": label,
            "method": "streaming",
            "groups": 2,
            "H": h,
            "zstd": zstd,
            "loss_gap_vs_ddp": gap,
            "ratio_vs_ddp_bf16": ratio,
        }

    ddp = {"label": "DDP", "method": "ddp"}
    plain = [row("S30", 30, False, 0.005, 100.0), row("S100", 100, False, 0.02, 380.0)]
    bench = BenchConfig(groups=[2], streaming_sync_every=[30, 100])
    found = [(t["what"].split(":")[0], t["met"]) for t in targets([ddp, *plain], bench)]
    assert found == [("S30 at M=2", True), ("S100 at M=2", False), ("S100 at M=2", False)]
    # with zstd rows: the loss is judged once per run, the bytes of both rows at the largest H
    zstd = [row("S30 + zstd", 30, True, 0.005, 120.0), row("S100 + zstd", 100, True, 0.02, 450.0)]
    found = targets([ddp, plain[0], zstd[0], plain[1], zstd[1]], bench)
    assert [t["met"] for t in found] == [True, False, False, True]
    assert found[-1]["what"] == "S100 + zstd at M=2: at least 400x fewer bytes than bf16 DDP"


def _synthetic(*args: str):
    return load_config(
        None,
        [
            "--train.steps=40",
            "--train.batch_size=8",
            "--train.eval_every=20",
            "--model.vocab_size=32",
            "--model.seq_len=32",
            "--run.tensorboard=false",
            "--inner.warmup_steps=5",
            "--outer.sync_every=10",
            *args,
        ],
    )


def test_no_outer_loop_is_plain_data_parallel_training():
    plain = run_simulation(_synthetic("--train.groups=1", "--outer.enabled=false"))
    # The design's identity: M=1, H=1, outer lr 1, momentum 0, alpha 0, fp32 is plain training.
    identity = run_simulation(
        _synthetic(
            "--train.groups=1",
            "--outer.sync_every=1",
            "--outer.fragments=1",
            "--outer.lr=1.0",
            "--outer.momentum=0.0",
            "--outer.codec='fp32'",
        )
    )
    assert plain.groups[0].bytes_sent == 0 and plain.groups[0].rounds == []
    assert identity.groups[0].bytes_sent > 0  # the identity run really exchanged every step
    torch.testing.assert_close(
        torch.tensor(plain.groups[0].train_loss), torch.tensor(identity.groups[0].train_loss)
    )
    assert [s for s, _ in plain.eval_history] == [20, 40]
    for name, value in plain.groups[0].global_state.items():
        torch.testing.assert_close(value, identity.groups[0].global_state[name])
    with pytest.raises(ValueError, match=r"outer\.enabled: false"):
        _synthetic("--train.groups=2", "--outer.enabled=false")


def test_zstd_is_lossless_so_one_run_gives_both_byte_counts():
    """The bench's rows without zstd reuse the zstd run's losses and its bytes before zstd."""
    common = ("--outer.fragments=2", "--outer.overlap=1", "--outer.alpha=0.5")
    packed = run_simulation(_synthetic(*common, "--outer.zstd_level=3"))
    plain = run_simulation(_synthetic(*common, "--outer.zstd_level=0"))
    assert packed.eval_history == plain.eval_history
    for z, p in zip(packed.groups, plain.groups, strict=True):
        assert z.train_loss == p.train_loss
        moved = p.bytes_sent + p.bytes_received
        assert len(z.rounds) == len(p.rounds) == 9  # 8 scheduled + the final sync of one
        assert sum(r[2] for r in z.rounds) == moved  # before zstd == what plain sent
        assert [r[1] for r in p.rounds] == [r[2] for r in p.rounds]  # no zstd: the same
        assert z.bytes_sent + z.bytes_received < moved  # zstd shrank the 4-bit payloads
        assert z.bytes_by(20, before_zstd=True) == p.bytes_by(20) > 0


def test_eval_batch_size_fixes_the_held_out_set():
    sets = [
        build_data_source(_synthetic(f"--train.batch_size={b}", "--train.eval_batch_size=4"))
        for b in (2, 8)
    ]
    a, b = (s.eval_sets["synthetic"] for s in sets)
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert a[0].shape[0] == 4


@pytest.mark.ray
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
    assert {t["what"].split(" at ")[0] for t in saved["targets"]} >= {"Streaming H=10 4-bit"}

    util = saved["utilization"]["rows"]
    assert [r["variant"] for r in util] == ["DP", "DiLoCo", "Streaming", "+ overlap", "+ 4-bit"]
    for r in util:
        assert 0 < r["measured"] <= 1 and 0 < r["model"] <= 1
        assert r["bytes_per_group"] == pytest.approx(r["model_bytes_per_group"], rel=0.02)
    assert saved["extrapolation"]["rows"]
    for name in ("results.md", "loss_vs_tokens.png", "loss_vs_bytes.png", "utilization.png"):
        assert (out / name).stat().st_size > 0
    assert "Streaming H=10 4-bit + zstd" in (out / "results.md").read_text()

    # Rerun into the same directory: every finished run is reused, nothing trains again.
    capsys.readouterr()
    bench.utilization = bench.extrapolate = False
    again = run_bench(bench, cfg, base, out, preset="test", command="test", progress=False)
    said = capsys.readouterr().out
    assert said.count("reusing") == 3 and "utilization" not in said
    assert [r["final_eval_loss"] for r in again["runs"]] == [
        r["final_eval_loss"] for r in saved["runs"]
    ]

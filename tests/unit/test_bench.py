"""`streamloco bench`: the run plan (pure) and the pieces it relies on (no outer loop for DDP,
bytes before zstd, a fixed eval set). The bench end to end on Ray: integration/test_bench_ray.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import ROOT
from streamloco.bench.spec import load_bench, plan_runs, run_config
from streamloco.config import load_config
from streamloco.simulate import run_simulation
from streamloco.workers.data_source import build_data_source

PRESETS = sorted((ROOT / "configs" / "bench").glob("*.toml"))


@pytest.fixture
def repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # bench files name their base config relative to the repo root


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_preset_plans_runs_at_equal_tokens(path, repo_root, tmp_path):
    bench, cfg, base = load_bench(path)
    specs = plan_runs(bench, cfg)
    cfgs = {s.id: run_config(base, bench, s.id, s.changes, tmp_path) for s in specs}
    assert {s.method for s in specs} == {"ddp", "diloco", "streaming", "sparse"}
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
        elif spec.method == "sparse":  # the streaming schedule, sparse payloads, residuals
            assert c.outer.fragments >= 2 and c.outer.overlap == bench.overlap
            assert (c.outer.codec, c.outer.block_size, c.outer.topk) == (
                "sparse",
                bench.sparse_block_size,
                bench.sparse_topk,
            )
            assert c.outer.error_feedback and c.outer.alpha == bench.sparse_alpha
        else:
            assert c.outer.fragments >= 2 and c.outer.overlap == bench.overlap
            assert c.outer.codec == "e3m0" and spec.without_zstd is not None
            assert not c.outer.error_feedback
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
        "[bench]\nsparse_topk = 0\n": "bench.sparse_topk",
        "[bench]\nsparse_error_decay = 0\n": "bench.sparse_error_decay",
    }
    for text, message in cases.items():
        with pytest.raises(ValueError, match=message.replace(".", r"\.")):
            load_bench(bench_file(text))
    with pytest.raises(ValueError, match=r"bench\.fragments"):
        load_bench(bench_file("[bench]\n"), ["--bench.fragments=-1"])
    bench, cfg, _ = load_bench(bench_file("[bench]\nstreaming_sync_every = [31]\n"))
    with pytest.raises(ValueError, match="H=31 is not a multiple of F=2"):
        plan_runs(bench, cfg)
    bench, cfg, _ = load_bench(bench_file("[bench]\nsparse_sync_every = [33]\n"))
    with pytest.raises(ValueError, match="H=33 is not a multiple of F=2"):
        plan_runs(bench, cfg)
    bench, cfg, _ = load_bench(bench_file("[bench]\nsparse = false\n"))
    assert "sparse" not in {s.method for s in plan_runs(bench, cfg)}


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
        assert sum(r.bytes_before_zstd for r in z.rounds) == moved  # == what plain sent
        assert [r.bytes_moved for r in p.rounds] == [r.bytes_before_zstd for r in p.rounds]
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

"""Typed run statistics: TensorBoard tags are a view, records.jsonl holds the same records, and
nothing that computes with the numbers (results, the bench) reads a tag."""

from __future__ import annotations

from dataclasses import asdict

import pytest

import streamloco.records as records
from helpers import SMOKE
from streamloco.bench.run import _record
from streamloco.bench.spec import RunSpec
from streamloco.config import load_config
from streamloco.metrics import MemorySink
from streamloco.records import RecordLog, read_records
from streamloco.simulate import run_and_report, run_simulation

RUN = [
    "--train.steps=30",
    "--train.eval_every=15",
    "--outer.sync_every=10",
    "--outer.fragments=2",
    "--outer.overlap=1",
    "--outer.zstd_level=3",
    "--run.tensorboard=false",
]
TIMING = ("wall_s", "tokens_per_s")  # wall-clock: the only numbers allowed to move


def _bench_rows(cfg) -> tuple[list[dict], MemorySink]:
    sink = MemorySink()
    res = run_simulation(cfg, sink)
    spec = RunSpec("s", "Streaming", "streaming", 2, {}, without_zstd=("s-plain", "plain"))
    rows = _record(spec, cfg, res)["rows"]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows], sink


def test_renaming_every_tag_moves_no_bench_number(monkeypatch):
    cfg = load_config(SMOKE, RUN)
    before, sink = _bench_rows(cfg)
    renamed = {name: "renamed/" + t.replace("/", "_") for name, t in records.TAGS.items()}
    monkeypatch.setattr(records, "TAGS", renamed)
    after, renamed_sink = _bench_rows(cfg)
    assert {t for t, _, _ in renamed_sink.scalars} & {t for t, _, _ in sink.scalars} == set()
    assert all(t.startswith("renamed/") for t, _, _ in renamed_sink.scalars)
    assert after == before
    assert before[0]["bytes_per_group"] > before[1]["bytes_per_group"] > 0  # real numbers


def test_records_jsonl_holds_what_the_result_holds(tmp_path):
    cfg = load_config(SMOKE, RUN)
    res = run_and_report(cfg, tmp_path / "run", progress=False)
    lines = read_records(tmp_path / "run" / "records.jsonl")
    for g, group in enumerate(res.groups):
        mine = [ln for ln in lines if ln["group"] == g]
        steps = [ln for ln in mine if ln["record"] == "step"]
        assert [ln["step"] for ln in steps] == list(range(1, 31))
        assert [ln["loss"] for ln in steps] == group.train_loss
        rounds = [{k: v for k, v in ln.items() if k not in ("record", "group")} for ln in mine]
        rounds = [r for r, ln in zip(rounds, mine, strict=True) if ln["record"] == "round"]
        assert rounds == [asdict(r) for r in group.rounds] and rounds
        totals = [ln for ln in mine if ln["record"] == "totals"][-1]
        assert (totals["bytes_sent"], totals["bytes_received"]) == (
            group.bytes_sent,
            group.bytes_received,
        )
    evals = [(ln["step"], ln["loss"]) for ln in lines if ln["record"] == "eval"]
    assert evals == res.eval_history


def test_a_resumed_log_drops_what_came_after_its_checkpoint(tmp_path):
    path = tmp_path / "records.jsonl"
    rep = records.ChunkReport(0, 0, first_step=1, step=20, losses=[1.0] * 20, lrs=[0.1] * 20)
    log = RecordLog(path)
    log.write(rep)
    log.close()
    with path.open("ab") as f:
        f.write(b'{"record": "step", "gro')  # a driver killed mid-line
    log = RecordLog(path, resume_step=12)
    log.write(records.ChunkReport(0, 0, first_step=13, step=13, losses=[0.5], lrs=[0.1]))
    log.close()
    lines = read_records(path)
    assert [(ln["step"], ln["loss"]) for ln in lines] == [(s, 1.0) for s in range(1, 13)] + [
        (13, 0.5)
    ]
    RecordLog(path).close()  # a fresh run with the same name starts over
    assert read_records(path) == []


@pytest.mark.parametrize("name", sorted(records.TAGS))
def test_every_tag_is_written_somewhere(name):
    # A tag table entry nobody emits would be a stale name in the docs: each one is used.
    import pathlib

    src = pathlib.Path(records.__file__).parent
    uses = sum(p.read_text().count(f'"{name}"') for p in src.rglob("*.py"))
    assert uses >= 2, f"TAGS[{name!r}] is defined but never used"

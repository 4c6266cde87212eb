"""The README's data path end to end through the CLI on the real demo corpus, kept small:
data demo -> tokenizer train -> data tokenize -> tokenizer report -> simulate on the shards."""

import json
import math

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from streamloco.cli import main
from streamloco.data_pipeline.loader import validation_batches
from streamloco.data_pipeline.manifest import load_manifest
from streamloco.records import read_records
from streamloco.tokenizer.model import Tokenizer

LANGS = {"mix", "nah", "nya", "oto", "spa"}


def test_demo_corpus_to_training_through_the_cli(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text(f"""
[corpus]
inputs = ["{tmp_path}/demo/*.jsonl.zst"]
[tokenizer]
path = "{tmp_path}/tok/demo"
vocab_size = 600
max_chars = 300000
[data]
source = "shards"
dir = "{tmp_path}/shards"
shard_tokens = 200000
validation_fraction = 0.05
[model]
vocab_size = 600
seq_len = 32
[train]
steps = 6
batch_size = 4
eval_every = 3
eval_batches = 1
[inner]
warmup_steps = 2
[outer]
sync_every = 3
fragments = 1
[run]
out_dir = "{tmp_path}/runs"
""")
    assert main(["data", "demo", str(tmp_path / "demo")]) == 0
    assert main(["tokenizer", "train", "--config", str(cfg)]) == 0
    assert (tmp_path / "tok" / "demo.model").is_file()
    assert main(["data", "tokenize", "--config", str(cfg), "--no-progress"]) == 0
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert {s["lang"] for s in manifest["shards"]} == LANGS
    assert {s["split"] for s in manifest["shards"]} == {"train", "validation"}
    # Re-running the tokenization on a finished directory changes nothing.
    before = (tmp_path / "shards" / "manifest.json").read_bytes()
    assert main(["data", "tokenize", "--config", str(cfg), "--no-progress"]) == 0
    assert (tmp_path / "shards" / "manifest.json").read_bytes() == before

    capsys.readouterr()
    assert main(["tokenizer", "report", "--config", str(cfg)]) == 0
    report = capsys.readouterr().out
    assert all(f"| {lang} |" in report for lang in LANGS)

    assert main(["simulate", "--config", str(cfg), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "per language:" in out and "identical on all groups: True" in out
    acc = EventAccumulator(str(tmp_path / "runs" / "run" / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    evaluated = {t.split("/")[-1] for t in tags if t.startswith("eval/loss/")}
    assert evaluated and evaluated <= LANGS
    assert [e.step for e in acc.Scalars("eval/loss")] == [3, 6]
    assert "bits/byte" in out and {f"eval/bpb/{lang}" for lang in evaluated} <= tags

    # Bits per byte: the bytes per token recorded are those the eval windows decode to.
    ev = [ln for ln in read_records(tmp_path / "runs" / "run" / "records.jsonl")
          if ln["record"] == "eval"][-1]  # fmt: skip
    assert set(ev["bpb_by_lang"]) == set(ev["loss_by_lang"]) == evaluated
    tok = Tokenizer.load(tmp_path / "tok" / "demo.model")
    shards = load_manifest(tmp_path / "shards")
    for lang, per_token in ev["bytes_per_token"].items():
        (batch,) = validation_batches(shards, lang, batch_size=4, seq_len=32, max_batches=1)
        rows = [row[1:].tolist() for row in batch]
        decoded = sum(len(tok.decode(r).encode("utf-8")) for r in rows)
        assert per_token == pytest.approx(decoded / sum(map(len, rows)))
        bpb = ev["loss_by_lang"][lang] / (per_token * math.log(2))
        assert ev["bpb_by_lang"][lang] == pytest.approx(bpb)


def test_missing_corpus_and_vocab_mismatch_fail_with_the_key(tmp_path, capsys):
    assert main(["tokenizer", "train", "--corpus.inputs=[]"]) == 2
    assert "corpus.inputs" in capsys.readouterr().err
    assert main(["tokenizer", "train", f"--corpus.inputs=['{tmp_path}/nothing*.jsonl']"]) == 2
    assert "nothing" in capsys.readouterr().err
    assert main(["simulate", "--data.source=shards", f"--data.dir={tmp_path}"]) == 2
    assert "manifest" in capsys.readouterr().err.lower()

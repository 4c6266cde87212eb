"""`streamloco data tokenize --data.executor=ray` really runs Ray tasks, and writes the same shards
as local processes (the CLI once computed the executor and then dropped it)."""

from __future__ import annotations

import json
import time

import pytest

ray = pytest.importorskip("ray")

from helpers import DOCS, _files  # noqa: E402
from streamloco.cli import main  # noqa: E402
from streamloco.tokenizer.model import TokenizerOptions  # noqa: E402
from streamloco.tokenizer.train import train_tokenizer  # noqa: E402

pytestmark = pytest.mark.ray

# Ray names a task after its function's module path.
ENCODE_TASK = "streamloco.data_pipeline.tokenize._encode"


def _encode_tasks_run() -> int:
    """Encode tasks this Ray instance has executed so far, from its task events.

    `ray.timeline()` reads the events from the GCS itself; `ray.util.state.list_tasks` would need
    the dashboard's API server, which `local_ray` does not start (and on a shared machine the
    default API address can belong to another Ray instance).
    """
    return sum(e.get("name") == ENCODE_TASK and e.get("ph") == "X" for e in ray.timeline())


def _wait_for_tasks(at_least: int, timeout_s: float = 30.0) -> int:
    # Task events reach the GCS asynchronously (flushed about every second).
    deadline = time.monotonic() + timeout_s
    while (n := _encode_tasks_run()) < at_least and time.monotonic() < deadline:
        time.sleep(0.5)
    return n


def test_cli_tokenize_on_ray_runs_tasks_and_matches_local(local_ray, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": d.text, "lang": d.lang}) + "\n" for d in DOCS),
        encoding="utf-8",
    )
    train_tokenizer(DOCS, tmp_path / "tok", TokenizerOptions(vocab_size=400, max_chars=200_000))
    cfg = tmp_path / "data.toml"
    cfg.write_text(f"""
[corpus]
inputs = ["{corpus}"]
[tokenizer]
path = "{tmp_path}/tok"
[data]
shard_tokens = 1024
validation_fraction = 0.1
split_seed = 7
workers = 1
""")
    chunks = -(-len(DOCS) // 256)  # tokenize_corpus's default chunk_docs
    before = _encode_tasks_run()  # test_tokenize_ray.py may have run some in this session
    args = ["data", "tokenize", "--config", str(cfg), "--no-progress"]
    assert main([*args, "--data.executor=ray", f"--data.dir={tmp_path}/ray"]) == 0
    assert _wait_for_tasks(before + chunks) - before == chunks
    assert main([*args, "--data.executor=processes", f"--data.dir={tmp_path}/local"]) == 0
    time.sleep(2)  # a Ray task started by mistake would have reported by now
    assert _encode_tasks_run() - before == chunks
    local, remote = _files(tmp_path / "local"), _files(tmp_path / "ray")
    assert local.keys() == remote.keys() and len(local) > 3
    assert local == remote

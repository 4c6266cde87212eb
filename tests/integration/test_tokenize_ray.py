"""Tokenizing with Ray tasks (a real local Ray instance) gives the same shards as a local run."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")

from helpers import DOCS, OPTS, _files  # noqa: E402  (the corpus and options of unit/test_tokenize)
from streamloco.data_pipeline.tokenize import tokenize_corpus  # noqa: E402
from streamloco.launcher.ray_executor import RayExecutor  # noqa: E402
from streamloco.tokenizer.model import TokenizerOptions  # noqa: E402
from streamloco.tokenizer.train import train_tokenizer  # noqa: E402

pytestmark = pytest.mark.ray


def test_ray_tasks_reproduce_the_local_shards_byte_for_byte(local_ray, tmp_path):
    tok = train_tokenizer(
        DOCS, tmp_path / "tok", TokenizerOptions(vocab_size=400, max_chars=200_000)
    )
    tokenize_corpus(lambda: DOCS, tok, tmp_path / "local", workers=1, **OPTS)
    tokenize_corpus(lambda: DOCS, tok, tmp_path / "ray", executor=RayExecutor(2), **OPTS)
    local, remote = _files(tmp_path / "local"), _files(tmp_path / "ray")
    assert local.keys() == remote.keys() and len(local) > 3
    assert local == remote

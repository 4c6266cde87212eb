"""Shared by the hf tests: real demo text, a tokenizer trained on it, tiny models."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
import zstandard

from streamloco.data_pipeline.demo import write_demo_corpus
from streamloco.text.documents import Document
from streamloco.tokenizer.model import Tokenizer, TokenizerOptions
from streamloco.tokenizer.train import train_tokenizer
from streamloco.workers.model import ModelArgs, Transformer


def demo_documents(out: Path) -> dict[str, list[Document]]:
    """The embedded demo corpus (written by `streamloco data demo`), per language."""
    write_demo_corpus(out)
    docs: dict[str, list[Document]] = {}
    for f in sorted(out.glob("*.jsonl.zst")):
        with zstandard.ZstdDecompressor().stream_reader(f.open("rb")) as r:
            for n, line in enumerate(io.TextIOWrapper(r, encoding="utf-8"), 1):
                rec = json.loads(line)
                docs.setdefault(rec["lang"], []).append(
                    Document(rec["text"], rec["lang"], f.name, n)
                )
    return docs


def train_small_tokenizer(docs: list[Document], prefix: Path, vocab: int = 1000) -> Tokenizer:
    opts = TokenizerOptions(vocab_size=vocab, lang_tags=True, max_chars=400_000)
    return Tokenizer.load(train_tokenizer(docs, prefix, opts))


def tiny_model(vocab: int, tie: bool, seed: int = 0, max_seq_len: int = 64) -> Transformer:
    """A small model whose weights are all off their initial values (norms != 1 too), so a
    conversion that swapped or dropped any tensor would change the logits."""
    torch.manual_seed(seed)
    args = ModelArgs(
        vocab_size=vocab,
        d_model=64,
        n_layers=2,
        n_heads=4,
        max_seq_len=max_seq_len,
        mlp_hidden=96,
        tie_embeddings=tie,
    )
    model = Transformer(args)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()

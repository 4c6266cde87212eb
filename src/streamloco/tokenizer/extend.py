"""Teach a trained tokenizer new languages without moving any of its ids.

`streamloco tokenizer extend`: a SentencePiece model is trained on the new languages alone (same
normalization and options as the base), and its pieces that the base lacks are appended to the
base's ModelProto (sentencepiece_model_pb2) after the last base piece. Every base piece keeps its
id, text, type and score, so a model trained with the base tokenizer keeps every embedding row
valid; only rows for the new ids are added (hf/embeddings.py initializes them).

Scores: the base is a unigram model, and encoding picks the segmentation with the highest sum of
piece scores (log probabilities). An appended piece keeps its score from the new-language model,
a log probability on the new languages' text, so it wins where that model found it likely (a
word of the new language), and it cannot change how text made only of base pieces with better
scores is split. The fertility report before and after shows what it does per language.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from sentencepiece import sentencepiece_model_pb2 as spm_pb2

from streamloco.atomic import atomic_write_bytes
from streamloco.text.documents import Document
from streamloco.tokenizer.model import Tokenizer, sha256_bytes, sidecar_path
from streamloco.tokenizer.train import train_tokenizer

NORMAL = spm_pb2.ModelProto.SentencePiece.NORMAL


def _proto(tok: Tokenizer) -> spm_pb2.ModelProto:
    proto = spm_pb2.ModelProto()
    proto.ParseFromString(tok._model_bytes)
    return proto


def new_pieces(base: Tokenizer, new: Tokenizer, max_new: int) -> list[tuple[str, float]]:
    """The normal pieces of `new` that `base` lacks, best score first, at most `max_new`."""
    have = {p.piece for p in _proto(base).pieces}
    found = [(p.piece, p.score) for p in _proto(new).pieces if p.type == NORMAL]
    fresh = [(piece, score) for piece, score in found if piece not in have]
    fresh.sort(key=lambda ps: -ps[1])  # stable: equal scores keep the new model's order
    return fresh[:max_new]


def extended_model(base: Tokenizer, pieces: Iterable[tuple[str, float]]) -> bytes:
    """The base ModelProto with `pieces` appended as normal pieces."""
    proto = _proto(base)
    if proto.trainer_spec.model_type != spm_pb2.TrainerSpec.UNIGRAM:
        raise ValueError(f"{base.path}: only unigram tokenizers can be extended")
    for piece, score in pieces:
        proto.pieces.add(piece=piece, score=score, type=NORMAL)
    proto.trainer_spec.vocab_size = len(proto.pieces)
    return proto.SerializeToString()


def check_base_ids_kept(base: Tokenizer, ext: Tokenizer) -> None:
    """Every base id is the same piece, type and score in `ext` (raises if not)."""
    old, new = _proto(base).pieces, _proto(ext).pieces
    for i, p in enumerate(old):
        q = new[i]
        if (p.piece, p.type, p.score) != (q.piece, q.type, q.score):
            raise AssertionError(f"extension moved base id {i}: {p.piece!r} -> {q.piece!r}")


def extend_tokenizer(
    base: Tokenizer,
    docs: Iterable[Document],
    out_prefix: Path,
    new_vocab: int,
    max_new: int,
) -> tuple[Tokenizer, int]:
    """Train `new_vocab` pieces on `docs` (the new languages' train split), append up to
    `max_new` the base lacks, write ``<out_prefix>.model`` + sidecar; (tokenizer, pieces added)."""
    docs = list(docs)
    langs = sorted({d.lang for d in docs})
    if not docs:
        raise ValueError("tokenizer extend: no training documents for the new languages")
    opts = replace(base.options, vocab_size=new_vocab, lang_tags=False)
    with tempfile.TemporaryDirectory() as tmp:
        new = Tokenizer.load(train_tokenizer(docs, Path(tmp) / "new", opts))
    pieces = new_pieces(base, new, max_new)
    model_bytes = extended_model(base, pieces)
    sidecar: dict[str, Any] = {
        **base.sidecar,
        "sha256": sha256_bytes(model_bytes),
        "vocab_size": base.vocab_size + len(pieces),
        "extension": {
            "base_sha256": base.sha256,
            "base_vocab_size": base.vocab_size,
            "added": len(pieces),
            "languages": langs,
            "new_vocab_size": new_vocab,
            "trained_on_chars": new.sidecar["sample"]["corpus_chars"],
        },
    }
    out_prefix = Path(out_prefix)
    model_path = out_prefix.with_name(out_prefix.name + ".model")
    sidecar["model"] = model_path.name
    ext = Tokenizer(model_bytes, sidecar, model_path)
    check_base_ids_kept(base, ext)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(model_path, model_bytes)
    text = json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n"
    atomic_write_bytes(sidecar_path(model_path), text.encode("utf-8"))
    return Tokenizer.load(model_path), len(pieces)

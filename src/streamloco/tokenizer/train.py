"""Train a SentencePiece tokenizer on a temperature-sampled, normalized corpus sample.

Steps: normalize every document (the same `normalize` as at encoding), count characters per
language, draw the bounded training sample (`streamloco.tokenizer.sampling`), feed its lines to
SentencePiece from memory, then write ``<prefix>.model`` and the sidecar ``<prefix>.json``
atomically (temp file, fsync, rename; the sidecar last, so a crash in between leaves a model
whose sha256 the old sidecar rejects instead of a pair that looks valid).

SentencePiece settings that make ``decode(encode(x)) == normalize(x)`` exact (see
`streamloco.tokenizer.model`): identity normalization rule, no extra-whitespace removal, no dummy
prefix, byte fallback. Documents are fed line by line (the newline is its own user-defined
piece, so a word after a newline looks the same in training and at encoding).

SentencePiece's trainer treats some text specially, silently (measured on 0.2.x by reading its
log, see the tests); each case is worked around in `training_lines`:

* a sentence containing U+2585 (▅, the trainer's internal mark for a rare character) is skipped
  whole. A Chichewa text with ▅ bullets lost every bulleted line this way;
* U+2581 (▁) is its space symbol and U+0000 ends a sentence inside the unigram trainer; neither
  can be in a piece;
* the text of a meta piece (``<unk>``, ``<s>``, ``</s>``, ``<pad>``, ``<0x00>``..``<0xFF>``,
  language tags) is replaced by a space;
* sentences over ``max_sentence_length`` bytes are skipped.

▅, ▁ and U+0000 are sentence boundaries here: `encode` always emits them as byte pieces, so no
piece spans them at encoding either, and the text on both sides stays trainable. A meta piece's
text is cut after its ``<``, which keeps every character. Lines longer than `MAX_LINE_CHARS` are
cut at a space. The sidecar's ``chars`` and ``sentences`` count what reached the trainer (equal
to the counts in SentencePiece's own log, tested); ``sampled_chars`` is what sampling selected.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import sentencepiece as spm

from streamloco.atomic import atomic_write_bytes
from streamloco.text.documents import Document
from streamloco.text.normalize import normalize
from streamloco.tokenizer.model import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SIDECAR_FORMAT,
    SIDECAR_VERSION,
    SPACE_SYMBOL,
    UNK_ID,
    TokenizerOptions,
    lang_tag_piece,
    sha256_bytes,
    sidecar_path,
)
from streamloco.tokenizer.sampling import count_chars, sample_budgets, sample_documents

MAX_LINE_CHARS = 4000  # at most 16000 UTF-8 bytes, under max_sentence_length below
# Sentence boundaries for training (module doc): newline, ▁ (U+2581), ▅ (U+2585), U+0000.
_BOUNDARIES = re.compile(f"[\n{SPACE_SYMBOL}\u2585\x00]")
_LANG_CODE = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass
class _Ingested:
    """Per language: what the trainer received (the sidecar's sample counts)."""

    chars: Counter[str] = field(default_factory=Counter)
    sentences: Counter[str] = field(default_factory=Counter)
    documents: Counter[str] = field(default_factory=Counter)


def split_line(line: str, limit: int = MAX_LINE_CHARS) -> Iterator[str]:
    """Cut `line` into chunks of at most `limit` characters, at a space where there is one."""
    while len(line) > limit:
        cut = line.rfind(" ", limit // 2, limit)
        cut = limit if cut <= 0 else cut
        yield line[:cut]
        line = line[cut:]
    if line:
        yield line


def _meta_pattern(tag_pieces: Sequence[str]) -> re.Pattern[str]:
    """Matches the text of every meta piece the trainer would replace with a space."""
    meta = ["<unk>", "<s>", "</s>", "<pad>", *tag_pieces]
    # Each starts with its only "<", so cutting after it leaves no match in the remainder.
    assert all(m.startswith("<") and m.count("<") == 1 for m in meta), meta
    return re.compile("|".join(map(re.escape, meta)) + "|<0x[0-9A-F]{2}>")


def _sentences(text: str, meta: re.Pattern[str]) -> Iterator[str]:
    for part in _BOUNDARIES.split(text):
        start = 0
        for m in meta.finditer(part):
            yield from split_line(part[start : m.start() + 1])
            start = m.start() + 1
        yield from split_line(part[start:])


def training_lines(
    sample: Iterable[Document],
    tag_pieces: Sequence[str] = (),
    counts: _Ingested | None = None,
) -> Iterator[str]:
    """The non-empty sentences SentencePiece trains on (module doc); `counts` tallies them."""
    meta = _meta_pattern(tag_pieces)
    for doc in sample:
        fed = False
        for sentence in _sentences(doc.text, meta):
            if counts is not None:
                counts.sentences[doc.lang] += 1
                counts.chars[doc.lang] += len(sentence)
            fed = True
            yield sentence
        if counts is not None and fed:
            counts.documents[doc.lang] += 1


def _normalized(
    docs: Iterable[Document] | Callable[[], Iterable[Document]], opts: TokenizerOptions
):
    if not callable(docs) and iter(docs) is docs:
        raise ValueError(
            "train_tokenizer reads the corpus twice (count, then sample): pass a list or a "
            "callable returning a fresh iterator of documents"
        )

    def factory() -> Iterator[Document]:
        for doc in docs() if callable(docs) else docs:
            text = normalize(doc.text, opts.normalize)
            if text.strip():
                yield replace(doc, text=text)

    return factory


def _trainer_args(opts: TokenizerOptions, langs: list[str]) -> dict[str, object]:
    bad = [lang for lang in langs if not _LANG_CODE.match(lang)]
    if opts.lang_tags and bad:
        raise ValueError(f"language codes {bad} cannot be tags (letters, digits, _ and - only)")
    return {
        "vocab_size": opts.vocab_size,
        "model_type": opts.model_type,
        "character_coverage": opts.character_coverage,
        "byte_fallback": True,
        "split_digits": opts.split_digits,
        "split_by_unicode_script": opts.split_by_script,
        "normalization_rule_name": "identity",
        "remove_extra_whitespaces": False,
        "add_dummy_prefix": False,
        "max_sentence_length": 4 * MAX_LINE_CHARS,
        "pad_id": PAD_ID,
        "unk_id": UNK_ID,
        "bos_id": BOS_ID,
        "eos_id": EOS_ID,
        "control_symbols": [lang_tag_piece(lang) for lang in langs] if opts.lang_tags else [],
        "user_defined_symbols": ["\n"],
        # A tiny corpus may not support the requested size: train what it supports (the sidecar
        # records the actual vocab_size) rather than fail.
        "hard_vocab_limit": False,
        "num_threads": os.cpu_count() or 1,
        "minloglevel": 2,  # errors still raise; the INFO lines would flood the console
    }


def _has_fileno(stream) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


def _train_model(
    sample: list[Document], opts: TokenizerOptions, langs: list[str], where: Path
) -> tuple[bytes, _Ingested]:
    buf = io.BytesIO()
    counts = _Ingested()
    tags = [lang_tag_piece(lang) for lang in langs] if opts.lang_tags else []
    spm.set_random_generator_seed(opts.seed)  # process-global; only matters for sampled training
    with open(os.devnull, "w") as devnull:
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=training_lines(sample, tags, counts),
                model_writer=buf,
                # SentencePiece silences its log by dup2-ing stderr's fd; a replaced stderr (a
                # test's capture, some job runners) has none, and minloglevel keeps it quiet.
                logstream=devnull if _has_fileno(sys.stderr) else None,
                **_trainer_args(opts, langs),
            )
        except RuntimeError as e:
            raise ValueError(f"{where}: SentencePiece training failed: {e}") from e
    return buf.getvalue(), counts


def train_tokenizer(
    docs: Iterable[Document] | Callable[[], Iterable[Document]],
    out_prefix: str | Path,
    opts: TokenizerOptions | None = None,
) -> Path:
    """Train on `docs` (a list, or a callable giving a fresh iterator); return ``<prefix>.model``.

    Also writes ``<prefix>.json``: options, corpus and sample characters per language, the
    temperature weights, special and tag ids, SentencePiece's version and the model's sha256.
    """
    opts = opts or TokenizerOptions()
    out_prefix = Path(out_prefix)
    model_path = out_prefix.with_name(out_prefix.name + ".model")
    factory = _normalized(docs, opts)
    counts = count_chars(factory)
    if not counts:
        raise ValueError(f"{model_path}: no non-empty documents to train the tokenizer on")
    weights, budgets = sample_budgets(counts, opts.temperature, opts.max_chars)
    sample, sample_chars = sample_documents(
        factory,
        temperature=opts.temperature,
        max_chars=opts.max_chars,
        seed=opts.seed,
        counts=counts,
    )
    langs = sorted(counts)
    model_bytes, ingested = _train_model(sample, opts, langs, model_path)
    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    tags = {lang: sp.piece_to_id(lang_tag_piece(lang)) for lang in langs} if opts.lang_tags else {}
    sidecar = {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "model": model_path.name,
        "sha256": sha256_bytes(model_bytes),
        "vocab_size": sp.get_piece_size(),
        "special_ids": {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID},
        "newline_id": sp.piece_to_id("\n"),
        "lang_tags": tags,
        "options": opts.to_dict(),
        "sample": {
            "corpus_chars": dict(sorted(counts.items())),
            "weights": {k: weights[k] for k in langs},
            "budget_chars": {k: round(budgets[k]) for k in langs},
            "sampled_chars": sample_chars,
            "chars": dict(sorted(ingested.chars.items())),
            "sentences": dict(sorted(ingested.sentences.items())),
            "documents": dict(sorted(ingested.documents.items())),
        },
        "sentencepiece_version": spm.__version__,
    }
    model_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(model_path, model_bytes)
    atomic_write_bytes(
        sidecar_path(model_path),
        (json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n").encode("utf-8"),
    )
    return model_path

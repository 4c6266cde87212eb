"""Fertility and parity of a tokenizer per language (``streamloco tokenizer report``).

Definitions (all counted on ``normalize(text)``, the text the tokenizer actually sees):

* ``chars``: Unicode code points (newlines included); ``words``: whitespace-separated words;
  ``tokens``: ids from `Tokenizer.encode` (no bos/eos).
* ``tokens_per_char`` and ``tokens_per_word`` (fertility): lower is better; a language the
  vocabulary ignores falls apart into single characters or bytes.
* ``byte_fallback_rate``: share of tokens that are byte pieces ``<0x..>`` (characters without a
  piece of their own); ``unk_rate``: share of ``<unk>`` (0 with byte fallback, kept as a check).
* ``parity`` = tokens_per_char(lang) / tokens_per_char(reference), the reference being the
  high-resource language (Spanish in the demo corpus). 1.0 means the language pays as many tokens
  per character as the reference; 2.0 means twice as many (its context window holds half the
  text and training on it costs twice as much per character). Petrov et al. (2023) define parity
  on parallel sentences; our held-out documents are not parallel, so characters stand in for
  "the same content". This is fair between languages written in the Latin alphabet with similar
  characters per word, and it is the figure to compare between two tokenizers on the same text.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from streamloco.text.documents import Document
from streamloco.tokenizer.model import Tokenizer

_BATCH = 256


def _batches(docs: Iterable[Document], size: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def fertility_report(
    tok: Tokenizer,
    docs: Iterable[Document],
    reference_lang: str = "spa",
    num_threads: int | None = None,
) -> list[dict[str, Any]]:
    """One row per language (the reference first, then by code); definitions in the module doc.

    ``parity`` is None in every row when `reference_lang` has no documents.
    """
    threads = num_threads or os.cpu_count() or 1
    totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    id_counts: dict[str, np.ndarray] = {}
    for batch in _batches(docs, _BATCH):
        encoded = tok.encode_batch([d.text for d in batch], num_threads=threads)
        for doc, ids in zip(batch, encoded, strict=True):
            text = tok.normalize(doc.text)
            row = totals[doc.lang]
            row["documents"] += 1
            row["chars"] += len(text)
            row["words"] += len(text.split())
            row["tokens"] += len(ids)
            counts = np.bincount(np.asarray(ids, dtype=np.int64), minlength=tok.vocab_size)
            if doc.lang in id_counts:
                id_counts[doc.lang] += counts
            else:
                id_counts[doc.lang] = counts
    byte_ids = np.array([i for i in range(tok.vocab_size) if tok.is_byte(i)], dtype=np.int64)
    rows = []
    for lang, t in totals.items():
        counts = id_counts[lang]
        tokens = t["tokens"]
        rows.append(
            {
                "lang": lang,
                **{k: t[k] for k in ("documents", "chars", "words", "tokens")},
                "tokens_per_char": tokens / t["chars"] if t["chars"] else 0.0,
                "tokens_per_word": tokens / t["words"] if t["words"] else 0.0,
                "byte_fallback_rate": int(counts[byte_ids].sum()) / tokens if tokens else 0.0,
                "unk_rate": int(counts[tok.unk_id]) / tokens if tokens else 0.0,
            }
        )
    ref = next((r for r in rows if r["lang"] == reference_lang), None)
    for r in rows:
        r["parity"] = r["tokens_per_char"] / ref["tokens_per_char"] if ref else None
    rows.sort(key=lambda r: (r["lang"] != reference_lang, r["lang"]))
    return rows


_COLUMNS = [
    ("lang", "lang", "{}"),
    ("documents", "docs", "{:,}"),
    ("chars", "chars", "{:,}"),
    ("tokens", "tokens", "{:,}"),
    ("tokens_per_char", "tokens/char", "{:.3f}"),
    ("tokens_per_word", "tokens/word", "{:.2f}"),
    ("byte_fallback_rate", "byte fallback", "{:.2%}"),
    ("unk_rate", "unk", "{:.2%}"),
    ("parity", "parity", "{:.2f}"),
]


def format_report(rows: Sequence[dict[str, Any]]) -> str:
    """`fertility_report` rows as a Markdown table."""
    lines = [
        "| " + " | ".join(title for _, title, _ in _COLUMNS) + " |",
        "|" + "|".join("---" if key == "lang" else "---:" for key, _, _ in _COLUMNS) + "|",
    ]
    for r in rows:
        cells = ["-" if r.get(key) is None else fmt.format(r[key]) for key, _, fmt in _COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

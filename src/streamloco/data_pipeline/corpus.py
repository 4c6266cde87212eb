"""Streaming corpus readers: JSONL (plain, .gz, .zst), plain text (plain, .gz, .zst) and Parquet.

Every reader streams: JSONL and text are read line by line from a (decompressing) byte stream,
Parquet batch by batch, so a 50 GB corpus never sits in memory. The reader only *decodes*; text is
not normalized here (normalization happens at tokenizer training and encoding, with one function).

Formats (``format="auto"`` picks by suffix):

- ``jsonl`` (``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``): one JSON object per line with a text
  field and a language field (names configurable). Blank lines are ignored. If the spec gives a
  ``lang``, it is the default for records whose language field is absent or null.
- ``text`` (``.txt``, ``.txt.gz``, ``.txt.zst``): the language comes from the spec (one language
  per file). Documents are separated by blank lines (whitespace-only lines): with the default
  ``doc_lines=1`` one blank line ends a document (a paragraph per document); with ``doc_lines=N``
  a document ends only at a run of at least N blank lines (e.g. 2 for chapters whose paragraphs
  are separated by single blank lines, which then stay inside the document as ``"\\n\\n"``). A
  document also ends after ``MAX_DOC_LINES`` non-blank lines, so that a file with no blank lines
  at all (one sentence per line) still streams in bounded memory.
- ``parquet``: columns named by the spec; read with ``ParquetFile.iter_batches``. A missing text
  column or a non-string column is a configuration error and always raises.

Bad input: with ``on_error="fail"`` the first bad record raises ``CorpusError("FILE:LINE:
reason")``; with ``"skip"`` it is counted in ``ReadStats.skipped`` under its reason and reading goes
on (nothing is logged per line). A glob matching nothing and a corpus with no documents at all
always raise.

Each file is read once: inputs are compared by real path, so a file named by two inputs, or
reached through a symlink, is dropped and counted ("duplicate_file"), and a glob's ``**`` does not
follow a directory link into a directory it already searched ("linked_dir"; e.g. a loop), under
either policy.
"""

from __future__ import annotations

import fnmatch
import gzip
import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import zstandard

from streamloco.data_pipeline.shards import file_sha256
from streamloco.text.documents import CorpusError, Document

Format = Literal["auto", "jsonl", "text", "parquet"]
OnError = Literal["skip", "fail"]

MAX_DOC_LINES = 1000
"""Most non-blank lines in one plain-text document (bounds memory for files without blank lines)."""

_SUFFIXES: dict[str, Format] = {
    ".jsonl": "jsonl",
    ".jsonl.gz": "jsonl",
    ".jsonl.zst": "jsonl",
    ".txt": "text",
    ".txt.gz": "text",
    ".txt.zst": "text",
    ".parquet": "parquet",
}
_LANG_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*)=(.+)$")
_GLOB_CHARS = re.compile(r"[*?\[]")
_BOM = b"\xef\xbb\xbf"
_PARQUET_BATCH_ROWS = 4096
_PIN_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")  # sha256sum: text or binary (*) mode


@dataclass(frozen=True)
class CorpusSpec:
    """One corpus input: a file or a glob pattern (expanded sorted, so reading is deterministic)."""

    path: str
    format: Format = "auto"
    lang: str | None = None
    """Language of a text file (required there); for JSONL/Parquet the default used only when a
    record's language field is absent or null."""
    text_field: str = "text"
    lang_field: str = "lang"

    @classmethod
    def parse(cls, s: str) -> CorpusSpec:
        """Parse the CLI/config form ``"PATH"`` or ``"LANG=PATH"`` (e.g. ``"nya=books/*.txt"``).

        The part before the first ``=`` is taken as a language only if it looks like a code
        (letters, digits, ``_``, ``-``; no path separator), so ``data/a=b.txt`` stays a path.
        """
        s = s.strip()
        if not s:
            raise CorpusError("empty corpus spec")
        m = _LANG_PREFIX.match(s)
        if m:
            return cls(path=m.group(2), lang=m.group(1))
        return cls(path=s)

    def format_of(self, path: Path) -> Format:
        """The reader format for one concrete file of this spec."""
        if self.format != "auto":
            return self.format
        name = path.name.lower()
        for suffix, fmt in _SUFFIXES.items():
            if name.endswith(suffix):
                return fmt
        known = " ".join(_SUFFIXES)
        raise CorpusError(f"{path}: cannot tell the format from the suffix (known: {known})")


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


class _Policy:
    """Applies the bad-input policy: raise at the first bad record, or count it and go on."""

    def __init__(self, on_error: OnError, stats: ReadStats) -> None:
        if on_error not in ("skip", "fail"):
            raise ValueError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
        self.fail = on_error == "fail"
        self.stats = stats

    def bad(self, reason: str, where: Where, message: str) -> None:
        if self.fail:
            raise CorpusError(f"{where}: {message}")
        self.stats.skip(reason, where, message)


def iter_documents(
    specs: Sequence[CorpusSpec | str] | CorpusSpec | str,
    *,
    on_error: OnError = "skip",
    stats: ReadStats | None = None,
    doc_lines: int = 1,
    pins: str | Path | None = None,
) -> Iterator[Document]:
    """Stream the documents of every input, in spec order and sorted file order within a glob.

    ``doc_lines`` is the number of consecutive blank lines that end a plain-text document (see the
    module docstring). All globs are expanded before the first document is read, so a pattern
    matching nothing fails fast; with ``pins`` (a sha256sum file) the files are checked against
    it before too (`check_pins`). Raises ``CorpusError`` at the end if no document was read.
    """
    if doc_lines < 1:
        raise ValueError(f"doc_lines must be >= 1, got {doc_lines}")
    stats = stats if stats is not None else ReadStats()
    policy = _Policy(on_error, stats)
    if isinstance(specs, str | CorpusSpec):
        specs = [specs]  # one input given bare (a str is a Sequence too: don't read it per char)
    parsed = [CorpusSpec.parse(s) if isinstance(s, str) else s for s in specs]
    if not parsed:
        raise CorpusError("no corpus inputs given")
    plan = _plan(parsed, stats)
    if pins is not None:
        check_pins([path for _, path in plan], Path(pins))
    before = sum(stats.documents.values())
    for spec, path in plan:
        fmt = spec.format_of(path)
        stats.files += 1
        if fmt == "jsonl":
            docs = _read_jsonl(path, spec, policy)
        elif fmt == "text":
            docs = _read_text(path, spec, policy, doc_lines)
        else:
            docs = _read_parquet(path, spec, policy)
        for doc in docs:
            stats.add(doc)
            yield doc
    if sum(stats.documents.values()) == before:
        inputs = ", ".join(s.path for s in parsed)
        skipped = ", ".join(f"{k}={v}" for k, v in sorted(stats.skipped.items())) or "none"
        raise CorpusError(f"no documents in {inputs} (skipped: {skipped})")


def fingerprint_inputs(specs: Sequence[CorpusSpec], **options: Any) -> dict[str, Any]:
    """What a tokenized directory was made from: each file read (path as matched, language and
    format of its spec, size, mtime) and the reading `options` (JSON-ready).

    Sizes and mtimes, not content hashes: checking them costs a stat per file, where hashing
    would read the whole corpus again on every rerun; any write changes the mtime. What they
    miss (a rewrite keeping size and mtime) is what ``corpus.pins`` is for.
    """
    files = []
    for spec, path in _plan(specs, ReadStats()):
        st = path.stat()
        fmt = spec.format_of(path)
        entry = {"path": str(path), "lang": spec.lang, "format": fmt}
        files.append({**entry, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns})
    return {"files": files, "options": dict(sorted(options.items()))}


def describe_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two `fingerprint_inputs` results."""
    if old is None:
        return ["no record of the inputs (made by an older streamloco)"]
    changes = [
        f"option {k}: {old['options'].get(k)!r} -> {v!r}"
        for k, v in new["options"].items()
        if old["options"].get(k) != v
    ]
    before = {f["path"]: f for f in old["files"]}
    after = {f["path"]: f for f in new["files"]}
    changes += [f"added {p}" for p in after if p not in before]
    changes += [f"removed {p}" for p in before if p not in after]
    for p in after.keys() & before.keys():
        diff = [k for k in ("lang", "format", "bytes", "mtime_ns") if before[p][k] != after[p][k]]
        if diff:
            changes.append(f"changed {p} ({', '.join(diff)})")
    return changes


def _plan(specs: Sequence[CorpusSpec], stats: ReadStats) -> list[tuple[CorpusSpec, Path]]:
    """Each input file once, by real path, in spec order; a file matched again is not read.

    Duplicates are dropped under either policy (reading a file twice is never what was meant)
    and counted as "duplicate_file"; directory links not followed as "linked_dir".
    """
    plan: list[tuple[CorpusSpec, Path]] = []
    first: dict[str, Path] = {}
    for spec in specs:
        for path in _expand(spec, stats):
            real = os.path.realpath(path)
            if real in first:
                stats.skip("duplicate_file", Where(str(path)), f"same file as {first[real]}")
                continue
            first[real] = path
            plan.append((spec, path))
    return plan


def _expand(spec: CorpusSpec, stats: ReadStats) -> list[Path]:
    """The files of one spec: a glob expands sorted (deterministic); a plain path must exist."""
    if _GLOB_CHARS.search(spec.path):
        parts = Path(spec.path).parts
        k = next(i for i, part in enumerate(parts) if _GLOB_CHARS.search(part))
        files: list[Path] = []
        _glob(Path(*parts[:k]) if k else Path(), parts[k:], set(), files, stats)
        if not files:
            raise CorpusError(f"{spec.path}: pattern matches no files")
        return sorted(set(files))
    path = Path(spec.path)
    if not path.is_file():
        raise CorpusError(f"{spec.path}: no such file")
    return [path]


def _glob(
    d: Path, parts: tuple[str, ...], seen: set[tuple[str, int]], out: list[Path], stats: ReadStats
) -> None:
    """Append to `out` the files under `d` matching the pattern `parts` (glob.glob semantics).

    glob.glob follows directory links under ``**`` until the OS refuses the path (ELOOP), so a
    link back to a parent is read dozens of times (more with several links). Here a real
    directory is searched once per pattern position; a link reaching it again is not followed.
    """
    key = (os.path.realpath(d), len(parts))
    if key in seen:
        stats.skip(
            "linked_dir", Where(str(d)), f"already searched as {key[0]} (a link loop or alias)"
        )
        return
    seen.add(key)
    head, rest = parts[0], parts[1:]
    if head == "**":  # zero or more directories
        entries = _entries(d, "*")
        if rest:
            _glob(d, rest, seen, out, stats)
        else:
            out.extend(p for p in entries if p.is_file())
        for sub in entries:
            if sub.is_dir():
                _glob(sub, parts, seen, out, stats)
        return
    for p in _entries(d, head):
        if rest and p.is_dir():
            _glob(p, rest, seen, out, stats)
        elif not rest and p.is_file():
            out.append(p)


def _entries(d: Path, pattern: str) -> list[Path]:
    """Sorted entries of `d` matching one path component; hidden ones only if asked, as glob."""
    if not _GLOB_CHARS.search(pattern):
        return [d / pattern] if os.path.lexists(d / pattern) else []
    try:
        names = os.listdir(d)
    except OSError:  # unreadable or not a directory: matches nothing, as in glob.glob
        return []
    if not pattern.startswith("."):
        names = [n for n in names if not n.startswith(".")]
    return [d / n for n in sorted(fnmatch.filter(names, pattern))]


def check_pins(paths: Sequence[Path], pins: Path) -> None:
    """Raise CorpusError unless `paths` are exactly the files listed in `pins`, with their sha256.

    `pins` is in ``sha256sum`` format (``HEX  PATH`` per line; ``#`` comments), paths relative
    to the working directory as in ``corpus.inputs``: ``sha256sum data/*.jsonl.zst > pins``.
    Pins catch what no reader can: a multi-frame .zst (or a text file) cut exactly at a frame
    (line) boundary is a valid, shorter file; a file added to or missing from a glob.
    """
    pinned = _read_pins(pins)
    real = {os.path.realpath(p): p for p in paths}
    extra = [str(p) for r, p in real.items() if r not in pinned]
    if extra:
        raise CorpusError(f"{pins}: inputs not pinned there: {', '.join(extra[:5])}")
    missing = [name for r, (name, _) in pinned.items() if r not in real]
    if missing:
        raise CorpusError(f"{pins}: pinned files not among the inputs: {', '.join(missing[:5])}")
    for r, path in real.items():
        digest = pinned[r][1]
        actual = file_sha256(path)
        if actual != digest:
            raise CorpusError(
                f"{path}: sha256 {actual} differs from {digest} pinned in {pins} "
                "(the file changed, was cut short or replaced)"
            )


def _read_pins(pins: Path) -> dict[str, tuple[str, str]]:
    """real path -> (path as written, sha256) for each line of a sha256sum-format file."""
    try:
        lines = pins.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError(f"{pins}: cannot read the pin file ({exc})") from exc
    out: dict[str, tuple[str, str]] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _PIN_LINE.match(line)
        if not m:
            raise CorpusError(f"{pins}:{lineno}: expected 'SHA256  PATH' (sha256sum format)")
        out[os.path.realpath(m.group(2))] = (m.group(2), m.group(1).lower())
    return out


def _open_binary(path: Path) -> BinaryIO:
    """Open a file as a buffered, decompressing byte stream (by suffix: .gz, .zst, else plain)."""
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if name.endswith(".zst"):
        return io.BufferedReader(_ZstdFrames(path.open("rb")), buffer_size=1 << 20)
    return path.open("rb")


class _ZstdFrames(io.RawIOBase):
    """Every zstd frame of a file, in order; a file that ends inside a frame raises ZstdError.

    python-zstandard's ``stream_reader`` (and ``read_to_iter``) end quietly at a truncated frame,
    which would read a cut file as a shorter, valid one. A ``decompressobj`` says whether its
    frame is complete (``eof``), so frames are chained by hand. Input is fed in small pieces to
    keep the decompressed output of one step small (text expands ~3-10x).
    """

    _READ = 1 << 16

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.frame: Any = None  # the decompressor of the frame being read, None between frames
        self.out = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        while not self.out:
            data = self.raw.read(self._READ)
            if not data:
                if self.frame is not None:
                    raise zstandard.ZstdError("truncated: the file ends inside a zstd frame")
                return 0
            self.out = memoryview(self._decompress(data))
        n = min(len(buf), len(self.out))
        buf[:n] = self.out[:n]
        self.out = self.out[n:]
        return n

    def _decompress(self, data: bytes) -> bytes:
        parts = []
        while data:
            if self.frame is None:
                self.frame = zstandard.ZstdDecompressor().decompressobj()
            parts.append(self.frame.decompress(data))
            data = b""
            if self.frame.eof:  # the bytes after a finished frame start the next one
                data, self.frame = self.frame.unused_data, None
        return b"".join(parts)

    def close(self) -> None:
        self.raw.close()
        super().close()


def _iter_lines(path: Path, policy: _Policy) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw line without its end-of-line) pairs; a BOM at the start is dropped.

    A file with no non-blank line is reported as "empty_file" once it is exhausted. A corrupt
    compressed stream is reported as a bad record at the line where it broke; under "skip" the
    rest of that file is skipped (a decompressor cannot resynchronize).
    """
    lineno = 0
    empty = True
    with _open_binary(path) as fh:
        try:
            for lineno, raw in enumerate(fh, start=1):
                if lineno == 1 and raw.startswith(_BOM):
                    raw = raw[len(_BOM) :]
                empty = empty and not raw.strip()
                yield lineno, raw.rstrip(b"\r\n")
        except (OSError, EOFError, zstandard.ZstdError) as exc:
            policy.bad(
                "corrupt_file", Where(str(path), lineno + 1), f"corrupt compressed data ({exc})"
            )
            return
    if empty:
        policy.bad("empty_file", Where(str(path)), "empty file")


def _decode(raw: bytes, where: Where, policy: _Policy) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        policy.bad("invalid_utf8", where, f"invalid UTF-8 at byte {exc.start}")
        return None


def _read_jsonl(path: Path, spec: CorpusSpec, policy: _Policy) -> Iterator[Document]:
    for lineno, raw in _iter_lines(path, policy):
        if not raw.strip():
            continue  # blank lines (e.g. a trailing newline) are not records
        where = Where(str(path), lineno)
        line = _decode(raw, where, policy)
        if line is None:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            policy.bad("bad_json", where, f"bad JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(record, dict):
            policy.bad("not_object", where, f"expected a JSON object, got {type(record).__name__}")
            continue
        doc = _make_document(record, spec, str(path), lineno, where, policy)
        if doc is not None:
            yield doc


def _make_document(
    record: dict[str, Any], spec: CorpusSpec, source: str, line: int, where: Where, policy: _Policy
) -> Document | None:
    """Validate the text and language of one record (JSONL object or Parquet row)."""
    lang = record.get(spec.lang_field)
    if lang is None:
        lang = spec.lang
    if lang is None:
        policy.bad("missing_lang", where, f"missing language field {spec.lang_field!r}")
        return None
    if not isinstance(lang, str):
        policy.bad("bad_lang", where, f"field {spec.lang_field!r} is not a string: {lang!r}")
        return None
    if not lang.strip():
        policy.bad("missing_lang", where, f"empty language field {spec.lang_field!r}")
        return None
    text = record.get(spec.text_field)
    if text is None:
        policy.bad("missing_text", where, f"missing text field {spec.text_field!r}")
        return None
    if not isinstance(text, str):
        kind = type(text).__name__
        policy.bad("bad_text", where, f"field {spec.text_field!r} is not a string ({kind})")
        return None
    if not text.strip():
        policy.bad("empty_text", where, f"empty text in field {spec.text_field!r}")
        return None
    return Document(text=text, lang=lang.strip(), source=source, line=line)


def _read_text(path: Path, spec: CorpusSpec, policy: _Policy, doc_lines: int) -> Iterator[Document]:
    if not spec.lang:
        raise CorpusError(f"{path}: plain text needs a language (use LANG=PATH, e.g. nya={path})")
    lines: list[str] = []  # the current document
    start = 0  # its first line number
    blanks = 0  # blank lines seen since its last non-blank line
    broken = False  # it contains a line that failed to decode: drop the whole document

    def flush() -> Document | None:
        if not lines or broken:
            return None
        return Document(text="\n".join(lines), lang=spec.lang, source=str(path), line=start)  # type: ignore[arg-type]

    for lineno, raw in _iter_lines(path, policy):
        if not raw.strip():
            blanks += 1
            continue
        if lines and (blanks >= doc_lines or len(lines) >= MAX_DOC_LINES):
            doc = flush()
            if doc is not None:
                yield doc
            lines, broken = [], False
        elif lines and blanks:
            lines.extend([""] * blanks)  # blank lines inside a document are kept
        blanks = 0
        if not lines:
            start = lineno
        text = _decode(raw, Where(str(path), lineno), policy)
        broken = broken or text is None
        lines.append(text or "")
    doc = flush()
    if doc is not None:
        yield doc


def _read_parquet(path: Path, spec: CorpusSpec, policy: _Policy) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        policy.bad("corrupt_file", Where(str(path)), f"not a readable Parquet file ({exc})")
        return
    columns = _parquet_columns(pf.schema_arrow, path, spec)
    if pf.metadata.num_rows == 0:
        policy.bad("empty_file", Where(str(path)), "empty file")
        return
    row = 0
    for batch in _parquet_batches(pf, columns, path, policy):
        # Strings are viewed as bytes and decoded per row, so one invalid value is one bad row.
        values = [_as_bytes(batch.column(name)) for name in columns]
        for items in zip(*values, strict=True):
            row += 1
            where = Where(str(path), row)
            decoded = [None if v is None else _decode(v, where, policy) for v in items]
            if any(v is None and raw is not None for v, raw in zip(decoded, items, strict=True)):
                continue
            record = dict(zip(columns, decoded, strict=True))
            doc = _make_document(record, spec, str(path), row, where, policy)
            if doc is not None:
                yield doc


def _parquet_columns(schema: Any, path: Path, spec: CorpusSpec) -> list[str]:
    """The columns to read; a missing or non-string column is a configuration error (raises)."""
    import pyarrow as pa

    if spec.text_field not in schema.names:
        raise CorpusError(f"{path}: no column {spec.text_field!r} (columns: {schema.names})")
    has_lang = spec.lang_field in schema.names
    if not has_lang and spec.lang is None:
        raise CorpusError(f"{path}: no column {spec.lang_field!r} and no language in the spec")
    columns = [spec.text_field] + ([spec.lang_field] if has_lang else [])
    for name in columns:
        kind = schema.field(name).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise CorpusError(f"{path}: column {name!r} has type {kind}, expected string")
    return columns


def _parquet_batches(pf: Any, columns: list[str], path: Path, policy: _Policy) -> Iterator[Any]:
    """Record batches; a corrupt page is a bad record naming the first row of its batch."""
    import pyarrow as pa

    row = 0
    try:
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns):
            yield batch
            row += batch.num_rows
    except (OSError, pa.ArrowException) as exc:
        policy.bad("corrupt_file", Where(str(path), row + 1), f"corrupt Parquet data ({exc})")


def _as_bytes(column: Any) -> Iterable[bytes | None]:
    import pyarrow as pa

    target = pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary()
    return column.view(target).to_pylist()

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

import gzip
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal

import zstandard

from streamloco.data_pipeline.inputs import CorpusSpec, check_pins, plan_reads
from streamloco.data_pipeline.read_stats import ReadStats, Where
from streamloco.text.documents import CorpusError, Document

OnError = Literal["skip", "fail"]

MAX_DOC_LINES = 1000
"""Most non-blank lines in one plain-text document (bounds memory for files without blank lines)."""

_BOM = b"\xef\xbb\xbf"
_PARQUET_BATCH_ROWS = 4096


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
    plan = plan_reads(parsed, stats)
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

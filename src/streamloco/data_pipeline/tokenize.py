"""Parallel, resumable tokenization of a corpus into zstd token shards plus manifest.json.

Output. Documents are split train/validation by a hash of (seed, lang, text) (`split_of`) and
routed to one output stream per (lang, split). Each document becomes its tokens + [eos]; a
stream is cut into shards ``<out_dir>/<split>/<lang>-<index:05d>.tok.zst``: a shard is closed
as soon as it holds >= `shard_tokens` tokens, so documents are never cut across shards (a
single huge document makes one big shard). A document whose text normalizes to nothing is kept
as a lone eos, so document counts always equal the input's.

Determinism. Documents are encoded in chunks by an `Executor` (local processes, or Ray tasks
via `streamloco.launcher.ray_executor`), but results are consumed in input order (a bounded
window of in-flight chunks), so the shards are byte-identical whatever the worker count (tested
with 1 and 2) and whichever executor ran them.

Resumability. Because a stream's shards are filled strictly in document order and every shard
starts empty, shard k of a stream is a function of the documents alone. As each shard is renamed
into place, a line is appended (and fsynced) to ``<out_dir>/journal.jsonl``: the shard's
manifest entry plus its stream index and a digest of the documents it holds. The first journal
line is a fingerprint of the options (tokenizer sha256, dtype, split fraction and seed,
shard_tokens, zstd level). On a re-run:

- a finished dir (manifest.json present, same fingerprint, including the corpus inputs when
  the caller gives them, every shard's sha256 intact) is returned as is: a no-op; `rebuild`
  deletes manifest and journal first, so the run starts over;
- otherwise the journal is read (a torn last line is dropped), every journaled shard is
  re-verified by sha256 and, per stream, the shards after the first bad one are dropped; stray
  temporary files and unjournaled shard files are deleted;
- the corpus is read again; for each stream the documents already in its journaled shards are
  skipped without encoding (their digest is checked, so a changed corpus fails loudly instead of
  mixing old and new data) and the stream continues at its next shard index.

The result is identical to an uninterrupted run. manifest.json is written last (atomically) and
the journal is removed after it. A crash therefore leaves only complete shards under final names,
temporary ``*.tmp-<pid>`` files, and no manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamloco.atomic import TMP_MARK, atomic_write
from streamloco.data_pipeline.executor import Executor, LocalExecutor
from streamloco.data_pipeline.inputs import describe_changes
from streamloco.data_pipeline.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    ShardEntry,
    TokenizerRef,
    load_manifest,
    verify_shard,
    write_manifest,
)
from streamloco.data_pipeline.shards import write_shard
from streamloco.progress import progress_bar
from streamloco.text.documents import Document
from streamloco.tokenizer.model import Tokenizer

JOURNAL_NAME = "journal.jsonl"
_JOURNAL_KIND = "streamloco-tokenize-journal"


class TokenizeError(ValueError):
    """The output dir cannot be resumed or reused as asked; the message says why."""


def split_of(doc: Document, validation_fraction: float, seed: int) -> str:
    """``"validation"`` or ``"train"``, a pure function of (seed, lang, text).

    u = blake2b(seed, lang, text) read as a number in [0, 1); validation iff u < fraction, so each
    language gets close to `validation_fraction` of its documents (exact duplicates land together,
    which keeps them from leaking across the split).
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    h = hashlib.blake2b(f"{seed}\0{doc.lang}\0".encode(), digest_size=8)
    h.update(doc.text.encode("utf-8", "surrogatepass"))
    u = int.from_bytes(h.digest(), "big") / 2.0**64
    return "validation" if u < validation_fraction else "train"


# ---- encoding: one chunk of texts per call, run by whichever Executor the caller chose -------


@dataclass(frozen=True)
class _Encoder:
    """What every worker needs once: the tokenizer and the shard dtype.

    The tokenizer travels as its model bytes (Tokenizer pickles that way): every worker uses
    exactly the model the parent loaded and checked, even if the file changes meanwhile.
    """

    tok: Tokenizer
    dtype: str


def _encode(enc: _Encoder, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(lengths incl. eos, all tokens with an eos after each document) for a chunk of texts."""
    # encode_flat, not a list of ids: a long document is encoded in pieces straight into arrays,
    # so memory follows its token count (docs/tokenizer.md), not 36 bytes per Python int.
    return enc.tok.encode_flat(texts, enc.dtype)


def _encoded_chunks(
    chunks: Iterable[list[tuple[Document, str]]], enc: _Encoder, executor: Executor
) -> Iterator[tuple[list[tuple[Document, str]], tuple[np.ndarray, np.ndarray]]]:
    """Each chunk with its encoding, in input order (the executor bounds what is in flight).

    Only the texts travel to the workers; the chunks wait here in a queue that the executor's
    lazy, in-order reading keeps aligned with its results.
    """
    waiting: deque[list[tuple[Document, str]]] = deque()

    def texts() -> Iterator[list[str]]:
        for chunk in chunks:
            waiting.append(chunk)
            yield [d.text for d, _ in chunk]

    # closing(): on an error (or an early close) the executor cancels its queued work now
    with closing(executor.map_ordered(_encode, enc, texts())) as results:
        for result in results:
            yield waiting.popleft(), result


# ---- main side: streams, journal ---------------------------------------------------------------


def _doc_digest_update(h: Any, doc: Document) -> None:
    h.update(f"{len(doc.text)}\0{doc.lang}\0".encode())
    h.update(doc.text.encode("utf-8", "surrogatepass"))


@dataclass
class _Stream:
    """One (lang, split) output: journaled shards to skip over, then the shard being filled."""

    lang: str
    split: str
    done: list[dict] = field(default_factory=list)  # journaled shards, in index order
    to_check: deque = field(default_factory=deque)  # journaled shards not yet skipped over
    head_left: int = 0  # documents of to_check[0] not yet seen in this pass
    parts: list[np.ndarray] = field(default_factory=list)
    tokens: int = 0
    documents: int = 0
    digest: Any = field(default_factory=lambda: hashlib.blake2b(digest_size=16))

    def resume_from(self, entries: list[dict]) -> None:
        self.done = list(entries)
        self.to_check = deque(entries)
        self.head_left = entries[0]["documents"] if entries else 0

    def skip(self, doc: Document) -> None:
        """Consume a document a journaled shard already holds, checking the corpus is the same."""
        _doc_digest_update(self.digest, doc)
        self.head_left -= 1
        if self.head_left:
            return
        entry = self.to_check.popleft()
        if self.digest.hexdigest() != entry["docs_digest"]:
            raise TokenizeError(
                f"{entry['path']}: the corpus differs from the one this shard was made from; "
                "tokenize into a new directory (or delete this one) to start over"
            )
        self.digest = hashlib.blake2b(digest_size=16)
        self.head_left = self.to_check[0]["documents"] if self.to_check else 0

    def add(self, doc: Document, tokens: np.ndarray) -> None:
        _doc_digest_update(self.digest, doc)
        self.parts.append(tokens)
        self.tokens += len(tokens)
        self.documents += 1


class _Journal:
    def __init__(self, out_dir: Path, fingerprint: dict[str, Any]) -> None:
        self.path = out_dir / JOURNAL_NAME
        self.out_dir = out_dir
        self.header = {"kind": _JOURNAL_KIND, "fingerprint": fingerprint}
        self.entries = self._recover() if self.path.exists() else []
        lines = [json.dumps(x, sort_keys=True) + "\n" for x in [self.header, *self.entries]]
        atomic_write(self.path, lambda f: f.write("".join(lines).encode()))
        self._clean()
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def _recover(self) -> list[dict]:
        text = self.path.read_text(encoding="utf-8", errors="replace")
        lines = text.split("\n")[:-1]  # the piece after the last \n is torn
        records = []
        for ln in lines:
            try:
                records.append(json.loads(ln))
            except json.JSONDecodeError:
                break  # torn write: everything after it is lost, and redone
        if (
            not records
            or not isinstance(records[0], dict)
            or records[0].get("kind") != _JOURNAL_KIND
        ):
            raise TokenizeError(f"{self.path}: not a tokenize journal; delete it to start over")
        old = records[0].get("fingerprint")
        if old != self.header["fingerprint"]:
            raise TokenizeError(
                f"{self.out_dir}: an unfinished run with other options or corpus is here "
                f"({_mismatch(old, self.header['fingerprint'])}); resume with the same ones, "
                "rebuild (--rebuild) or delete it"
            )
        return self._verified(records[1:])

    def _verified(self, entries: list[dict]) -> list[dict]:
        """Keep, per stream, the leading shards that are intact on disk."""
        dtype = self.header["fingerprint"]["dtype"]
        kept, broken = [], set()
        for e in entries:
            key = (e["lang"], e["split"])
            if key in broken:
                continue
            try:
                verify_shard(self.out_dir, _entry(e), dtype, "sha256")
                kept.append(e)
            except ManifestError:
                broken.add(key)
        return kept

    def _clean(self) -> None:
        """Delete temporaries and shard files the journal does not vouch for (redone anyway)."""
        keep = {e["path"] for e in self.entries}
        for split in ("train", "validation"):
            d = self.out_dir / split
            for p in sorted(d.glob("*")) if d.is_dir() else []:
                rel = f"{split}/{p.name}"
                if TMP_MARK in p.name or (p.name.endswith(".tok.zst") and rel not in keep):
                    p.unlink()

    def append(self, entry: dict) -> None:
        self.file.write(json.dumps(entry, sort_keys=True) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.entries.append(entry)

    def close(self) -> None:
        self.file.close()


def _entry(e: dict) -> ShardEntry:
    return ShardEntry(**{k: e[k] for k in ShardEntry.__dataclass_fields__})


# ---- the driver --------------------------------------------------------------------------------

_LANG_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def _mismatch(old: dict[str, Any], new: dict[str, Any]) -> str:
    """What differs between two fingerprints: options as (there, now), the corpus by file."""
    diff = {k: (old.get(k), v) for k, v in new.items() if k != "inputs" and old.get(k) != v}
    parts = [f"option: (there, now) = {diff}"] if diff else []
    if old.get("inputs") != new.get("inputs"):
        parts.append(
            "corpus changed: " + "; ".join(describe_changes(old.get("inputs"), new["inputs"]))
        )
    return ", ".join(parts)


def _fingerprint(m: Manifest) -> dict[str, Any]:
    """What decides the shards' bytes: a resumed or rerun job must match it.

    The options always; the corpus inputs when the caller fingerprinted them (a caller passing
    documents from memory has no files to describe)."""
    t = m.tokenizer
    inputs = {} if m.corpus_inputs is None else {"inputs": m.corpus_inputs}
    return inputs | {
        "tokenizer_sha256": t.sha256,
        "vocab_size": t.vocab_size,
        "eos_id": t.eos_id,
        "dtype": m.dtype,
        "validation_fraction": m.validation_fraction,
        "split_seed": m.split_seed,
        "shard_tokens": m.shard_tokens,
        "zstd_level": m.zstd_level,
    }


class _Run:
    """One pass over the corpus: route documents to streams, encode, cut and journal shards."""

    def __init__(self, out_dir: Path, journal: _Journal, fp: dict[str, Any], chunk_docs: int):
        self.out_dir, self.journal, self.fp, self.chunk_docs = out_dir, journal, fp, chunk_docs
        self.streams: dict[tuple[str, str], _Stream] = {}
        for e in journal.entries:
            self._stream(e["lang"], e["split"]).done.append(e)
        for s in self.streams.values():
            s.resume_from(s.done)
        self.seen = self.skipped = self.tokens = 0

    def _stream(self, lang: str, split: str) -> _Stream:
        s = self.streams.get((lang, split))
        if s is None:
            s = self.streams[(lang, split)] = _Stream(lang, split)
        return s

    def chunks(self, docs: Iterable[Document]) -> Iterator[list[tuple[Document, str]]]:
        """Chunks of (doc, split) still to encode; documents of journaled shards are skipped."""
        vf, seed = self.fp["validation_fraction"], self.fp["split_seed"]
        chunk: list[tuple[Document, str]] = []
        chars = 0
        for doc in docs:
            self.seen += 1
            if not doc.lang or not set(doc.lang) <= _LANG_OK:
                raise TokenizeError(
                    f"{doc.source}:{doc.line}: language code {doc.lang!r} is not usable in a "
                    "shard file name (letters, digits, '_' and '-' only)"
                )
            split = split_of(doc, vf, seed)
            s = self._stream(doc.lang, split)
            if s.to_check:
                s.skip(doc)
                self.skipped += 1
                continue
            chunk.append((doc, split))
            chars += len(doc.text)
            if len(chunk) >= self.chunk_docs or chars >= 1 << 20:
                yield chunk
                chunk, chars = [], 0
        if chunk:
            yield chunk

    def add(self, chunk: list[tuple[Document, str]], lengths: np.ndarray, flat: np.ndarray) -> None:
        ends = np.cumsum(lengths).tolist()
        start = 0
        for (doc, split), end in zip(chunk, ends, strict=True):
            s = self.streams[(doc.lang, split)]
            s.add(doc, flat[start:end])
            start = end
            if s.tokens >= self.fp["shard_tokens"]:
                self.flush(s)
        self.tokens += len(flat)

    def flush(self, s: _Stream) -> None:
        rel = f"{s.split}/{s.lang}-{len(s.done):05d}.tok.zst"
        (self.out_dir / s.split).mkdir(exist_ok=True)
        tokens = np.concatenate(s.parts).astype(self.fp["dtype"], copy=False)
        info = write_shard(self.out_dir / rel, tokens, s.documents, self.fp["zstd_level"])
        entry = {"lang": s.lang, "split": s.split, "index": len(s.done)}
        entry.update(path=rel, sha256=info.sha256, tokens=info.tokens, documents=info.documents)
        entry.update(bytes=info.bytes, docs_digest=s.digest.hexdigest())
        self.journal.append(entry)
        s.done.append(entry)
        s.parts, s.tokens, s.documents = [], 0, 0
        s.digest = hashlib.blake2b(digest_size=16)

    def finish(self) -> None:
        for key in sorted(self.streams):
            s = self.streams[key]
            if s.to_check:
                raise TokenizeError(
                    f"{s.to_check[0]['path']}: the corpus now has fewer {s.lang}/{s.split} "
                    "documents than when this shard was made; tokenize into a new directory"
                )
            if s.documents:
                self.flush(s)
        if self.seen == 0:
            raise TokenizeError("no documents to tokenize (the corpus is empty)")


def tokenize_corpus(
    docs_factory: Callable[[], Iterable[Document]],
    tokenizer_path: Path,
    out_dir: Path,
    *,
    shard_tokens: int = 8_000_000,
    validation_fraction: float = 0.01,
    seed: int = 0,
    workers: int | None = None,
    zstd_level: int = 3,
    progress: bool = True,
    chunk_docs: int = 256,
    executor: Executor | None = None,
    corpus_read: Callable[[], dict[str, Any]] | None = None,
    inputs: dict[str, Any] | None = None,
    rebuild: bool = False,
) -> Manifest:
    """Tokenize the documents of `docs_factory()` into shards under `out_dir` (module doc).

    `executor` encodes (default: ``LocalExecutor(workers)``, i.e. `workers` processes, all cores
    when None, <= 1 in this process; pass either an executor or `workers`, not both);
    `chunk_docs` documents (or ~1M characters) go to a worker at a time. Re-running resumes an
    interrupted run or, on a finished dir, returns its manifest without reading the corpus.
    `corpus_read`, called after the corpus was read, gives what reading counted and skipped,
    recorded in the manifest. `inputs` (`inputs.fingerprint_inputs`) is recorded too, and a
    finished or unfinished dir made from other inputs is refused naming what changed, unless
    `rebuild` (which starts over, deleting the old shards).
    """
    if shard_tokens < 1 or chunk_docs < 1:
        raise ValueError(f"shard_tokens and chunk_docs must be >= 1 ({shard_tokens}, {chunk_docs})")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    if executor is None:
        executor = LocalExecutor(workers)
    elif workers is not None:
        raise ValueError("tokenize_corpus: pass `workers` to the executor, not alongside it")
    out_dir, tokenizer_path = Path(out_dir), Path(tokenizer_path)
    tok = Tokenizer.load(tokenizer_path)
    manifest = Manifest(
        data_dir=out_dir,
        tokenizer=TokenizerRef(str(tokenizer_path), tok.sha256, tok.vocab_size, tok.eos_id),
        dtype="uint16" if tok.vocab_size <= 1 << 16 else "uint32",
        validation_fraction=validation_fraction,
        split_seed=seed,
        shard_tokens=shard_tokens,
        zstd_level=zstd_level,
        corpus_inputs=inputs,
    )
    fp = _fingerprint(manifest)
    if rebuild:  # the manifest first: from here on the old shards are not vouched for
        for name in (MANIFEST_NAME, JOURNAL_NAME):
            (out_dir / name).unlink(missing_ok=True)
    if (out_dir / MANIFEST_NAME).exists():
        finished = load_manifest(out_dir, verify="sha256")
        old = _fingerprint(finished)
        if inputs is None:  # nothing to compare the corpus with
            old.pop("inputs", None)
        if old != fp:
            raise TokenizeError(
                f"{out_dir} already holds a finished tokenization made from other options or "
                f"another corpus ({_mismatch(old, fp)}); rebuild it (--rebuild), use another "
                "directory or delete it"
            )
        return finished
    out_dir.mkdir(parents=True, exist_ok=True)
    journal = _Journal(out_dir, fp)
    t0 = time.perf_counter()
    try:
        run = _Run(out_dir, journal, fp, chunk_docs)
        with progress_bar(desc="tokenize", unit="doc", disable=not progress) as bar:
            # closing(): on an error the workers shut down now, not when the traceback dies
            enc = _Encoder(tok, manifest.dtype)
            encoded = closing(_encoded_chunks(run.chunks(docs_factory()), enc, executor))
            with encoded as results:
                for chunk, (lengths, flat) in results:
                    run.add(chunk, lengths, flat)
                    bar.update(len(chunk))
                    rate = run.tokens / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(tokens=run.tokens, tok_s=f"{rate:.3g}", resumed=run.skipped)
            run.finish()
    finally:
        journal.close()
    manifest.shards = sorted(
        (_entry(e) for e in journal.entries), key=lambda e: (e.split, e.lang, e.path)
    )
    manifest.corpus_read = corpus_read() if corpus_read is not None else None
    write_manifest(manifest)
    journal.path.unlink()  # the manifest now vouches for every shard
    return manifest

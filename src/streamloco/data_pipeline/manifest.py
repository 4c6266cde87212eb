"""manifest.json: the self-description of a tokenized data directory, validated on open.

Format (version 1)::

    {
      "format": "streamloco-shards", "version": 1,
      "tokenizer": {"path": str, "sha256": str, "vocab_size": int, "eos_id": int},
      "dtype": "uint16" | "uint32",
      "validation_fraction": float, "split_seed": int,
      "shard_tokens": int, "zstd_level": int,          # how the shards were cut and compressed
      "shards": [{"path": "train/nya-00000.tok.zst",    # relative to the data dir, posix
                  "sha256": str, "tokens": int, "documents": int, "bytes": int,
                  "lang": str, "split": "train" | "validation"}, ...],
      "totals": {"shards", "tokens", "documents", "bytes",
                 "languages": {lang: {split: {"shards", "tokens", "documents"}}}},
      "corpus_inputs": {"files": [{"path", "lang", "format", "bytes", "mtime_ns"}, ...],
                        "options": {...}},        # optional: what the shards were made from
      "corpus_read": {"files", "documents", "chars", "skipped", "skipped_by_file",
                      "examples"}                  # optional: what reading skipped, and where
    }

Every shard holds one language and one split, so the per-shard ``lang`` and ``documents`` are
the per-language counts. Shards are listed sorted by (split, lang, path); a language's stream is
its shards of a split in that order.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from streamloco.atomic import atomic_write
from streamloco.data_pipeline.shards import ShardError, file_sha256, read_header

FORMAT = "streamloco-shards"
VERSION = 1
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "validation")
_SHA = re.compile(r"[0-9a-f]{64}")


class ManifestError(ValueError):
    """A manifest that is malformed or does not match the files; the message names the shard."""


@dataclass(frozen=True)
class TokenizerRef:
    path: str
    sha256: str
    vocab_size: int
    eos_id: int


@dataclass(frozen=True)
class ShardEntry:
    path: str  # relative posix path inside the data dir
    sha256: str
    tokens: int
    documents: int
    bytes: int
    lang: str
    split: str  # "train" | "validation"


@dataclass
class Manifest:
    data_dir: Path
    tokenizer: TokenizerRef
    dtype: str
    validation_fraction: float
    split_seed: int
    shard_tokens: int
    zstd_level: int
    shards: list[ShardEntry] = field(default_factory=list)
    corpus_inputs: dict[str, Any] | None = None
    """The files and reading options the shards were made from (`inputs.fingerprint_inputs`)."""
    corpus_read: dict[str, Any] | None = None
    """What reading the corpus counted and skipped (`ReadStats.as_dict()`), when known."""

    def shards_for(self, lang: str, split: str = "train") -> list[ShardEntry]:
        """The shards of one language and split, in stream order."""
        return [s for s in self.shards if s.lang == lang and s.split == split]

    def languages(self, split: str | None = None) -> list[str]:
        """Sorted languages that have at least one shard (in `split` if given)."""
        return sorted({s.lang for s in self.shards if split is None or s.split == split})

    def tokens_per_language(self, split: str = "train") -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.shards:
            if s.split == split:
                out[s.lang] = out.get(s.lang, 0) + s.tokens
        return dict(sorted(out.items()))

    def shard_path(self, entry: ShardEntry) -> Path:
        return self.data_dir / entry.path

    def totals(self) -> dict[str, Any]:
        langs: dict[str, dict[str, dict[str, int]]] = {}
        for s in self.shards:
            c = langs.setdefault(s.lang, {}).setdefault(
                s.split, {"shards": 0, "tokens": 0, "documents": 0}
            )
            c["shards"] += 1
            c["tokens"] += s.tokens
            c["documents"] += s.documents
        return {
            "shards": len(self.shards),
            "tokens": sum(s.tokens for s in self.shards),
            "documents": sum(s.documents for s in self.shards),
            "bytes": sum(s.bytes for s in self.shards),
            "languages": {k: langs[k] for k in sorted(langs)},
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "tokenizer": asdict(self.tokenizer),
            "dtype": self.dtype,
            "validation_fraction": self.validation_fraction,
            "split_seed": self.split_seed,
            "shard_tokens": self.shard_tokens,
            "zstd_level": self.zstd_level,
            "shards": [asdict(s) for s in self.shards],
            "totals": self.totals(),
            **({} if self.corpus_inputs is None else {"corpus_inputs": self.corpus_inputs}),
            **({} if self.corpus_read is None else {"corpus_read": self.corpus_read}),
        }


def write_manifest(manifest: Manifest) -> Path:
    """Write ``<data_dir>/manifest.json`` atomically (stable key order, so reruns are identical)."""
    path = manifest.data_dir / MANIFEST_NAME
    text = json.dumps(manifest.to_dict(), indent=1, sort_keys=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
    return path


def _get(d: Mapping, key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(d, Mapping) or key not in d:
        raise ManifestError(f"{where}: missing key {key!r}")
    v = d[key]
    # bool is an int subclass; a count given as true/false is a malformed manifest
    if not isinstance(v, typ) or (isinstance(v, bool) and typ is not bool):
        raise ManifestError(f"{where}.{key}: expected {typ}, got {type(v).__name__}")
    return v


def _count(d: Mapping, key: str, where: str) -> int:
    v = _get(d, key, int, where)
    if v < 0:
        raise ManifestError(f"{where}.{key}: negative ({v})")
    return v


def check_relative(data_dir: Path, rel: str, where: str) -> Path:
    """The shard path inside `data_dir`; ManifestError if `rel` could point anywhere else."""
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or rel.startswith("\\") or ":" in rel or "\\" in rel:
        raise ManifestError(f"{where}: shard path {rel!r} must be relative (posix)")
    if ".." in p.parts:
        raise ManifestError(f"{where}: shard path {rel!r} escapes the data directory")
    full = data_dir / Path(*p.parts)
    # a symlink (of the shard or a parent dir) pointing outside the data dir is an escape too
    if not full.resolve().is_relative_to(data_dir.resolve()):
        raise ManifestError(f"{where}: shard path {rel!r} resolves outside the data directory")
    return full


def _parse_shard(raw: Any, i: int, where: str) -> ShardEntry:
    w = f"{where}: shards[{i}]"
    if not isinstance(raw, Mapping):
        raise ManifestError(f"{w}: expected an object")
    path = _get(raw, "path", str, w)
    w = f"{where}: shard {path!r}"
    sha = _get(raw, "sha256", str, w)
    if not _SHA.fullmatch(sha):
        raise ManifestError(f"{w}.sha256: not a hex sha256 digest")
    split = _get(raw, "split", str, w)
    if split not in SPLITS:
        raise ManifestError(f"{w}.split: {split!r} is not one of {SPLITS}")
    lang = _get(raw, "lang", str, w)
    if not lang:
        raise ManifestError(f"{w}.lang: empty")
    counts = {k: _count(raw, k, w) for k in ("tokens", "documents", "bytes")}
    return ShardEntry(path=path, sha256=sha, lang=lang, split=split, **counts)


def parse_manifest(raw: Any, data_dir: Path, where: str) -> Manifest:
    """Check the structure of a decoded manifest (not the files); ManifestError names the key."""
    if not isinstance(raw, Mapping):
        raise ManifestError(f"{where}: expected a JSON object")
    if raw.get("format") != FORMAT:
        raise ManifestError(f"{where}: format is {raw.get('format')!r}, expected {FORMAT!r}")
    if raw.get("version") != VERSION:
        raise ManifestError(f"{where}: unsupported version {raw.get('version')!r}")
    tok = _get(raw, "tokenizer", Mapping, where)
    tw = f"{where}: tokenizer"
    ref = TokenizerRef(
        _get(tok, "path", str, tw),
        _get(tok, "sha256", str, tw),
        _count(tok, "vocab_size", tw),
        _count(tok, "eos_id", tw),
    )
    dtype = _get(raw, "dtype", str, where)
    if dtype not in ("uint16", "uint32"):
        raise ManifestError(f"{where}.dtype: {dtype!r} is not uint16 or uint32")
    shards_raw = _get(raw, "shards", list, where)
    shards = [_parse_shard(s, i, where) for i, s in enumerate(shards_raw)]
    seen: set[str] = set()
    for s in shards:
        if s.path in seen:
            raise ManifestError(f"{where}: shard {s.path!r} is listed twice")
        seen.add(s.path)
    return Manifest(
        data_dir=data_dir,
        tokenizer=ref,
        dtype=dtype,
        validation_fraction=float(_get(raw, "validation_fraction", (int, float), where)),
        split_seed=_get(raw, "split_seed", int, where),
        shard_tokens=_count(raw, "shard_tokens", where),
        zstd_level=_get(raw, "zstd_level", int, where),
        shards=shards,
        corpus_inputs=_optional(raw, "corpus_inputs", where),
        corpus_read=_optional(raw, "corpus_read", where),
    )


def _optional(raw: Mapping, key: str, where: str) -> dict[str, Any] | None:
    """An optional object (absent in manifests written before it was recorded)."""
    return dict(_get(raw, key, Mapping, where)) if key in raw else None


def verify_shard(
    data_dir: Path, entry: ShardEntry, dtype: str, verify: Literal["none", "size", "sha256"]
) -> None:
    """Check one listed shard against its file; ManifestError naming the shard on any mismatch.

    "none": path safety only; "size": the file exists, has the listed size and its header agrees
    with the listed dtype and counts (reads 28 bytes); "sha256": also hashes the whole file.
    """
    where = f"shard {entry.path!r}"
    full = check_relative(data_dir, entry.path, where)
    if verify == "none":
        return
    if not full.is_file():
        raise ManifestError(f"{where}: missing ({full})")
    size = os.stat(full).st_size
    if size != entry.bytes:
        raise ManifestError(f"{where}: size {size} bytes, manifest says {entry.bytes}")
    try:
        head = read_header(full)
    except ShardError as e:
        raise ManifestError(f"{where}: {e}") from e
    got = (head.dtype.name, head.tokens, head.documents)
    if got != (dtype, entry.tokens, entry.documents):
        raise ManifestError(
            f"{where}: header says dtype/tokens/documents {got}, manifest says "
            f"{(dtype, entry.tokens, entry.documents)}"
        )
    if verify == "sha256" and file_sha256(full) != entry.sha256:
        raise ManifestError(f"{where}: sha256 mismatch (file changed or corrupt)")


def load_manifest(
    data_dir: Path, *, verify: Literal["none", "size", "sha256"] = "sha256"
) -> Manifest:
    """Read and validate ``<data_dir>/manifest.json`` and (per `verify`) every shard it lists."""
    if verify not in ("none", "size", "sha256"):
        raise ValueError(f"verify must be 'none', 'size' or 'sha256', got {verify!r}")
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ManifestError(f"{path}: no manifest (is {data_dir} a tokenized data dir?)") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: not valid JSON: {e}") from e
    manifest = parse_manifest(raw, data_dir, str(path))
    for entry in manifest.shards:
        verify_shard(data_dir, entry, manifest.dtype, verify)
    return manifest

"""Which files a corpus is: inputs parsed, globs expanded (each real file once, no symlink loops),
pins checked, and the fingerprint a tokenized directory records so that a changed corpus is
never reused silently."""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from streamloco.data_pipeline.read_stats import ReadStats, Where
from streamloco.data_pipeline.shards import file_sha256
from streamloco.text.documents import CorpusError

Format = Literal["auto", "jsonl", "text", "parquet"]

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


def fingerprint_inputs(specs: Sequence[CorpusSpec], **options: Any) -> dict[str, Any]:
    """What a tokenized directory was made from: each file read (path as matched, language and
    format of its spec, size, mtime) and the reading `options` (JSON-ready).

    Sizes and mtimes, not content hashes: checking them costs a stat per file, where hashing
    would read the whole corpus again on every rerun; any write changes the mtime. What they
    miss (a rewrite keeping size and mtime) is what ``corpus.pins`` is for.
    """
    files = []
    for spec, path in plan_reads(specs, ReadStats()):
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


def plan_reads(specs: Sequence[CorpusSpec], stats: ReadStats) -> list[tuple[CorpusSpec, Path]]:
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

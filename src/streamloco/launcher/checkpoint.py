"""Training checkpoints on disk: atomic, checksummed, pruned, and loaded without arbitrary pickle.

The driver process writes them (it receives the state from the workers); one process writes to a
given root at a time. Readers in other processes may use `list_checkpoints` and
`load_checkpoint` at any time: neither modifies anything.

Layout on disk::

    root/
      step-00000100/            one complete checkpoint
        state.pt                torch.save of the state (nested dicts/lists of tensors/builtins)
        meta.json               format, step, created, torch_version, state_size, state_sha256,
                                plus the caller's keys (config TOML text, tokenizer hash, ...)
      step-00000200/
      step-00000300.tmp-<pid>-<rand>.new   a checkpoint being built (or left by a crash)
      step-00000200.tmp-<pid>-<rand>.old   the previous step-00000200 while it is being replaced
      step-00000100.tmp-<pid>-<rand>.del   a checkpoint being deleted by pruning

A directory named ``step-NNNNNNNN`` only ever appears by renaming a fully written and fsynced
``.new`` directory into place, so a crash can leave a temporary directory behind (recognisable by
`TMP_MARK` in its name, ignored by readers and removed by the next save) but never a
half-written checkpoint under a final name. Replacing an existing step (a resumed run writing the
same step again) moves the old directory aside as ``.old`` first; if a crash comes between the two
renames, the next `save_checkpoint` or `load_latest` moves it back, so the step never ends up with
neither the old nor the new checkpoint. Pruning renames a directory to ``.del`` before deleting it,
so a crash mid-delete leaves only a temporary directory, not a damaged checkpoint.

Why checksums: the rename makes a checkpoint appear complete or not at all as far as this process
and the filesystem's metadata go, but it cannot protect against what happens underneath or later:
a disk or network filesystem that loses or reorders data on power loss despite fsync, a copy to
another machine that was cut short, bit rot. ``meta.json`` records the size and sha256 of
``state.pt``; a mismatch is detected before unpickling, and `load_latest` then falls back to the
previous checkpoint with a warning instead of resuming from garbage or crashing the run. Pruning
uses the same check: only checkpoints whose hash matches count toward `keep`, so a damaged newest
checkpoint never costs the good one a resume would fall back to.

Why ``weights_only``: ``torch.load`` without it runs the full pickle machinery, so a checkpoint
file (which may come from a shared filesystem or another machine) could execute arbitrary code.
With ``weights_only=True`` only tensors, builtins and containers are reconstructed; anything else
is refused. The checksum does not replace this (whoever can write the file can write meta.json);
it is for accidents, ``weights_only`` is for safety. `save_checkpoint` checks the state against
the same narrow set of types up front, so a checkpoint that could not be loaded back is never
written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import re
import secrets
import shutil
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import torch

from streamloco.atomic import TMP_MARK, atomic_write, atomic_write_bytes

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
STATE_FILE = "state.pt"
META_FILE = "meta.json"
# Keys that save_checkpoint writes into meta.json itself; the caller's meta may not use them.
RESERVED_META_KEYS = frozenset(
    {"format", "step", "created", "torch_version", "state_size", "state_sha256"}
)

_FINAL_RE = re.compile(r"step-(\d+)")
# Temporary directories: "<final name><TMP_MARK><pid>-<random>.<kind>".
_TMP_RE = re.compile(rf"(step-\d+){re.escape(TMP_MARK)}[^/]*\.(new|old|del)")
_HASH_CHUNK = 1 << 22

# The leaf and container types torch.load(weights_only=True) rebuilds and that we allow. bytes
# would load too but is refused on purpose: binary payloads travel as uint8 tensors, so every
# array-like thing in a checkpoint is a tensor (checked, mapped to a device, counted) the same way.
_SCALARS = (int, float, str, bool, type(None))
_TENSORS = (torch.Tensor, torch.nn.Parameter)


class CheckpointError(ValueError):
    """A checkpoint cannot be written or loaded; the message names the path and the reason."""


class CheckpointWarning(UserWarning):
    """`load_latest` skipped a damaged checkpoint and fell back to an older one."""


# ---- writing -----------------------------------------------------------------------------------


def save_checkpoint(
    root: Path, step: int, state: dict, meta: dict | None = None, keep: int = 3
) -> Path:
    """Write `state` and `meta` as ``root/step-{step:08d}`` atomically, then prune; return the path.

    `state` is a dict of nested dicts/lists/tuples of tensors and ints, floats, strings, bools and
    None; anything else (bytes, functions, arbitrary objects) raises `CheckpointError` before
    anything is written. `meta` must be JSON-serialisable and may not use the reserved keys.

    An existing checkpoint for the same step is replaced safely. Afterwards the newest `keep`
    checkpoints up to this step whose state.pt matches its recorded sha256 are kept (this one
    always among them) and older ones deleted, along with temporary directories left by crashed
    writes; a damaged one never counts, so it never costs a good one. Checkpoints with a
    higher step than this one are never touched: whether a run that went back to an earlier step
    should discard them is for the caller to decide.
    """
    root = Path(root)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"checkpoint step must be an int >= 0, got {step!r}")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise CheckpointError(f"keep must be an int >= 1, got {keep!r}")
    # Everything that can be checked without writing is checked first, so bad input never costs
    # a half-built directory, let alone a rename.
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint state must be a dict, got {type(state).__name__}")
    _check_state(state, "state", set())
    user_meta = _check_meta(meta)

    _ensure_root(root)
    _recover_replaced(root)
    final = root / f"step-{step:08d}"
    tmp = root / _tmp_name(final.name, "new")
    tmp.mkdir()
    try:
        size, digest = _write_state(tmp / STATE_FILE, state)
        full_meta = {
            **user_meta,
            "format": FORMAT_VERSION,
            "step": step,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "torch_version": torch.__version__,
            "state_size": size,
            "state_sha256": digest,
        }
        text = json.dumps(full_meta, indent=2, sort_keys=True) + "\n"
        # meta.json last: a .new directory with a meta.json has its state.pt complete too.
        atomic_write_bytes(tmp / META_FILE, text.encode("utf-8"))
        _move_into_place(tmp, final)
    except BaseException:
        # Best effort: if this fails too (or the process dies), the next save removes it.
        _rmtree_quiet(tmp)
        raise
    logger.info("saved checkpoint %s (%d bytes)", final, size)
    _prune(root, step, keep)
    return final


def _check_state(obj: Any, where: str, active: set[int]) -> None:
    """Raise CheckpointError naming the first value weights_only loading could not restore."""
    kind = type(obj)
    if kind in _TENSORS:
        return
    if kind in _SCALARS:
        return
    if kind in (dict, OrderedDict, list, tuple):
        # Only the current path is tracked: shared sub-objects are fine for pickle, cycles are
        # not worth supporting and would otherwise recurse forever.
        if id(obj) in active:
            raise CheckpointError(f"checkpoint state: {where} contains itself (a cycle)")
        active.add(id(obj))
        try:
            if kind in (list, tuple):
                for i, v in enumerate(obj):
                    _check_state(v, f"{where}[{i}]", active)
            else:
                for k, v in obj.items():
                    if type(k) not in _SCALARS:
                        raise CheckpointError(
                            f"checkpoint state: key {k!r} in {where} has unsupported type "
                            f"{type(k).__name__} (keys must be str, int, float, bool or None)"
                        )
                    _check_state(v, f"{where}[{k!r}]", active)
        finally:
            active.discard(id(obj))
        return
    hint = "; store binary data as a uint8 tensor" if kind in (bytes, bytearray) else ""
    raise CheckpointError(
        f"checkpoint state: {where} has unsupported type {kind.__module__}.{kind.__qualname__} "
        f"(allowed: tensors, dict, list, tuple, int, float, str, bool, None{hint})"
    )


def _check_meta(meta: dict | None) -> dict:
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise CheckpointError(f"checkpoint meta must be a dict, got {type(meta).__name__}")
    clash = sorted(str(k) for k in meta if k in RESERVED_META_KEYS)
    if clash:
        raise CheckpointError(f"checkpoint meta: keys {clash} are reserved for save_checkpoint")
    bad = [k for k in meta if not isinstance(k, str)]
    if bad:
        raise CheckpointError(f"checkpoint meta: keys must be strings, got {bad!r}")
    try:
        json.dumps(dict(meta))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint meta is not JSON-serialisable: {e}") from e
    return dict(meta)


class _HashingWriter:
    """A write-only file wrapper that hashes and counts what torch.save writes through it."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.sha256.update(view)
        self.size += view.nbytes
        self._f.write(view)
        return view.nbytes

    def flush(self) -> None:
        self._f.flush()


def _write_state(path: Path, state: dict) -> tuple[int, str]:
    # Hashing the stream as it is written saves reading a possibly many-GB file back.
    result: list[_HashingWriter] = []

    def write(f: BinaryIO) -> None:
        w = _HashingWriter(f)
        torch.save(state, w)
        result.append(w)

    atomic_write(path, write)
    return result[0].size, result[0].sha256.hexdigest()


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename the complete `tmp` to `final`, moving an existing `final` aside first."""
    root = final.parent
    old: Path | None = None
    if final.exists() or final.is_symlink():
        # A directory cannot be renamed over a non-empty one, and deleting the old one first
        # would leave neither if we crashed before the rename. So: old aside (still on disk,
        # restored by _recover_replaced after a crash), new into place, then drop the old.
        old = root / _tmp_name(final.name, "old")
        os.rename(final, old)
        _fsync_dir(root)
    try:
        os.rename(tmp, final)
    except BaseException:
        if old is not None:
            with contextlib.suppress(OSError):
                os.rename(old, final)
        raise
    _fsync_dir(root)
    if old is not None:
        # Already under a temporary name: if this delete is cut short, the next save finishes it.
        _rmtree_quiet(old)


# ---- pruning and cleanup -----------------------------------------------------------------------


def _prune(root: Path, step: int, keep: int) -> None:
    _remove_leftovers(root)
    kept = 0
    for path in reversed(list_checkpoints(root)):
        s = _step_of(path)
        if s > step:
            continue  # newer than what we just wrote: not ours to judge (see save_checkpoint)
        if kept >= keep:
            logger.info("pruning old checkpoint %s", path)
            try:
                _remove(path)
            except OSError as e:  # the new checkpoint is safe; a failed prune must not fail it
                logger.warning("could not prune %s: %s", path, e)
        elif s == step or _verifies(path):
            # The one just written counts unverified: its sha256 was taken from the bytes as
            # they were written, and reading it back now would mostly hit the page cache.
            kept += 1
        # A damaged checkpoint newer than the oldest kept one stays for now (load_latest skips
        # it with a warning); it is pruned once `keep` good ones are newer than it. Walking newest
        # first and pruning as soon as `keep` verified is what makes the newest good checkpoint
        # safe, and hashes nothing older than the oldest one kept.


# sha256 of state.pt files this process has hashed, by path, with the file's identity and stat
# when hashed. Without it every save would re-read all `keep` checkpoints (GBs each); with it each
# is hashed once. A rewrite changes the stat and so misses the cache; damage that leaves the stat
# alone (bit rot underneath the filesystem) goes unseen here, but load_checkpoint always hashes.
_HASHES: dict[str, tuple[tuple[int, ...], str]] = {}


def _verifies(path: Path) -> bool:
    """Would `load_checkpoint` get past its checks (meta.json, size, sha256) for `path`?

    Used to decide what counts toward `keep`; unpickling is not tried (the checksum is for
    accidents; whoever could forge it could also forge a file that unpickles).
    """
    try:
        meta = _read_meta(path)
        with open(path / STATE_FILE, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_size != meta["state_size"]:
                return False
            stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            key = str(path / STATE_FILE)
            cached = _HASHES.get(key)
            if cached is not None and cached[0] == stamp:
                digest = cached[1]
            else:
                digest = _sha256(f)
                _HASHES[key] = (stamp, digest)
    except (CheckpointError, OSError):
        return False
    return digest == meta["state_sha256"]


def _remove_leftovers(root: Path) -> None:
    """Delete temporary directories from crashed or finished writes (never an orphaned .old)."""
    for entry in _entries(root):
        m = _TMP_RE.fullmatch(entry.name)
        if m is None:
            continue
        if m.group(2) == "old" and not (root / m.group(1)).exists():
            continue  # the only copy of that step: _recover_replaced handles it
        logger.info("removing leftover temporary checkpoint directory %s", entry)
        _rmtree_quiet(entry)


def _recover_replaced(root: Path) -> None:
    """Move back a checkpoint that a crash left aside (``.old``) while replacing it."""
    for entry in _entries(root):
        m = _TMP_RE.fullmatch(entry.name)
        if m is None or m.group(2) != "old":
            continue
        final = root / m.group(1)
        if final.exists():
            continue
        try:
            os.rename(entry, final)
        except OSError as e:  # e.g. another process restored it first
            logger.warning("could not restore %s to %s: %s", entry, final, e)
            continue
        _fsync_dir(root)
        logger.warning("restored checkpoint %s, left aside by an interrupted replace", final)


def _remove(path: Path) -> None:
    # Rename first, so a crash during the (non-atomic) delete leaves a temporary directory
    # rather than a damaged directory under a checkpoint's name.
    m = _FINAL_RE.fullmatch(path.name)
    doomed = path.parent / _tmp_name(m.group(0) if m else path.name, "del")
    os.rename(path, doomed)
    _HASHES.pop(str(path / STATE_FILE), None)
    _fsync_dir(path.parent)
    _rmtree_quiet(doomed)


def _rmtree_quiet(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass
    except OSError as e:
        logger.warning("could not delete %s: %s", path, e)


def _tmp_name(final_name: str, kind: str) -> str:
    # The pid says who made it (as in streamloco.atomic); the random part keeps a stale
    # directory from a crashed process with the same pid (containers reuse pids) out of the way.
    return f"{final_name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}.{kind}"


def _ensure_root(root: Path) -> None:
    if root.is_dir():
        return
    root.mkdir(parents=True, exist_ok=True)
    _fsync_dir(root.parent)


def _fsync_dir(path: Path) -> None:
    # Makes renames and deletions in `path` durable; streamloco.atomic does the same for files.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- reading -----------------------------------------------------------------------------------


def _entries(root: Path) -> list[Path]:
    try:
        return list(Path(root).iterdir())
    except FileNotFoundError:
        return []


def _step_of(path: Path) -> int:
    m = _FINAL_RE.fullmatch(path.name)
    assert m is not None
    return int(m.group(1))


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint directories under `root`, by step ascending. Read-only.

    Temporary directories and unrelated entries are ignored. A listed directory was complete
    when it was renamed into place; whether it is still intact is what `load_checkpoint` checks.
    """
    found = [p for p in _entries(root) if _FINAL_RE.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=_step_of)


def load_checkpoint(path: Path, map_location: Any = "cpu") -> tuple[dict, dict]:
    """Verify and load one checkpoint directory; return ``(state, meta)``.

    Raises `CheckpointError` naming `path` and the reason if meta.json is missing or invalid,
    state.pt's size or sha256 differ from meta.json, or ``torch.load(weights_only=True)`` refuses
    or fails on it. A refusal names what the file needed (e.g. global 'posix.system'); torch's
    advice to retry without weights_only is dropped, from the message and the exception chain.
    """
    path = Path(path)

    def fail(reason: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path}: {reason}")

    meta = _read_meta(path)
    state_path = path / STATE_FILE
    try:
        # One open file for hashing and loading: even if the directory were replaced meanwhile,
        # what is loaded is exactly what was hashed.
        with open(state_path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size != meta["state_size"]:
                raise fail(
                    f"{STATE_FILE}: size {size} != {meta['state_size']} recorded in meta.json"
                )
            digest = _sha256(f)
            if digest != meta["state_sha256"]:
                raise fail(
                    f"{STATE_FILE}: sha256 mismatch ({digest} != "
                    f"{meta['state_sha256']} recorded in meta.json)"
                )
            f.seek(0)
            try:
                state = torch.load(f, map_location=map_location, weights_only=True)
            except pickle.UnpicklingError as e:
                # `from None`: torch's own message, chained, would print its advice to load with
                # weights_only=False in the traceback; the reason is in ours.
                raise fail(f"{STATE_FILE}: refused to unpickle: {_unpickle_reason(e)}") from None
            except Exception as e:
                # Some of these carry the same advice (a TorchScript or legacy .tar file).
                raise fail(f"{STATE_FILE}: torch.load failed: {_without_advice(e)}") from None
    except FileNotFoundError as e:
        raise fail(f"{STATE_FILE} is missing") from e
    except OSError as e:
        raise fail(f"cannot read {state_path}: {e}") from e
    if not isinstance(state, dict):
        raise fail(f"{STATE_FILE} holds a {type(state).__name__}, not a dict")
    return state, meta


def _sha256(f: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := f.read(_HASH_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _read_meta(path: Path) -> dict:
    """meta.json of checkpoint directory `path`, checked; CheckpointError naming what is wrong."""

    def fail(reason: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path}: {reason}")

    if not path.is_dir():
        raise fail("not a directory")
    meta_path = path / META_FILE
    try:
        text = meta_path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise fail(f"{META_FILE} is missing") from e
    except (OSError, UnicodeDecodeError) as e:
        raise fail(f"cannot read {meta_path}: {e}") from e
    try:
        meta = json.loads(text)
    except ValueError as e:
        raise fail(f"{meta_path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise fail(f"{meta_path} holds a {type(meta).__name__}, not an object")
    fmt = meta.get("format")
    if fmt != FORMAT_VERSION:
        raise fail(f"{META_FILE} has format {fmt!r}; this code reads format {FORMAT_VERSION}")
    for key, kind in (("step", int), ("state_size", int), ("state_sha256", str)):
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise fail(f"{META_FILE}: {key!r} is missing or not {kind.__name__}")
    m = _FINAL_RE.fullmatch(path.name)
    if m is not None and int(m.group(1)) != meta["step"]:
        # A directory renamed or copied by hand to the wrong step would resume at the wrong place.
        raise fail(f"step {meta['step']} in {META_FILE} != {int(m.group(1))} in the directory name")
    return meta


# What torch's weights_only unpickler refused, as torch 2.x words it. The message wraps this in
# advice to retry with weights_only=False (or to allow-list the global): advice that must never
# reach someone looking at a checkpoint that may be hostile. So the reason is rebuilt from these.
_REFUSED = (
    (re.compile(r"GLOBAL (\S+) (?:was not an allowed global|whose module)"), "needs global '{}'"),
    (
        re.compile(r"call reduce for unrecognized function (.+?)(?: which belongs to |$)", re.M),
        "needs to call {}",
    ),
    (re.compile(r"create new object .* but got (.+)$", re.M), "needs to construct {}"),
)
# Sentences of torch's message that advise on turning the check off or point to its docs.
_ADVICE = re.compile(
    r"weights.only|safe_globals|trusted source|arbitrary code|file an issue|documentation|https?:",
    re.I,
)


def _unpickle_reason(e: BaseException) -> str:
    text = str(e)
    for pattern, needs in _REFUSED:
        m = pattern.search(text)
        if m is not None:
            return (
                f"the checkpoint {needs.format(m.group(1))}, which safe loading does not allow "
                "(save_checkpoint never writes such a file)"
            )
    return _without_advice(e)


def _without_advice(e: BaseException) -> str:
    """torch's message with the sentences that advise turning safe loading off removed."""
    text = re.sub(r"Cannot use `*weights_only=True`* with", "safe loading cannot read", str(e))
    sentences = re.split(r"(?<=\.)\s+|\n+", text.replace("``", ""))
    kept = [x.strip() for x in sentences if x.strip() and not _ADVICE.search(x)]
    return " ".join(kept).rstrip(".") or f"{type(e).__name__} (safe loading refused it)"


def load_latest(root: Path, map_location: Any = "cpu") -> tuple[Path, dict, dict] | None:
    """Load the newest loadable checkpoint under `root`: ``(path, state, meta)``, or None if none.

    A damaged checkpoint is skipped with a `CheckpointWarning` (and nothing else, so it is
    printed once) naming it and the reason, and the previous one is tried. If checkpoints exist
    but none loads, raise `CheckpointError` listing each with its reason. Meant for the run that
    owns `root` when it resumes: it first moves back a checkpoint that a crash left aside
    mid-replace.
    """
    root = Path(root)
    if root.is_dir():
        _recover_replaced(root)
    failures: list[str] = []
    for path in reversed(list_checkpoints(root)):
        try:
            state, meta = load_checkpoint(path, map_location)
        except CheckpointError as e:
            # One channel only: a logger.warning as well printed every skip twice (with no
            # handler configured, as in the CLI, logging's last resort writes to stderr too).
            # Whoever wants it in the logs can route warnings there (logging.captureWarnings).
            # `e` already reads "checkpoint <path>: <reason>".
            warnings.warn(f"skipping damaged {e}", CheckpointWarning, stacklevel=2)
            failures.append(str(e))
            continue
        return path, state, meta
    if not failures:
        return None
    listing = "\n".join(f"  {f}" for f in failures)
    raise CheckpointError(
        f"no loadable checkpoint in {root}; all {len(failures)} failed:\n{listing}"
    )

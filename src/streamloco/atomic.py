"""Write files so that a path holds either its old content or the complete new one, never half.

Every artifact a crash could leave behind (shards, manifests, tokenizer models and sidecars, the
demo corpus) goes through here: a temporary name in the same directory, fsync, rename, and an
fsync of the directory so the rename itself survives a crash.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TMP_MARK = ".tmp-"  # temporary files are "<final name>.tmp-<pid>"


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(f)` on a temporary file next to `path`, fsync it, then rename it to `path`.

    The temporary name is ``<name>.tmp-<pid>`` (the same directory, so the rename is atomic);
    on any error it is removed. The directory is fsynced too so the rename survives a crash.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(Path(path), lambda f: f.write(data))

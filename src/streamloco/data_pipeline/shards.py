"""Token shards: a small checksummed header followed by one zstd frame of little-endian tokens.

Layout (all integers little-endian)::

    offset size field
         0    4 magic          b"SLTK"
         4    1 version        1
         5    1 dtype code     1 = uint16, 2 = uint32
         6    2 reserved       0
         8    8 token count    number of tokens in the body
        16    8 document count documents in the body (each one ends with the eos token)
        24    4 header crc32   zlib.crc32 of bytes 0..23
        28    . body           one zstd frame (content size and xxhash checksum on) holding
                               token_count * itemsize bytes

The header is uncompressed so that a shard can be inspected (and a manifest checked against it)
without decompressing anything; its crc catches a damaged header, zstd's frame checksum catches a
damaged body, and the manifest's sha256 catches everything else (a swapped or stale file).
Files are written under a temporary name in the same directory, fsynced and renamed, so a
crash never leaves a file under the final name that is not complete.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import zstandard

from streamloco.atomic import atomic_write

MAGIC = b"SLTK"
VERSION = 1
DTYPE_CODES: dict[int, np.dtype] = {1: np.dtype("<u2"), 2: np.dtype("<u4")}
DTYPE_NAMES = {1: "uint16", 2: "uint32"}
_HEAD = struct.Struct("<4sBBHQQ")  # everything the crc covers
_CRC = struct.Struct("<I")
HEADER_SIZE = _HEAD.size + _CRC.size  # 28


class ShardError(ValueError):
    """A shard that cannot be read or does not match what it claims; the message names it."""


@dataclass(frozen=True)
class ShardHeader:
    dtype: np.dtype  # little-endian uint16 or uint32
    tokens: int
    documents: int


@dataclass(frozen=True)
class ShardInfo:
    """What a writer reports about a finished shard (the manifest stores these fields)."""

    path: Path
    sha256: str  # of the whole file, header included
    tokens: int
    documents: int
    bytes: int  # file size


def dtype_code(dtype: np.dtype | str) -> int:
    """Header code of a token dtype (uint16 -> 1, uint32 -> 2); ValueError for anything else."""
    dt = np.dtype(dtype).newbyteorder("<")
    for code, known in DTYPE_CODES.items():
        if dt == known:
            return code
    raise ValueError(f"token dtype must be uint16 or uint32, got {np.dtype(dtype)}")


def pack_header(dtype: np.dtype | str, tokens: int, documents: int) -> bytes:
    head = _HEAD.pack(MAGIC, VERSION, dtype_code(dtype), 0, tokens, documents)
    return head + _CRC.pack(zlib.crc32(head))


def _parse_header(raw: bytes, path: Path) -> ShardHeader:
    if len(raw) < HEADER_SIZE:
        raise ShardError(f"{path}: truncated header ({len(raw)} of {HEADER_SIZE} bytes)")
    magic, version, code, _reserved, tokens, documents = _HEAD.unpack_from(raw)
    if magic != MAGIC:
        raise ShardError(f"{path}: not a token shard (magic {magic!r}, expected {MAGIC!r})")
    (crc,) = _CRC.unpack_from(raw, _HEAD.size)
    if crc != zlib.crc32(raw[: _HEAD.size]):
        raise ShardError(f"{path}: header checksum mismatch (damaged header)")
    if version != VERSION:
        raise ShardError(f"{path}: unsupported shard version {version} (this reader: {VERSION})")
    if code not in DTYPE_CODES:
        raise ShardError(f"{path}: unknown dtype code {code}")
    return ShardHeader(DTYPE_CODES[code], tokens, documents)


def read_header(path: Path) -> ShardHeader:
    """Parse and check the header only (no decompression)."""
    path = Path(path)
    with open(path, "rb") as f:
        return _parse_header(f.read(HEADER_SIZE), path)


class _HashingWriter:
    """File wrapper that feeds everything written through sha256 (hash while writing, not after)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(memoryview(data))
        return self.f.write(data)


def write_shard(path: Path, tokens: np.ndarray, documents: int, level: int = 3) -> ShardInfo:
    """Write `tokens` (1-D uint16 or uint32) as a shard at `path`, atomically."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"{path}: tokens must be 1-D, got shape {tokens.shape}")
    if documents < 0:
        raise ValueError(f"{path}: negative document count {documents}")
    le = np.ascontiguousarray(tokens, dtype=tokens.dtype.newbyteorder("<"))
    header = pack_header(le.dtype, le.size, documents)
    cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
    out: dict[str, object] = {}

    def write(f: BinaryIO) -> None:
        w = _HashingWriter(f)
        w.write(header)
        w.write(cctx.compress(le.data))
        out["sha"], out["size"] = w.sha.hexdigest(), w.size

    atomic_write(Path(path), write)
    return ShardInfo(Path(path), str(out["sha"]), int(le.size), documents, int(out["size"]))


def iter_shard_chunks(path: Path, chunk_tokens: int = 1 << 20) -> Iterator[np.ndarray]:
    """Yield the shard's tokens in order, `chunk_tokens` at a time (the last chunk may be shorter).

    Memory stays bounded by one chunk whatever the shard size: the body is decompressed as a
    stream. Truncation, a damaged body or trailing bytes raise ShardError naming the shard.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    path = Path(path)
    with open(path, "rb") as f:
        head = _parse_header(f.read(HEADER_SIZE), path)
        item = head.dtype.itemsize
        remaining = head.tokens * item
        reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=False)
        try:
            while remaining:
                buf = _read_exact(reader, min(remaining, chunk_tokens * item), path)
                remaining -= len(buf)
                yield np.frombuffer(buf, dtype=head.dtype)
            # one more read makes zstd reach the frame end and verify its content checksum
            if _read_exact(reader, 1, path, allow_short=True):
                raise ShardError(f"{path}: body holds more than the {head.tokens} tokens declared")
        except zstandard.ZstdError as e:
            raise ShardError(f"{path}: corrupt body: {e}") from e
        finally:
            reader.close()


def _read_exact(reader, n: int, path: Path, allow_short: bool = False) -> bytes:
    parts, got = [], 0
    while got < n:
        b = reader.read(n - got)
        if not b:
            if allow_short:
                break
            raise ShardError(f"{path}: truncated body (zstd stream ended early)")
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def read_shard(path: Path) -> np.ndarray:
    """The whole shard as one array (for tests and small shards; the loader streams)."""
    path = Path(path)
    head = read_header(path)
    chunks = list(iter_shard_chunks(path, chunk_tokens=max(head.tokens, 1)))
    return chunks[0] if len(chunks) == 1 else np.zeros(0, dtype=head.dtype)


def file_sha256(path: Path, block: int = 1 << 20) -> str:
    """sha256 of a file, read in blocks."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(block):
            sha.update(b)
    return sha.hexdigest()

"""The self-describing payload envelope shared by every codec: header, checksum, zstd stage.

The byte layout is specified in the docstring of `streamloco.outer_optim.codecs`; this module
builds and checks the envelope, the codecs only produce and consume the raw body. Everything a
received header says is validated before it is used: a payload from a buggy or hostile peer must end
in `CodecError`, never in an `IndexError`, a `struct.error` or a huge allocation.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import torch
import zstandard

from streamloco.outer_optim.names import (  # noqa: F401 (re-exported: codecs import them here)
    BLOCKED_CODECS,
    CODEC_IDS,
    CODEC_NAMES,
    MAX_SPARSE_CHUNK,
    NIBBLE_CODECS,
)

MAGIC = b"SLQC"
FORMAT_VERSION = 1
MAX_NDIM = 8
FLAG_ZSTD = 0x01
MAX_BLOCK_SIZE = 2**32 - 1  # block_size is a u32 on the wire
# Default cap on the element count a header may claim. Only zstd bodies need it (a raw body must be
# as long as the shape says, so it cannot claim more than it carries); callers that know the
# fragment size should pass `max_numel=` to the decoders for a tight bound.
DEFAULT_MAX_NUMEL = 2**32

DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 1,
    torch.bfloat16: 2,
    torch.float16: 3,
    torch.float64: 4,
}
_ID_TO_CODEC = {v: k for k, v in CODEC_IDS.items()}
_CODE_TO_DTYPE = {v: k for k, v in DTYPE_CODES.items()}

# magic, version, codec id, flags, dtype code, block_size, ndim
_PREFIX = struct.Struct("<4sBBBBIB")
# body_len, crc32
_TRAILER = struct.Struct("<QI")


class CodecError(ValueError):
    """A payload is malformed, truncated, corrupted, or was made by a different codec."""


@dataclass(frozen=True)
class Header:
    """The decoded header of a payload (see `peek_header`)."""

    version: int
    codec: str
    zstd: bool  # body stored zstd-compressed
    dtype: torch.dtype  # dtype of the tensor given to encode(); decode always returns fp32
    block_size: int  # 0 for the unblocked codecs fp32 and bf16
    shape: tuple[int, ...]
    body_len: int  # body bytes as stored (after zstd when `zstd`)

    @property
    def numel(self) -> int:
        """Number of elements of the encoded tensor."""
        return math.prod(self.shape)

    @property
    def header_size(self) -> int:
        """Bytes of the header, i.e. the offset of the body in the payload."""
        return header_size(len(self.shape))


def header_size(ndim: int) -> int:
    """Header bytes for a tensor of `ndim` dimensions: 25 + 8 * ndim."""
    return _PREFIX.size + 8 * ndim + _TRAILER.size


def ceil_div(a: int, b: int) -> int:
    """ceil(a / b) for non-negative ints."""
    return -(-a // b)


def sparse_params(block_size: int) -> tuple[int, int]:
    """(chunk size C, values kept per chunk k) from the sparse codec's block_size field."""
    return block_size & 0xFFFF, block_size >> 16


def sparse_layout(numel: int, chunk: int, k: int) -> tuple[int, int, int, int]:
    """(chunks nc, kept values K, Rice parameter r, unary stream bits U) of a sparse body.

    Chunk j holds L_j = min(C, n - jC) elements and keeps k_j = min(k, L_j). Its gaps sum to at
    most L_j - k_j, so their Rice quotients sum to at most (L_j - k_j) >> r: U is the worst case,
    which makes the body size a function of the shape alone.
    """
    nc = ceil_div(numel, chunk)
    r = (chunk // k).bit_length() - 1  # floor(log2(C / k)): the gaps average about C/k - 1
    full, last = divmod(numel, chunk)
    kept = full * k + min(k, last)
    unary = kept + full * ((chunk - k) >> r) + (max(last - k, 0) >> r)
    return nc, kept, r, unary


def body_size(codec: str, numel: int, block_size: int) -> int:
    """Raw (uncompressed) body bytes of `codec` for `numel` elements (see the size formulas)."""
    if codec == "sparse":
        nc, kept, r, unary = sparse_layout(numel, *sparse_params(block_size))
        return 8 * nc + ceil_div(2 * kept, 8) + ceil_div(kept * r, 8) + ceil_div(unary, 8)
    if codec == "fp32":
        return 4 * numel
    if codec == "bf16":
        return 2 * numel
    scales = 4 * ceil_div(numel, block_size)
    if codec == "int8":
        return scales + numel
    return scales + ceil_div(numel, 2)  # int4 / e3m0: two 4-bit codes per byte


def seal(
    codec: str,
    dtype: torch.dtype,
    block_size: int,
    shape: tuple[int, ...],
    body: memoryview,
    zstd_level: int,
) -> bytes:
    """Wrap a raw body into a payload: header, CRC32, optional zstd stage.

    The zstd stage is kept only when it makes the body strictly smaller, so a payload is never
    larger than its uncompressed size (what `Codec.payload_size` reports).
    """
    flags = 0
    stored = body
    if zstd_level > 0 and body.nbytes > 0:
        packed = zstandard.ZstdCompressor(level=zstd_level).compress(body)
        if len(packed) < body.nbytes:
            stored, flags = memoryview(packed), FLAG_ZSTD
    prefix = b"".join(
        (
            _PREFIX.pack(
                MAGIC,
                FORMAT_VERSION,
                CODEC_IDS[codec],
                flags,
                DTYPE_CODES[dtype],
                block_size,
                len(shape),
            ),
            struct.pack(f"<{len(shape)}Q", *shape),
            struct.pack("<Q", stored.nbytes),
        )
    )
    crc = zlib.crc32(stored, zlib.crc32(prefix))
    return b"".join((prefix, struct.pack("<I", crc), stored))


def as_byte_view(payload: bytes | bytearray | memoryview) -> memoryview:
    """A flat unsigned-byte view of `payload` without copying."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"payload: expected bytes, bytearray or memoryview, got {type(payload)}")
    view = memoryview(payload)
    if not view.c_contiguous:
        raise TypeError("payload: memoryview must be C-contiguous")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def parse_header(view: memoryview, max_numel: int = DEFAULT_MAX_NUMEL) -> tuple[Header, int]:
    """Validate and decode the header fields; returns (header, stored crc32).

    Checks only what the header itself says (not the body length, CRC or body), so it also works
    on a payload prefix that holds the whole header.
    """
    total = len(view)
    if total < header_size(0):
        raise CodecError(
            f"truncated payload: {total} bytes, a header needs at least {header_size(0)}"
        )
    magic, version, codec_id, flags, dtype_code, block_size, ndim = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise CodecError(f"magic: expected {MAGIC!r}, found {bytes(magic)!r} (not a codec payload)")
    if version != FORMAT_VERSION:
        raise CodecError(
            f"version: unsupported format version {version} (this build reads {FORMAT_VERSION})"
        )
    codec = _ID_TO_CODEC.get(codec_id)
    if codec is None:
        known = ", ".join(f"{v}={k}" for k, v in CODEC_IDS.items())
        raise CodecError(f"codec_id: unknown codec id {codec_id} (known: {known})")
    if flags & ~FLAG_ZSTD:
        raise CodecError(f"flags: unknown flag bits {flags & ~FLAG_ZSTD:#04x} set (bit 0 = zstd)")
    dtype = _CODE_TO_DTYPE.get(dtype_code)
    if dtype is None:
        raise CodecError(f"dtype_code: unknown original dtype code {dtype_code} (known: 1..4)")
    if ndim > MAX_NDIM:
        raise CodecError(f"ndim: {ndim} exceeds the limit of {MAX_NDIM}")
    size = header_size(ndim)
    if total < size:
        raise CodecError(
            f"truncated payload: {total} bytes, a header with ndim={ndim} needs {size}"
        )
    shape = struct.unpack_from(f"<{ndim}Q", view, _PREFIX.size)
    if any(d > max_numel for d in shape) or math.prod(shape) > max_numel:
        raise CodecError(f"shape: {shape} holds more than max_numel={max_numel} elements")
    _check_block_size(codec, block_size)
    body_len, crc = _TRAILER.unpack_from(view, size - _TRAILER.size)
    header = Header(
        FORMAT_VERSION, codec, bool(flags & FLAG_ZSTD), dtype, block_size, shape, body_len
    )
    return header, crc


def _check_block_size(codec: str, block_size: int) -> None:
    if codec not in BLOCKED_CODECS:
        if block_size != 0:
            raise CodecError(f"block_size: must be 0 for codec {codec}, found {block_size}")
    elif codec == "sparse":
        chunk, k = sparse_params(block_size)
        if not 1 <= k <= chunk:
            raise CodecError(
                f"block_size: sparse chunk {chunk}, k {k}: need 1 <= k <= chunk (field "
                f"{block_size:#010x})"
            )
    elif block_size < 1:
        raise CodecError(f"block_size: must be >= 1 for codec {codec}, found {block_size}")
    elif codec in NIBBLE_CODECS and block_size % 2:
        raise CodecError(f"block_size: codec {codec} needs an even block size, found {block_size}")


def open_payload(
    payload: bytes | bytearray | memoryview, max_numel: int = DEFAULT_MAX_NUMEL
) -> tuple[Header, memoryview | bytes]:
    """Validate a whole payload and return (header, raw body), the body decompressed if needed.

    Order: header fields, body length against the bytes present (truncation, trailing bytes),
    raw body length for the codec and shape, CRC32, then the zstd frame's declared content size
    before anything is decompressed (so a small frame cannot expand into a huge allocation).
    """
    view = as_byte_view(payload)
    header, stored_crc = parse_header(view, max_numel)
    start = header.header_size
    present = len(view) - start
    if header.body_len != present:
        why = "truncated payload" if present < header.body_len else "trailing bytes after the body"
        raise CodecError(
            f"body_len: header says {header.body_len} body bytes but {present} follow ({why})"
        )
    expected = body_size(header.codec, header.numel, header.block_size)
    if not header.zstd and header.body_len != expected:
        raise CodecError(
            f"body_len: {header.body_len} bytes, but codec {header.codec} with block_size "
            f"{header.block_size} needs {expected} for shape {header.shape}"
        )
    body = view[start:]
    crc = zlib.crc32(body, zlib.crc32(view[: start - 4]))
    if crc != stored_crc:
        raise CodecError(
            f"crc32: stored {stored_crc:#010x}, computed {crc:#010x} (payload corrupted)"
        )
    if not header.zstd:
        return header, body
    return header, _unzstd(body, expected)


def _unzstd(body: memoryview, expected: int) -> bytes:
    try:
        declared = zstandard.get_frame_parameters(body).content_size
    except zstandard.ZstdError as err:
        raise CodecError(f"body: not a valid zstd frame ({err})") from err
    if declared != expected:
        # also catches CONTENTSIZE_UNKNOWN: our encoder always records the size
        raise CodecError(f"body: zstd frame declares {declared} bytes, the codec needs {expected}")
    try:
        raw = zstandard.ZstdDecompressor().decompress(
            body, max_output_size=expected, allow_extra_data=False
        )
    except zstandard.ZstdError as err:
        raise CodecError(f"body: zstd decompression failed ({err})") from err
    if len(raw) != expected:
        raise CodecError(f"body: zstd frame expanded to {len(raw)} bytes, expected {expected}")
    return raw

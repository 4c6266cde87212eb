"""Wire codecs for pseudo-gradients: fp32, bf16, int8, int4 and e3m0 (the paper's 4-bit float);
the sparse top-k codec (codec id 6) lives in sparse.py and shares this envelope.

A codec turns a floating tensor (fp32/bf16/fp16/fp64, any shape, 0-d and empty included, CPU or
CUDA) into a self-describing `bytes` payload and back into a new fp32 CPU tensor of the same shape.
All quantization math runs in fp32 on the tensor's device with vectorized torch ops; only the
finished body moves to the CPU. Encoding is deterministic: the same tensor gives the same bytes
(independent of the torch thread count; the zstd stage is single-threaded).

API
    make_codec(name, block_size=256, zstd_level=0) -> Codec     name in CODEC_NAMES
    Codec.encode(x) -> bytes
    Codec.decode(payload, *, max_numel=DEFAULT_MAX_NUMEL) -> Tensor   rejects foreign payloads
    Codec.payload_size(shape) -> int
    Codec.error_bound(x) -> Tensor
    decode_any(payload, *, max_numel=...) -> Tensor                    codec read from the header
    peek_header(payload, *, max_numel=...) -> Header                  header fields only

Payload layout (all integers little-endian; n = numel, B = block_size, nb = ceil(n / B))

    offset     size     field
    0          4        magic b"SLQC"
    4          1        format version (1)
    5          1        codec id: 1 fp32, 2 bf16, 3 int8, 4 int4, 5 e3m0
    6          1        flags: bit 0 = body is one zstd frame; other bits must be 0
    7          1        original dtype: 1 float32, 2 bfloat16, 3 float16, 4 float64
    8          4        block_size u32 (0 for fp32/bf16; >= 1 otherwise, even for int4/e3m0)
    12         1        ndim (<= 8)
    13         8*ndim   dims, u64 each
    13+8*ndim  8        body_len u64: body bytes as stored (after zstd when flag bit 0)
    21+8*ndim  4        crc32 (zlib.crc32) of header bytes [0, 21+8*ndim) followed by the body
    25+8*ndim  body_len body

header_bytes(ndim) = 25 + 8 * ndim. The CRC covers the header too, so any flipped bit is caught
even where it would turn one valid header into another. Raw body (before the optional zstd stage),
x flattened in C order; scales are fp32, codes of a 4-bit codec are packed two per byte, element
2i in the low nibble and 2i+1 in the high nibble; when n is odd the last high nibble holds the
code of 0.0 (int4: 0x8, e3m0: 0x0):

    fp32   4n                       x exactly
    bf16   2n                       x rounded to bfloat16 (nearest even)
    int8   4*nb + n                 scale = absmax/127; code = round(x/scale) in [-127, 127]
    int4   4*nb + ceil(n/2)         scale = absmax/7;   code = round(x/scale) in [-7, 7], stored +8
    e3m0   4*nb + ceil(n/2)         scale = absmax; code = sign bit (bit 3) | exponent e (bits 0-2):
                                    e = 0 is zero, e in 1..7 is +-scale * 2^(e-7)

absmax is per block of B consecutive elements (the last block may be shorter); rounding is to
nearest, ties to even. Blocks with absmax < 2^-96 (including all-zero blocks) get scale 0 and
decode to exact zeros. Where qmax * scale would overflow fp32 (absmax near 3.4e38) the scale is
one ulp smaller, so every decoded value is finite. e3m0 rounds to
the nearest level in the linear domain: |x|/scale >= 2^-7 goes to the nearest of 2^-6..2^0 (up at
the midpoint 1.5*2^k), anything smaller to zero. A decoder rejects codes no encoder emits (int8
-128, int4 nibble 0x0, e3m0 nibble 0x8 = "negative zero"), negative or non-finite scales, and
decoded values that are not finite.

payload_size(shape) = header_bytes(ndim) + raw body. The zstd stage (zstd_level 1..22) compresses
the raw body and is kept only when it is strictly smaller, so with zstd payload_size is an upper
bound (what bandwidth planning needs) and the exact size without it. The zstd frame must declare
its content size; decoders check it equals the raw body size before decompressing.

Error bounds, elementwise, for x rounded to fp32 (`error_bound` returns these):
    fp32  0
    bf16  max(2^-8 |x|, 2^-126)           (values below 2^-126 may be flushed by the hardware)
    int8  absmax/254 * (1 + 2^-12)        scale/2
    int4  absmax/14  * (1 + 2^-12)        scale/2
    e3m0  max(|x|/3, absmax/128) * (1 + 2^-12)
    flushed blocks (absmax < 2^-96): absmax
e3m0 derivation, in units of absmax (y = |x|/absmax): for y in [2^k, 2^(k+1)], k = -6..-1, the
error is y - 2^k up to the midpoint 1.5*2^k and 2^(k+1) - y after it; relative to y both are
largest at the midpoint, where they equal 0.5*2^k = y/3. For y in [2^-7, 2^-6) the value rounds up
to 2^-6 (error <= 2^-7), below 2^-7 it becomes 0 (error y < 2^-7). Hence max(y/3, 2^-7). The
factor 1 + 2^-12 absorbs fp32 rounding of the scale, of x/scale and of code*scale (a few ulps).

Non-finite input (NaN/Inf, or a value beyond the bf16 range for bf16) makes encode raise
ValueError("... non-finite values in tensor ...") so the caller can leave that contribution out.
Every malformed, truncated, corrupted or foreign payload raises CodecError (a ValueError) naming
the offending field. A header may claim at most `max_numel` elements (default DEFAULT_MAX_NUMEL =
2^32); only a zstd body can claim more than it carries, so a caller that knows the expected size
should pass it to bound what a hostile payload can make the decoder allocate. The body bytes are
in native byte order, i.e. little-endian on every platform torch supports in practice.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch

from streamloco.outer_optim.options import OptionError
from streamloco.outer_optim.wire import (
    BLOCKED_CODECS,
    CODEC_NAMES,
    DEFAULT_MAX_NUMEL,
    DTYPE_CODES,
    MAX_BLOCK_SIZE,
    MAX_NDIM,
    NIBBLE_CODECS,
    CodecError,
    Header,
    as_byte_view,
    body_size,
    ceil_div,
    header_size,
    open_payload,
    parse_header,
    seal,
)

__all__ = [
    "CODEC_NAMES",
    "DEFAULT_MAX_NUMEL",
    "Codec",
    "CodecError",
    "Header",
    "decode_any",
    "header_size",
    "make_codec",
    "peek_header",
]

FLUSH_BELOW = 2.0**-96  # blocks under this absmax decode to zero: keeps scales and 1/scale normal
_SLACK = 1.0 + 2.0**-12
_BF16_FLOOR = 2.0**-126
# Elements per chunk of the blocked loops: a few MiB of fp32 temporaries stay in cache on CPU;
# on an accelerator bigger chunks amortize launches and host syncs.
_CHUNK_CPU = 1 << 20
_CHUNK_DEVICE = 1 << 24


def _chunk_elems(device: torch.device) -> int:
    return _CHUNK_CPU if device.type == "cpu" else _CHUNK_DEVICE


def _non_finite(what: str) -> ValueError:
    return ValueError(f"x: non-finite values in tensor ({what}); exclude this contribution")


def _all_finite(t: torch.Tensor) -> bool:
    """No NaN or Inf in `t` (two reductions via aminmax, no boolean temporary of t's size)."""
    if not t.numel():
        return True
    lo, hi = torch.aminmax(t)
    return math.isfinite(lo.item()) and math.isfinite(hi.item())


def _check_decoded(out: torch.Tensor, offset: int) -> None:
    """Raise CodecError unless the decoded chunk `out` (starting at element `offset`) is finite."""
    if not _all_finite(out):
        raise CodecError(
            f"body: decoded values near element {offset} are not finite "
            "(invalid code, or a scale/value no encoder emits)"
        )


class Codec:
    """Base class: the envelope (header, CRC, zstd), validation and the public API.

    Subclasses implement `_encode_body` (flat tensor -> raw body, uint8) and `_decode_body`
    (raw body -> flat fp32 CPU tensor) and `_bound` (flat fp32 -> elementwise error bound).
    """

    name: ClassVar[str]

    rounding: str = "nearest"  # "stochastic": see E3M0Codec (an encoder choice, not on the wire)

    def __init__(self, block_size: int = 256, zstd_level: int = 0) -> None:
        if isinstance(block_size, bool) or not isinstance(block_size, int):
            raise OptionError("block_size", f"expected an int, got {block_size!r}")
        if not 1 <= block_size <= MAX_BLOCK_SIZE:
            raise OptionError("block_size", f"must be in 1..{MAX_BLOCK_SIZE}, got {block_size}")
        if self.name in NIBBLE_CODECS and block_size % 2:
            raise OptionError(
                "block_size",
                f"codec {self.name} packs two codes per byte and needs an even "
                f"block size, got {block_size}",
            )
        if isinstance(zstd_level, bool) or not isinstance(zstd_level, int):
            raise OptionError("zstd_level", f"expected an int, got {zstd_level!r}")
        if not 0 <= zstd_level <= 22:
            raise OptionError("zstd_level", f"must be in 0..22 (0 = no zstd), got {zstd_level}")
        self.block_size = block_size
        self.zstd_level = zstd_level

    def __repr__(self) -> str:
        return f"{type(self).__name__}(block_size={self.block_size}, zstd_level={self.zstd_level})"

    @property
    def wire_block_size(self) -> int:
        """block_size as written in the header: 0 for codecs that have no blocks."""
        return self.block_size if self.name in BLOCKED_CODECS else 0

    def encode(self, x: torch.Tensor, *, seed: int = 0) -> bytes:
        """Encode `x` into a payload; ValueError for unsupported dtypes or non-finite values.

        `seed` drives stochastic rounding (ignored otherwise): the same x and seed give the
        same bytes, so a resumed run sends what the uninterrupted one did."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x)}")
        if x.dtype not in DTYPE_CODES:
            raise ValueError(
                f"x: dtype {x.dtype} not supported (float32, bfloat16, float16, float64)"
            )
        if x.dim() > MAX_NDIM:
            raise ValueError(f"x: {x.dim()} dimensions, the format allows at most {MAX_NDIM}")
        flat = x.detach().reshape(-1)  # a view when x is contiguous
        if flat.dtype == torch.float64:
            flat = flat.float()  # the math is fp32; error bounds refer to x rounded to fp32
        body = self._encode_body(flat, seed).cpu()
        return seal(
            self.name,
            x.dtype,
            self.wire_block_size,
            tuple(x.shape),
            memoryview(body.numpy()),
            self.zstd_level,
        )

    def decode(
        self, payload: bytes | bytearray | memoryview, *, max_numel: int = DEFAULT_MAX_NUMEL
    ) -> torch.Tensor:
        """Decode a payload made by this codec and block size (zstd or not) into a new fp32 tensor.

        CodecError for malformed, truncated, corrupted or foreign payloads. `max_numel` caps the
        element count a header may claim; pass the expected size for a tight bound.
        """
        header, raw = open_payload(payload, max_numel)
        if header.codec != self.name:
            raise CodecError(
                f"foreign payload: codec is {header.codec}, this decoder is {self.name}"
            )
        if header.block_size != self.wire_block_size:
            raise CodecError(
                f"foreign payload: block_size is {header.block_size}, this decoder uses "
                f"{self.wire_block_size}"
            )
        return self._decode_body(raw, header.numel).view(header.shape)

    def payload_size(self, shape: Sequence[int]) -> int:
        """Bytes of encode() output for `shape`: exact without zstd, an upper bound with zstd."""
        try:
            shape = tuple(operator.index(d) for d in shape)
        except TypeError as err:
            raise ValueError(f"shape: expected a sequence of ints, got {shape!r}") from err
        if len(shape) > MAX_NDIM or any(d < 0 for d in shape):
            raise ValueError(f"shape: expected at most {MAX_NDIM} non-negative ints, got {shape}")
        return header_size(len(shape)) + body_size(
            self.name, math.prod(shape), self.wire_block_size
        )

    def error_bound(self, x: torch.Tensor) -> torch.Tensor:
        """Elementwise worst-case |decode(encode(x)) - x| (fp32, shape of x), module formulas."""
        xf = x.detach().float()
        return self._bound(xf.reshape(-1)).view(xf.shape)

    def _encode_body(self, flat: torch.Tensor, seed: int = 0) -> torch.Tensor:
        raise NotImplementedError

    def _decode_body(self, raw: memoryview | bytes, n: int) -> torch.Tensor:
        raise NotImplementedError

    def _bound(self, flat: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _copy_chunks(raw: memoryview | bytes, out: torch.Tensor, itemsize: int) -> None:
    """Copy the body into the bytes of `out` (elements of `itemsize`), checking finiteness."""
    dst = out.view(torch.uint8).numpy()
    src = np.frombuffer(raw, dtype=np.uint8, count=dst.size)
    step = _CHUNK_CPU
    for a in range(0, out.numel(), step):
        b = min(a + step, out.numel())
        np.copyto(dst[a * itemsize : b * itemsize], src[a * itemsize : b * itemsize])
        _check_decoded(out[a:b], a)


class Fp32Codec(Codec):
    """fp32, exact. Body: 4n bytes. Size: 25 + 8*ndim + 4n."""

    name = "fp32"

    def _encode_body(self, flat: torch.Tensor, seed: int = 0) -> torch.Tensor:
        flat = flat.float().contiguous()
        if not _all_finite(flat):
            raise _non_finite("NaN or Inf")
        return flat.view(torch.uint8)

    def _decode_body(self, raw: memoryview | bytes, n: int) -> torch.Tensor:
        out = torch.empty(n, dtype=torch.float32)
        _copy_chunks(raw, out, 4)
        return out

    def _bound(self, flat: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(flat)


class Bf16Codec(Codec):
    """bfloat16, round to nearest even; relative error <= 2^-8. Size: 25 + 8*ndim + 2n."""

    name = "bf16"

    def _encode_body(self, flat: torch.Tensor, seed: int = 0) -> torch.Tensor:
        half = flat.float().to(torch.bfloat16).contiguous()
        if not _all_finite(half):
            raise _non_finite("NaN or Inf, or beyond the bfloat16 range")
        return half.view(torch.uint8)

    def _decode_body(self, raw: memoryview | bytes, n: int) -> torch.Tensor:
        out = torch.empty(n, dtype=torch.float32)
        src = np.frombuffer(raw, dtype=np.uint8, count=2 * n)
        stage = torch.empty(min(n, _CHUNK_CPU), dtype=torch.bfloat16)
        stage_bytes = stage.view(torch.uint8).numpy()
        for a in range(0, n, _CHUNK_CPU):
            b = min(a + _CHUNK_CPU, n)
            np.copyto(stage_bytes[: 2 * (b - a)], src[2 * a : 2 * b])
            out[a:b].copy_(stage[: b - a])  # bf16 -> fp32 is exact
            _check_decoded(out[a:b], a)
        return out

    def _bound(self, flat: torch.Tensor) -> torch.Tensor:
        return (flat.abs() * 2.0**-8).clamp_(min=_BF16_FLOOR)


class _BlockCodec(Codec):
    """Shared loops of the absmax-scaled codecs: nb fp32 scales, then the codes.

    Work is done in chunks of whole blocks, so temporaries stay small and cache-resident; the
    last (partial) block is processed on its own, padded to an even length for 4-bit codes.
    """

    qmax: ClassVar[float]  # scale = absmax / qmax
    zero_nibble: ClassVar[int] = 0  # code of 0.0 (pads the last byte when n is odd)

    def _row_bytes(self, elems: int) -> int:
        return ceil_div(elems, 2) if self.name in NIBBLE_CODECS else elems

    def _encode_body(self, flat: torch.Tensor, seed: int = 0) -> torch.Tensor:
        n, bs = flat.numel(), self.block_size
        nb = ceil_div(n, bs)
        body = torch.empty(4 * nb + self._row_bytes(n), dtype=torch.uint8, device=flat.device)
        gen = None
        if self.rounding == "stochastic":  # one stream per payload, drawn in element order
            gen = torch.Generator(device=flat.device).manual_seed(seed)
        scales = body[: 4 * nb].view(torch.float32)  # (nb,)
        codes = body[4 * nb :]
        full, per_row = n // bs, self._row_bytes(bs)
        x_rows = flat[: full * bs].view(full, bs)  # (full, B)
        c_rows = codes[: full * per_row].view(full, per_row)  # (full, B or B/2)
        step = max(1, _chunk_elems(flat.device) // bs)
        for r0 in range(0, full, step):
            r1 = min(r0 + step, full)
            self._quantize(x_rows[r0:r1], scales[r0:r1], c_rows[r0:r1], gen)
        if full < nb:
            tail = flat[full * bs :].float()
            if self.name in NIBBLE_CODECS and tail.numel() % 2:
                tail = torch.cat((tail, tail.new_zeros(1)))  # padding encodes to the zero code
            tail_codes = codes[full * per_row :].view(1, -1)
            self._quantize(tail.view(1, -1), scales[full:], tail_codes, gen)
        return body

    def _scales(self, xc: torch.Tensor, scales_out: torch.Tensor) -> torch.Tensor:
        """Write the block scales of `xc` (k, L) into `scales_out` (k,); return 1/scale (k, 1)."""
        lo, hi = torch.aminmax(xc, dim=1)
        absmax = torch.maximum(hi, lo.neg_())  # NaN propagates, so one check covers NaN and Inf
        if not bool(torch.isfinite(absmax).all()):
            raise _non_finite("NaN or Inf")
        keep = absmax >= FLUSH_BELOW
        # tensor / tensor is correctly rounded everywhere (a python-scalar divisor may become a
        # multiplication by its reciprocal on some backends), so CPU and CUDA agree bit for bit
        qmax = torch.full_like(absmax, self.qmax)
        scale = absmax / qmax
        # near the fp32 maximum qmax * scale may round up to inf: step the scale down one ulp so
        # every decodable value stays finite (the error grows by an ulp, within the slack)
        scale = torch.where(
            torch.isinf(scale * qmax), scale.nextafter(torch.zeros_like(scale)), scale
        )
        scales_out.copy_(torch.where(keep, scale, 0.0))
        inv = torch.where(keep, qmax / absmax, 0.0)
        return inv.unsqueeze(1)

    def _quantize(
        self,
        xc: torch.Tensor,
        scales_out: torch.Tensor,
        codes_out: torch.Tensor,
        gen: torch.Generator | None = None,
    ) -> None:
        raise NotImplementedError

    def _decode_body(self, raw: memoryview | bytes, n: int) -> torch.Tensor:
        bs = self.block_size
        nb = ceil_div(n, bs)
        scales = torch.from_numpy(np.frombuffer(raw, dtype="<f4", count=nb).copy())
        bad = ~(torch.isfinite(scales) & (scales >= 0))
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise CodecError(f"scales: block {i} has scale {scales[i].item()} (need finite, >= 0)")
        codes = np.frombuffer(raw, dtype=np.uint8, offset=4 * nb)
        out = torch.empty(n, dtype=torch.float32)
        full, per_row = n // bs, self._row_bytes(bs)
        o_rows = out[: full * bs].view(full, bs)  # (full, B)
        step = max(1, _CHUNK_CPU // bs)
        stage = torch.empty(min(step, full) * per_row, dtype=torch.uint8)  # writable code copy
        stage_np = stage.numpy()
        for r0 in range(0, full, step):
            r1 = min(r0 + step, full)
            k = r1 - r0
            np.copyto(stage_np[: k * per_row], codes[r0 * per_row : r1 * per_row])
            c = stage[: k * per_row].view(k, per_row)
            self._dequantize(c, scales[r0:r1, None], o_rows[r0:r1])
            _check_decoded(o_rows[r0:r1], r0 * bs)
        if full < nb:
            self._decode_tail(codes[full * per_row :], scales[full:], out[full * bs :])
        return out

    def _decode_tail(self, codes: np.ndarray, scale: torch.Tensor, out: torch.Tensor) -> None:
        c = torch.from_numpy(codes.copy())
        length = out.numel()
        if self.name in NIBBLE_CODECS and length % 2:
            pad = int(c[-1]) >> 4
            if pad != self.zero_nibble:
                raise CodecError(
                    f"codes: padding nibble of the odd last byte is {pad:#x}, "
                    f"expected {self.zero_nibble:#x}"
                )
        padded = torch.empty(1, 2 * c.numel() if self.name in NIBBLE_CODECS else length)
        self._dequantize(c.view(1, -1), scale[:, None], padded)
        _check_decoded(padded, out.numel())
        out.copy_(padded[0, :length])

    def _dequantize(self, c: torch.Tensor, s: torch.Tensor, out: torch.Tensor) -> None:
        raise NotImplementedError

    def _absmax_per_element(self, flat: torch.Tensor) -> torch.Tensor:
        n, bs = flat.numel(), self.block_size
        nb = ceil_div(n, bs)
        padded = flat.abs()
        if nb * bs != n:
            padded = torch.cat((padded, padded.new_zeros(nb * bs - n)))
        absmax = padded.view(nb, bs).amax(dim=1, keepdim=True)  # (nb, 1)
        return absmax.expand(nb, bs).reshape(-1)[:n]

    def _bound(self, flat: torch.Tensor) -> torch.Tensor:
        absmax = self._absmax_per_element(flat)
        bound = self._formula(flat, absmax) * _SLACK
        return torch.where(absmax < FLUSH_BELOW, absmax, bound)

    def _formula(self, flat: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
        return absmax / (2 * self.qmax)  # half a quantization step


class Int8Codec(_BlockCodec):
    """int8 absmax per block; error <= absmax/254. Size: 25 + 8*ndim + 4*nb + n."""

    name = "int8"
    qmax = 127.0

    def _quantize(
        self,
        xc: torch.Tensor,
        scales_out: torch.Tensor,
        codes_out: torch.Tensor,
        gen: torch.Generator | None = None,
    ) -> None:
        xc = xc.float()
        t = torch.mul(xc, self._scales(xc, scales_out))  # (k, B); |t| <= 127 * (1 + 2^-23)
        t.round_()
        codes_out.view(torch.int8).copy_(t)

    def _dequantize(self, c: torch.Tensor, s: torch.Tensor, out: torch.Tensor) -> None:
        ci = c.view(torch.int8)
        if bool((ci == -128).any()):
            raise CodecError("codes: int8 code -128 found (valid codes are -127..127)")
        torch.mul(ci, s, out=out)


def _nibble_pair_table(values: torch.Tensor) -> torch.Tensor:
    """(256, 2) fp32 table: byte -> (value of low nibble, value of high nibble)."""
    b = torch.arange(256)
    return torch.stack((values[b & 15], values[b >> 4]), dim=1).contiguous()


class Int4Codec(_BlockCodec):
    """int4 absmax per block (codes -7..7 stored +8); error <= absmax/14.

    Size: 25 + 8*ndim + 4*nb + ceil(n/2).
    """

    name = "int4"
    qmax = 7.0
    zero_nibble = 8
    # nibble v -> v - 8; nibble 0 (code -8) is never emitted and decodes to NaN, which is caught
    _TABLE = _nibble_pair_table(torch.tensor([math.nan] + [float(v - 8) for v in range(1, 16)]))

    def _quantize(
        self,
        xc: torch.Tensor,
        scales_out: torch.Tensor,
        codes_out: torch.Tensor,
        gen: torch.Generator | None = None,
    ) -> None:
        xc = xc.float()
        t = torch.mul(xc, self._scales(xc, scales_out))  # (k, L)
        q = t.round_().to(torch.int8)  # codes in [-7, 7]
        torch.add(q[:, 0::2], q[:, 1::2], alpha=16, out=codes_out.view(torch.int8))
        codes_out.add_(136)  # uint8 wrap-around: lo + 16*hi + 136 = (lo + 8) | (hi + 8) << 4

    def _dequantize(self, c: torch.Tensor, s: torch.Tensor, out: torch.Tensor) -> None:
        table = self._TABLE
        torch.index_select(table, 0, c.reshape(-1).int(), out=out.view(-1, 2))
        out.mul_(s)


def _e3m0_nibbles() -> torch.Tensor:
    """Encoder table: top 10 bits of an fp32 y = x/absmax (sign, exponent, first mantissa bit)
    -> e3m0 nibble. Exact nearest-level rounding: the first mantissa bit is set iff the
    magnitude's mantissa is >= 1.5, i.e. past the midpoint to the next power of two."""
    idx = torch.arange(1024)
    sign, exp, half = idx >> 9, (idx >> 1) & 255, idx & 1
    e = exp - 127  # |y| in [2^e, 2^(e+1))
    code = torch.where(e >= -6, (e + half + 7).clamp(max=7), (e == -7).long())  # 2^-7 <= |y| -> 1
    code = torch.where(exp == 0, 0, code)
    return torch.where(code > 0, code | (sign << 3), 0).to(torch.uint8)


class E3M0Codec(_BlockCodec):
    """e3m0: sign + 3-bit exponent, levels {0, scale*2^-6, ..., scale}, scale = block absmax.

    error <= max(|x|/3, absmax/128). Size: 25 + 8*ndim + 4*nb + ceil(n/2).
    """

    name = "e3m0"
    qmax = 1.0
    _NIBBLES = _e3m0_nibbles()
    _PAIRS_BY_DEVICE: ClassVar[dict[torch.device, torch.Tensor]] = {}
    # nibble -> value; 0x8 ("negative zero") is never emitted and decodes to NaN, which is caught
    _TABLE = _nibble_pair_table(
        torch.tensor(
            [0.0]
            + [2.0 ** (e - 7) for e in range(1, 8)]
            + [math.nan]
            + [-(2.0 ** (e - 7)) for e in range(1, 8)]
        )
    )

    @classmethod
    def _pairs(cls, device: torch.device) -> torch.Tensor:
        """(2^20,) uint8: (top10(y_hi) << 10 | top10(y_lo)) -> packed byte of the two codes."""
        table = cls._PAIRS_BY_DEVICE.get(device)
        if table is None:
            p = torch.arange(1 << 20)
            table = (cls._NIBBLES[p & 1023] | (cls._NIBBLES[p >> 10] << 4)).to(device)
            cls._PAIRS_BY_DEVICE[device] = table
        return table

    def _quantize(
        self,
        xc: torch.Tensor,
        scales_out: torch.Tensor,
        codes_out: torch.Tensor,
        gen: torch.Generator | None = None,
    ) -> None:
        xc = xc.float()
        y = torch.mul(xc, self._scales(xc, scales_out))  # (k, L), |y| <= 1 + 2^-23
        if gen is not None:
            self._quantize_stochastic(y, codes_out, gen)
            return
        top = y.view(torch.int32).bitwise_right_shift_(22).bitwise_and_(1023)
        pair = torch.add(top[:, 0::2], top[:, 1::2], alpha=1024)  # (k, L/2)
        torch.index_select(self._pairs(y.device), 0, pair.view(-1), out=codes_out.view(-1))

    @staticmethod
    def _quantize_stochastic(y: torch.Tensor, codes_out: torch.Tensor, gen: torch.Generator):
        """Unbiased rounding: |y| between neighbouring levels lo < hi goes up with probability
        (|y| - lo) / (hi - lo), so E[decoded] = y. Levels: 0, 2^-6, ..., 2^0."""
        a = y.abs()
        exp = torch.frexp(a).exponent - 1  # a in [2^exp, 2^(exp+1)) (a > 0)
        small = exp < -6  # below 2^-6: between 0 (code 0) and 2^-6 (code 1)
        step = torch.where(small, 2.0**-6, torch.ldexp(torch.ones_like(a), exp))
        lo = torch.where(small, 0.0, step)
        u = torch.rand(a.shape, generator=gen, device=a.device)
        up = u < (a - lo) / step
        code = torch.where(small, 0, exp + 7) + up  # |y| <= 1 + 2^-23: at most 7 but for ulps
        code = code.clamp_(max=7).to(torch.uint8)
        code |= (y < 0).to(torch.uint8).mul_(8) * (code > 0)  # no "negative zero"
        torch.add(code[:, 0::2], code[:, 1::2], alpha=16, out=codes_out)

    def _dequantize(self, c: torch.Tensor, s: torch.Tensor, out: torch.Tensor) -> None:
        torch.index_select(self._TABLE, 0, c.reshape(-1).int(), out=out.view(-1, 2))
        out.mul_(s)

    def _formula(self, flat: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
        if self.rounding == "stochastic":  # one level step: at most |x|, or absmax/64 below
            return torch.maximum(flat.abs(), absmax / 64)
        return torch.maximum(flat.abs() / 3, absmax / 128)


_CODECS: dict[str, type[Codec]] = {
    c.name: c for c in (Fp32Codec, Bf16Codec, Int8Codec, Int4Codec, E3M0Codec)
}


ROUNDINGS = ("nearest", "stochastic")


def make_codec(
    name: str, block_size: int = 256, zstd_level: int = 0, topk: int = 0, rounding: str = "nearest"
) -> Codec:
    """The codec `name` (one of CODEC_NAMES); ValueError naming the bad argument.

    `topk`: values kept per block of the sparse codec (0 = its default); other codecs ignore it.
    `rounding`: "stochastic" (unbiased, e3m0 only) or "nearest".
    """
    if rounding not in ROUNDINGS:
        raise OptionError("rounding", f"{rounding!r} is not one of {', '.join(ROUNDINGS)}")
    if rounding == "stochastic":
        if name != "e3m0":
            raise OptionError("rounding", f"stochastic rounding is offered for e3m0, not {name}")
        codec = E3M0Codec(block_size, zstd_level)
        codec.rounding = "stochastic"
        return codec
    if name == "sparse":  # sparse.py builds on this module: imported here, not at the top
        from streamloco.outer_optim.sparse import SparseCodec

        return SparseCodec(block_size, zstd_level, topk)
    cls = _CODECS.get(name)
    if cls is None:
        raise OptionError("codec", f"{name!r} is not one of {', '.join(CODEC_NAMES)}")
    return cls(block_size, zstd_level)


def decode_any(
    payload: bytes | bytearray | memoryview, *, max_numel: int = DEFAULT_MAX_NUMEL
) -> torch.Tensor:
    """Decode any valid payload into a new fp32 CPU tensor; the codec is read from the header."""
    header, raw = open_payload(payload, max_numel)
    if header.codec == "sparse":
        from streamloco.outer_optim.sparse import SparseCodec

        codec: Codec = SparseCodec.from_wire(header.block_size)
    else:
        codec = _CODECS[header.codec](header.block_size or 256)
    return codec._decode_body(raw, header.numel).view(header.shape)


def peek_header(
    payload: bytes | bytearray | memoryview, *, max_numel: int = DEFAULT_MAX_NUMEL
) -> Header:
    """Validate and return the header fields of `payload` (or of a prefix holding the header).

    Neither the body length nor the CRC is checked here; decode does that.
    """
    return parse_header(as_byte_view(payload), max_numel)[0]

"""The sparse top-k codec: the documented layout read back independently, the selection rule,
sizes, and rejection of every payload no encoder emits. (Round trips, bounds, truncation, bit
flips, non-finite input and determinism run for every codec in test_codecs.py.)"""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np
import pytest
import torch

from streamloco.outer_optim.codecs import CodecError, decode_any, make_codec, peek_header


def header(shape: tuple[int, ...], body: bytes, chunk: int, k: int) -> bytes:
    head = struct.pack("<4sBBBBIB", b"SLQC", 1, 6, 0, 1, chunk | (k << 16), len(shape))
    head += struct.pack(f"<{len(shape)}Q", *shape) + struct.pack("<Q", len(body))
    return head + struct.pack("<I", zlib.crc32(head + body)) + body


def read_layout(payload: bytes, n: int, chunk: int, k: int) -> dict:
    """Decode a payload with numpy, following the docstring of sparse.py line by line."""
    body = np.frombuffer(payload[25 + 8 :], np.uint8)
    nc = -(-n // chunk)
    lengths = [min(chunk, n - j * chunk) for j in range(nc)]
    kept = [min(k, length) for length in lengths]
    big_k = sum(kept)
    r = math.floor(math.log2(chunk // k))
    levels = np.frombuffer(body[: 8 * nc].tobytes(), "<f4").reshape(nc, 2)
    o = 8 * nc
    code_bits = np.unpackbits(body[o : o + -(-2 * big_k // 8)], bitorder="little")
    codes = code_bits[: 2 * big_k].reshape(-1, 2) @ np.array([1, 2])
    o += -(-2 * big_k // 8)
    rem_bits = np.unpackbits(body[o : o + -(-big_k * r // 8)], bitorder="little")
    rems = rem_bits[: big_k * r].reshape(big_k, r) @ (1 << np.arange(r)) if r else [0] * big_k
    o += -(-big_k * r // 8)
    unary = np.unpackbits(body[o:], bitorder="little")
    ones = np.flatnonzero(unary)
    quotients = np.diff(np.concatenate(([-1], ones))) - 1
    out = np.zeros(n)
    positions = []
    i = 0
    for j in range(nc):
        at = -1
        for _ in range(kept[j]):
            at += int(quotients[i]) * (1 << r) + int(rems[i]) + 1
            mag = levels[j, 1] if codes[i] & 1 else levels[j, 0]
            out[j * chunk + at] = -mag if codes[i] & 2 else mag
            positions.append(j * chunk + at)
            i += 1
    return {"levels": levels, "codes": codes, "values": out, "positions": positions}


@pytest.mark.parametrize(("n", "chunk", "k"), [(1000, 64, 4), (4096, 4096, 64), (777, 100, 7)])
def test_documented_layout_and_selection_rule(n, chunk, k):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    codec = make_codec("sparse", chunk, topk=k)
    payload = codec.encode(x)
    assert peek_header(payload).block_size == chunk | (k << 16)
    got = read_layout(payload, n, chunk, k)
    y = codec.decode(payload)
    assert y.double().numpy().tolist() == got["values"].tolist()
    xs = x.numpy()
    for j, start in enumerate(range(0, n, chunk)):
        part = np.abs(xs[start : start + chunk])
        top = sorted(np.argsort(-part, kind="stable")[: min(k, part.size)] + start)
        assert [p for p in got["positions"] if start <= p < start + chunk] == top
        kept = part[np.array(top) - start]
        lo, hi = got["levels"][j]
        assert lo == kept.min() and hi == kept.max()  # exact: the levels are data values
        for p in top:  # sign, and the nearer magnitude (ties to lo)
            v = xs[p]
            want = hi if abs(v) - lo > hi - abs(v) else lo
            assert got["values"][p] == (-want if v < 0 else want)


def test_ties_keep_the_lower_positions_and_zeros_stay_zero():
    codec = make_codec("sparse", 16, topk=4)
    x = torch.zeros(32)
    x[3], x[9] = 2.0, -2.0
    x[[1, 5, 7, 11]] = 0.5  # four equal candidates for the last two places of chunk 0
    x[20] = 1.0  # chunk 1: one non-zero, three zeros kept
    got = read_layout(codec.encode(x), 32, 16, 4)
    assert got["positions"] == [1, 3, 5, 9, 16, 17, 18, 20]
    y = codec.decode(codec.encode(x))
    assert y[20] == 1.0 and (y[16:20] == 0).all() and (y[21:] == 0).all()
    assert y[3] == 2.0 and y[9] == -2.0 and y[1] == y[5] == 0.5 and y[7] == 0


def test_size_is_a_fraction_of_a_bit_per_element_at_one_in_64():
    codec = make_codec("sparse", 4096, topk=64)
    n = 1 << 20
    size = codec.payload_size((n,))
    # 256 chunks: levels 8 bytes each; 16384 values: 2 code bits, r = 6 remainder bits; unary:
    # 64 terminators + (4096 - 64) >> 6 = 63 worst-case quotient bits per chunk
    assert size == 33 + 256 * 8 + 16384 * 2 // 8 + 16384 * 6 // 8 + 256 * (64 + 63) // 8
    assert 8 * size / n < 0.18  # vs 4.25 for dense 4-bit with fp32 scales per 128


def test_error_feedback_style_accumulation_sends_everything_eventually():
    """What the engine relies on: repeatedly sending top-k of (residual + 0) drains the
    residual, so nothing is lost, only delayed."""
    codec = make_codec("sparse", 64, topk=8)
    x = torch.randn(640, generator=torch.Generator().manual_seed(3))
    residual, sent = x.clone(), torch.zeros_like(x)
    for _ in range(40):
        d = codec.decode(codec.encode(residual))
        sent += d
        residual -= d
    assert float(residual.norm()) < 1e-3 * float(x.norm())
    assert torch.allclose(sent, x, atol=1e-3)


def _valid(n=40, chunk=16, k=2) -> tuple[bytes, int, int, int]:
    x = torch.randn(n, generator=torch.Generator().manual_seed(0))
    payload = make_codec("sparse", chunk, topk=k).encode(x)
    return payload, n, chunk, k


def _rebuilt(edit) -> bytes:
    payload, n, chunk, k = _valid()
    body = bytearray(payload[33:])
    edit(body, n, chunk, k)
    return header((n,), bytes(body), chunk, k)


# n=40, chunk 16, k 2: nc=3, K=6, r=3; levels 24 bytes, codes 2, remainders ceil(18/8)=3,
# unary 6 + (14>>3)*2 + (6>>3) = 8 bits = 1 byte
@pytest.mark.parametrize(
    ("edit", "word"),
    [
        (lambda b, *_: b.__setitem__(slice(0, 8), struct.pack("<ff", 2.0, 1.0)), "levels"),
        (lambda b, *_: b.__setitem__(slice(0, 4), struct.pack("<f", -1.0)), "levels"),
        (lambda b, *_: b.__setitem__(slice(4, 8), struct.pack("<f", math.inf)), "levels"),
        (lambda b, *_: b.__setitem__(slice(4, 8), struct.pack("<f", math.nan)), "levels"),
        (lambda b, *_: b.__setitem__(25, b[25] | 0xF0), "padding bits after the last value"),
        (lambda b, *_: b.__setitem__(28, b[28] | 0x80), "padding bits after the last Rice"),
        (lambda b, *_: b.__setitem__(29, 0x7F), "terminators"),  # 7 ones
        (lambda b, *_: b.__setitem__(29, 0x00), "terminators"),
    ],
)
def test_payloads_no_encoder_emits_are_rejected_naming_the_field(edit, word):
    payload = _rebuilt(edit)
    with pytest.raises(CodecError, match=word):
        decode_any(payload)
    with pytest.raises(CodecError, match=word):
        make_codec("sparse", 16, topk=2).decode(payload)


def test_a_position_past_the_end_of_the_last_chunk_is_rejected():
    # the last chunk holds 8 elements; remainders 0 and unary bits 1,1,1,1,0,1,1,0 give its
    # first value a quotient of 1: gap 8, position 8
    def edit(b, *_):
        b[26:29] = bytes(3)
        b[29] = 0b01101111

    with pytest.raises(CodecError, match="position 8 of chunk 2, which holds 8"):
        decode_any(_rebuilt(edit))

    # the same stream with the zero moved to the end is valid: positions 0, 1 of chunk 2
    def valid(b, *_):
        b[26:29] = bytes(3)
        b[29] = 0b00111111

    y = decode_any(_rebuilt(valid))
    assert y[32:34].abs().min() > 0 and (y[34:] == 0).all()


def test_header_k_and_chunk_are_validated_and_foreign_k_is_rejected():
    payload, n, _chunk, _k = _valid()
    body = payload[33:]
    for bad_chunk, bad_k in [(16, 0), (16, 17), (0, 1)]:
        with pytest.raises(CodecError, match="block_size"):
            decode_any(header((n,), body, bad_chunk, bad_k))
    with pytest.raises(CodecError, match=r"foreign.*block_size"):
        make_codec("sparse", 16, topk=3).decode(payload)
    with pytest.raises(CodecError, match=r"foreign.*sparse"):
        make_codec("e3m0", 16).decode(payload)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"block_size": 70_000}, "block_size"),
        ({"block_size": 16, "topk": 17}, "topk"),
        ({"block_size": 16, "topk": -1}, "topk"),
        ({"block_size": 16, "topk": 2.0}, "topk"),
    ],
)
def test_make_codec_rejects_bad_sparse_arguments_naming_them(kwargs, word):
    with pytest.raises(ValueError, match=word) as err:
        make_codec("sparse", **kwargs)
    assert err.value.option == word

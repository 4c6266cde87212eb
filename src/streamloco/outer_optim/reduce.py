"""The two-phase reduce: per-group bytes per round that do not grow with the number of groups.

The all-gather (the default, `outer.reduce = "allgather"`) hands every group every other group's
whole payload: per group and round one payload P up and (M-1) P down. The two-phase reduce
(`"two_phase"`) splits a fragment (a rank's shard of it, with K ranks per group) into M contiguous
shards of whole codec blocks; group j owns shard j:

- phase 1 (scatter): every group encodes each shard on its own (a self-describing payload,
  header and CRC from wire.py) and sends shard j to owner j; its own shard stays home.
- reduce (owner j, pure, `reduce_shard`): decode the M contributions to shard j, leave out the
  empty and invalid ones exactly as the all-gather apply does, sum the rest in fp32 in group
  order 0..M-1, divide, and re-encode the mean with the same codec.
- phase 2 (all-gather of reduced shards): owner j publishes its reduced shard in an envelope
  that says whose contributions it holds (`pack_reduced`); every group fetches the M-1 it does
  not own.

Every group then decodes the same M reduced shards, so every group applies the outer step to the
same values and the globals stay bit-identical. Per group and round (a broker moves each upload
to whoever reads it): up (M-1)/M P + P_r/M, down (M-1)/M P + (M-1)/M P_r, with P_r ~ P the size
of a re-encoded payload: about 2 P down whatever M, against (M-1) P for the all-gather.

The re-encode is a second lossy step. Error feedback carries only the sender's own compression
error (acc - decode(own shards)); the owner's re-encode error is not fed back by anyone: it is
the same for every group, so it shifts the global step but never makes groups disagree.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import torch

from streamloco.outer_optim.codecs import Codec
from streamloco.outer_optim.comm import shard_bounds

REDUCES = ("allgather", "two_phase", "auto")
REDUCED_MAGIC = b"SLRD"
REDUCED_VERSION = 1
_PREFIX = struct.Struct("<4sBH")  # magic, version, groups
_CRC = struct.Struct("<I")
MAX_GROUPS = 2**16 - 1


class ReducedError(ValueError):
    """A reduced-shard envelope is malformed, truncated or made for another number of groups."""


def resolve_reduce(mode: str, num_groups: int, codec: str = "e3m0") -> str:
    """The exchange a run uses: "auto" picks two_phase when it moves strictly fewer bytes, for a
    dense codec.

    Per group and round: all-gather M P (P up, (M-1) P down); two-phase about (3M-2)/M P
    (`bytes_per_round`). They tie at M = 2 (2 P each), where the two-phase reduce would only
    add a hop and a second quantization, so auto takes two_phase from M = 3 on. Not for the
    sparse codec: the mean of M top-k payloads has up to M k values per chunk and its top-k
    re-encode drops most of them (0.70 relative error at M=4, +4 % eval loss in
    bench_reduce_bytes.py), while its payloads are small enough that M of them cost little.
    """
    if mode not in REDUCES:
        raise ValueError(f"reduce: {mode!r} is not one of {', '.join(REDUCES)}")
    if mode == "auto":
        return "two_phase" if num_groups >= 3 and codec != "sparse" else "allgather"
    return mode


def bytes_per_round(mode: str, num_groups: int, payload: float) -> tuple[float, float]:
    """(up, down) bytes of one group in one round, in the broker model, for a payload of
    `payload` bytes (the reduced shards assumed as large as the shards they reduce, and
    per-shard headers ignored): the formula the measured counters are checked against."""
    m = num_groups
    if mode == "allgather":
        return payload, (m - 1) * payload
    if mode == "two_phase":
        return (m - 1) / m * payload + payload / m, 2 * (m - 1) / m * payload
    raise ValueError(f"reduce: {mode!r} has no byte formula")


def shard_slices(n: int, num_groups: int, block: int) -> list[tuple[int, int]]:
    """[lo, hi) of each owner's shard of an n-long vector: whole codec blocks, owners in order
    (the last shards may be empty when there are fewer blocks than groups)."""
    return [shard_bounds(n, j, num_groups, block) for j in range(num_groups)]


def encode_shards(codec: Codec, x: torch.Tensor, slices, seed: int) -> list[bytes]:
    """One self-describing payload per shard. Shards are whole blocks, so each block is
    quantized exactly as in the payload of the whole vector (stochastic rounding aside: each
    shard draws from its own seed)."""
    return [
        codec.encode(x[lo:hi], seed=(seed * 31 + j) % (1 << 63))
        for j, (lo, hi) in enumerate(slices)
    ]


def envelope_size(num_groups: int) -> int:
    """Bytes of a reduced shard around its codec payload: prefix, bitmask, CRC32."""
    return _PREFIX.size + (num_groups + 7) // 8 + _CRC.size


def pack_reduced(num_groups: int, used: list[int], body: bytes) -> bytes:
    """The reduced-shard envelope: prefix, contributor bitmask, CRC32 of both, codec payload.

    An empty body means nobody's contribution was valid (the mask is then empty too)."""
    if not 1 <= num_groups <= MAX_GROUPS:
        raise ValueError(f"reduced shard: {num_groups} groups outside [1, {MAX_GROUPS}]")
    mask = bytearray((num_groups + 7) // 8)
    for g in used:
        mask[g // 8] |= 1 << (g % 8)
    head = _PREFIX.pack(REDUCED_MAGIC, REDUCED_VERSION, num_groups) + bytes(mask)
    return head + _CRC.pack(zlib.crc32(head)) + body


def unpack_reduced(payload: bytes, num_groups: int) -> tuple[list[int], bytes]:
    """(contributors, codec payload) of a reduced shard; ReducedError on anything malformed."""
    mask_len = (num_groups + 7) // 8
    head_len = _PREFIX.size + mask_len
    if len(payload) < head_len + _CRC.size:
        raise ReducedError(f"truncated: {len(payload)} bytes, the envelope alone is more")
    magic, version, groups = _PREFIX.unpack_from(payload)
    if magic != REDUCED_MAGIC:
        raise ReducedError(f"bad magic {magic!r} (not a reduced shard)")
    if version != REDUCED_VERSION:
        raise ReducedError(f"version {version} != {REDUCED_VERSION}")
    if groups != num_groups:
        raise ReducedError(f"made for {groups} groups, this run has {num_groups}")
    (crc,) = _CRC.unpack_from(payload, head_len)
    if zlib.crc32(payload[:head_len]) != crc:
        raise ReducedError("envelope checksum mismatch")
    mask = payload[_PREFIX.size : head_len]
    used = [g for g in range(num_groups) if mask[g // 8] >> (g % 8) & 1]
    if any(mask[g // 8] >> (g % 8) & 1 for g in range(num_groups, mask_len * 8)):
        raise ReducedError("contributor bits set past the number of groups")
    body = bytes(payload[head_len + _CRC.size :])
    if bool(used) != bool(body):
        raise ReducedError(f"{len(used)} contributors but a body of {len(body)} bytes")
    return used, body


@dataclass(frozen=True)
class ShardReduce:
    """What an owner's reduce did (for metrics; the bytes say the rest)."""

    payload: bytes  # the envelope to publish
    used: tuple[int, ...]
    excluded: tuple[tuple[int, str], ...]  # (group, why) left out of this shard
    reencode_rel_error: float  # ||decode(reduced) - mean|| / ||mean|| (0 when nothing was used)


def decode_contribution(
    codec: Codec, payload: bytes, n: int, device: torch.device
) -> tuple[torch.Tensor | None, str]:
    """A payload as an (n,) fp32 tensor, or None and why it cannot take part: empty (the group
    abstained or its payload was lost), or invalid (header, checksum, size, non-finite)."""
    if not payload:
        return None, "sent nothing (its pseudo-gradient was not finite, or it was lost)"
    try:
        # max_numel bounds what a hostile zstd payload can make us allocate.
        decoded = codec.decode(payload, max_numel=n).to(device)
    except ValueError as e:  # CodecError: header, checksum, size, non-finite values
        return None, f"invalid payload: {e}"
    if decoded.shape != (n,):
        return None, (
            f"sent {tuple(decoded.shape)} elements, expected ({n},) "
            "(a different model or fragment plan?)"
        )
    return decoded, ""


def reduce_shard(
    codec: Codec,
    contributions: dict[int, bytes],
    n: int,
    num_groups: int,
    seed: int,
    device: torch.device | str = "cpu",
) -> ShardReduce:
    """Owner side: the mean of the valid contributions to one n-long shard, re-encoded.

    Deterministic: the sum runs in group order in fp32 (the all-gather apply's arithmetic on
    this slice) and the re-encode's rounding draws come from `seed`, so any process reducing
    the same contributions publishes the same bytes."""
    device = torch.device(device)
    total: torch.Tensor | None = None
    used: list[int] = []
    excluded: list[tuple[int, str]] = []
    for g in sorted(contributions):
        decoded, why = decode_contribution(codec, contributions[g], n, device)
        if decoded is None:
            excluded.append((g, why))
            continue
        total = decoded if total is None else total.add_(decoded)
        used.append(g)
    if total is None:
        return ShardReduce(pack_reduced(num_groups, [], b""), (), tuple(excluded), 0.0)
    mean = total.div_(len(used))  # (n,)
    body = codec.encode(mean, seed=seed)
    again = codec.decode(body, max_numel=n).to(device)
    denom = float(mean.norm())
    err = float((again - mean).norm()) / denom if denom > 0 else 0.0
    return ShardReduce(pack_reduced(num_groups, used, body), tuple(used), tuple(excluded), err)

"""The sparse codec: chunk-wise top-k, 2-bit values with per-chunk levels, Rice-coded indices.

SparseLoCo (arXiv 2508.15706) and DeMo send a few components of each chunk of the pseudo-gradient
and carry the rest to the next round in an error-feedback accumulator (engine.py). This codec is
the wire half: it keeps the k largest-magnitude elements of every chunk of C consecutive
elements, quantizes them to 2 bits (a sign and one of two magnitudes per chunk), and codes their
positions as Rice-coded gaps. It shares the envelope of every other codec (wire.py: header,
CRC32, optional zstd, size checks); the header's u32 block_size field holds C (low 16 bits) and
k (high 16 bits), so a payload says how it was made.

Body, n elements, nc = ceil(n/C) chunks, chunk j of L_j = min(C, n - jC) elements keeps
k_j = min(k, L_j); K = sum k_j kept values, r = floor(log2(C // k)), U = sum_j k_j +
((L_j - k_j) >> r) (wire.sparse_layout):

    8*nc          levels, fp32 pairs (lo, hi) per chunk: the smallest and largest kept |x|
                  (both 0 for a chunk whose largest is below 2^-96)
    ceil(2K/8)    2-bit value codes, four per byte, value i in bits 2(i%4)..2(i%4)+1; bit 0
                  picks the magnitude (0: lo, 1: hi), bit 1 the sign (1: negative)
    ceil(Kr/8)    Rice remainders, r bits each (LSB first), bit stream LSB-first per byte
    ceil(U/8)     Rice quotients in unary: q zeros then a one, chunks back to back, zero-padded

Kept values are listed chunk by chunk in increasing position; the gap of a value is its position
minus the previous kept position in its chunk minus 1 (the first one: its position). gap =
q * 2^r + remainder. Padding bits (value codes past K, remainder bits past Kr, unary bits after
the K-th one) must be 0. Size = header + the sum above: exact, a function of the shape alone
(the unary stream is sized for the worst case, about one bit per kept value more than needed).
`benchmarks/bench_sparse_index.py` measured this layout against a bitmap, fixed-width indices
and zstd on top of each (docs/engine.md): Rice is the smallest without zstd, and zstd gains
little on it, so zstd stays an option (outer.zstd_level) rather than part of the format.

Selection: the k largest |x| of a chunk, ties broken by the lower position, so encoding is
deterministic. A kept magnitude goes to the nearer of lo and hi (ties to lo). Every kept |x| lies
in [lo, hi], so a kept value is off by at most (hi - lo)/2, zeros (a chunk with fewer than k
non-zeros) stay exactly 0 (lo = 0), and a dropped one is off by |x|: the engine's error feedback
carries all of it to the fragment's next round. Why two magnitudes and not four signed levels on
[-hi, hi]: the kept values of a chunk sit in a narrow band near its top (for Gaussian data with
k/C = 1/64, between about 2.4 and 3.6 sigma), where uniform levels would waste half the codes.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from streamloco.outer_optim.codecs import _CHUNK_CPU, _SLACK, FLUSH_BELOW, Codec, _non_finite
from streamloco.outer_optim.options import OptionError
from streamloco.outer_optim.wire import (
    MAX_SPARSE_CHUNK,
    CodecError,
    ceil_div,
    sparse_layout,
    sparse_params,
)


def default_topk(chunk: int) -> int:
    """k when none is given: C/64 (about 1.6 %, SparseLoCo's density range), at least 1."""
    return max(1, chunk // 64)


def _pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """(m,) uint8 of 0/1 -> ceil(m/8) bytes, bit i of the stream in bit i%8 of byte i//8."""
    pad = -bits.numel() % 8
    if pad:
        bits = torch.cat((bits, bits.new_zeros(pad)))
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=bits.device)
    return (bits.view(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)


def _unpack_bits(raw: np.ndarray) -> torch.Tensor:
    """bytes -> (8*len,) uint8 of 0/1, LSB first."""
    return torch.from_numpy(np.unpackbits(raw, bitorder="little"))


class SparseCodec(Codec):
    """Chunk-wise top-k, 2-bit values, Rice-coded positions (module docstring).

    block_size is the chunk size C (1..65535); topk is k (1..C, 0 = default_topk(C)).
    """

    name: ClassVar[str] = "sparse"

    def __init__(self, block_size: int = 4096, zstd_level: int = 0, topk: int = 0) -> None:
        super().__init__(block_size, zstd_level)
        if block_size > MAX_SPARSE_CHUNK:
            raise OptionError(
                "block_size",
                f"the sparse codec's chunk is at most {MAX_SPARSE_CHUNK}, got {block_size}",
            )
        if isinstance(topk, bool) or not isinstance(topk, int):
            raise OptionError("topk", f"expected an int, got {topk!r}")
        if not 0 <= topk <= block_size:
            raise OptionError(
                "topk", f"must be in 0..block_size={block_size} (0 = block_size/64), got {topk}"
            )
        self.topk = topk or default_topk(block_size)

    @classmethod
    def from_wire(cls, block_size: int) -> SparseCodec:
        chunk, k = sparse_params(block_size)
        return cls(chunk, 0, k)

    def __repr__(self) -> str:
        return (
            f"SparseCodec(block_size={self.block_size}, topk={self.topk}, "
            f"zstd_level={self.zstd_level})"
        )

    @property
    def wire_block_size(self) -> int:
        return self.block_size | (self.topk << 16)

    # ---- selection ----------------------------------------------------------------------------

    def _select(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(positions in the flat tensor (K,), their values (K,), chunk of each (K,)), chunk by
        chunk in increasing position. Raises ValueError for non-finite input."""
        n, c, _k = flat.numel(), self.block_size, self.topk
        flat = flat.float()
        if n:
            lo, hi = torch.aminmax(flat)
            if not (torch.isfinite(lo) and torch.isfinite(hi)):
                raise _non_finite("NaN or Inf")
        nc = ceil_div(n, c)
        key = flat.abs()
        if nc * c != n:  # padding sorts after every real element (|x| >= 0 > -1)
            key = torch.cat((key, key.new_full((nc * c - n,), -1.0)))
        rows = key.view(nc, c)
        step = max(1, _CHUNK_CPU // c)  # rows per pass: temporaries stay a few MiB
        pos = (
            torch.cat([self._select_rows(rows[a : a + step], a) for a in range(0, nc, step)])
            if nc
            else torch.zeros(0, dtype=torch.long, device=flat.device)
        )
        pos = pos[pos < n]  # the last chunk keeps min(k, L) (padding was sorted last)
        return pos, flat[pos], torch.div(pos, c, rounding_mode="floor")

    def _select_rows(self, rows: torch.Tensor, first: int) -> torch.Tensor:
        """Flat positions of the kept elements of chunks `first`.. (rows (m, C) of |x|)."""
        c, k = self.block_size, self.topk
        # topk only finds the k-th largest value (its own tie-breaking is unspecified); the rule
        # "larger |x|, then lower position" is applied below, so the selection is well defined
        kth = torch.topk(rows, k, dim=1, sorted=False).values.amin(dim=1, keepdim=True)  # (m, 1)
        above = rows > kth
        tied = rows == kth
        room = k - above.sum(dim=1, keepdim=True)  # (m, 1) tied elements still kept
        keep = above | (tied & (torch.cumsum(tied, dim=1) <= room))
        pos = keep.nonzero()  # (m*k, 2), row-major: increasing position in each chunk
        return (pos[:, 0] + first) * c + pos[:, 1]

    def _encode_body(self, flat: torch.Tensor, seed: int = 0) -> torch.Tensor:
        n, c, k = flat.numel(), self.block_size, self.topk
        nc, kept, r, unary = sparse_layout(n, c, k)
        pos, vals, chunk = self._select(flat)
        assert pos.numel() == kept
        dev = flat.device
        mag = vals.abs()
        hi = torch.zeros(nc, device=dev).scatter_reduce_(0, chunk, mag, "amax", include_self=True)
        lo = torch.full((nc,), torch.inf, device=dev).scatter_reduce_(
            0, chunk, mag, "amin", include_self=True
        )
        keep = hi >= FLUSH_BELOW  # tiny chunks send zeros (keeps every level a normal float)
        hi, lo = torch.where(keep, hi, 0.0), torch.where(keep, lo, 0.0)
        # magnitude bit: the nearer of lo and hi (ties to lo); sign bit: negative values
        up = (mag - lo[chunk]) > (hi[chunk] - mag)
        codes = up.to(torch.uint8) | (vals < 0).to(torch.uint8) << 1
        pad = -kept % 4
        if pad:
            codes = torch.cat((codes, codes.new_zeros(pad)))
        shifts = torch.tensor([0, 2, 4, 6], device=dev, dtype=torch.uint8)
        code_bytes = (codes.view(-1, 4) << shifts).sum(dim=1, dtype=torch.uint8)
        # gaps inside each chunk: position - previous position - 1, the first from the start
        local = pos - chunk * c
        first = torch.ones_like(pos, dtype=torch.bool)
        first[1:] = chunk[1:] != chunk[:-1]
        prev = torch.cat((local.new_full((1,), -1), local[:-1]))[:kept]
        gaps = local - torch.where(first, -1, prev) - 1
        q = gaps >> r
        rem = gaps & ((1 << r) - 1)
        shifts = torch.arange(r, device=dev)
        rem_bits = ((rem.unsqueeze(1) >> shifts) & 1).to(torch.uint8).reshape(-1)  # (K*r,)
        ones = torch.cumsum(q + 1, 0) - 1  # position of each value's terminating one
        unary_bits = torch.zeros(unary, dtype=torch.uint8, device=dev)
        unary_bits[ones] = 1
        levels = torch.stack((lo, hi), dim=1).contiguous()  # (nc, 2): lo, hi per chunk
        return torch.cat(
            (
                levels.view(-1).view(torch.uint8),
                code_bytes,
                _pack_bits(rem_bits),
                _pack_bits(unary_bits),
            )
        )

    def _decode_body(self, raw: memoryview | bytes, n: int) -> torch.Tensor:
        c, k = self.block_size, self.topk
        nc, kept, r, unary = sparse_layout(n, c, k)
        buf = np.frombuffer(raw, dtype=np.uint8)
        levels = torch.from_numpy(buf[: 8 * nc].copy().view("<f4")).view(nc, 2)  # lo, hi
        lo, hi = levels[:, 0], levels[:, 1]
        bad = ~(torch.isfinite(hi) & (lo >= 0) & (lo <= hi))
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise CodecError(
                f"levels: chunk {i} has lo {lo[i].item()}, hi {hi[i].item()} "
                "(need finite, 0 <= lo <= hi)"
            )
        o = 8 * nc
        n_codes, n_rem, n_un = ceil_div(2 * kept, 8), ceil_div(kept * r, 8), ceil_div(unary, 8)
        cb = torch.from_numpy(buf[o : o + n_codes].copy())
        codes = ((cb.unsqueeze(1) >> torch.tensor([0, 2, 4, 6], dtype=torch.uint8)) & 3).reshape(-1)
        if bool(codes[kept:].any()):
            raise CodecError("codes: padding bits after the last value code are not 0")
        codes = codes[:kept].long()
        o += n_codes
        rem_bits = _unpack_bits(buf[o : o + n_rem])
        if bool(rem_bits[kept * r :].any()):
            raise CodecError("indices: padding bits after the last Rice remainder are not 0")
        rem = (rem_bits[: kept * r].view(kept, r).long() << torch.arange(r)).sum(dim=1)
        o += n_rem
        unary_bits = _unpack_bits(buf[o : o + n_un])
        ones = unary_bits.nonzero().view(-1)
        if ones.numel() != kept:
            raise CodecError(
                f"indices: the unary stream holds {ones.numel()} terminators, expected {kept}"
            )
        q = torch.diff(ones, prepend=ones.new_full((1,), -1)) - 1
        gaps = (q << r) | rem
        # positions: running sums of (gap + 1) restarted at every chunk (k values each, the
        # last chunk fewer)
        chunk = torch.div(torch.arange(kept), k, rounding_mode="floor")
        run = torch.cumsum(gaps + 1, 0)
        starts = torch.arange(0, kept, k)
        base = torch.cat((run.new_zeros(1), run[starts[1:] - 1]))
        local = run - base[chunk] - 1
        length = torch.full((nc,), c, dtype=torch.long)
        if nc and n % c:
            length[-1] = n % c
        if kept and bool((local >= length[chunk]).any()):
            i = int((local >= length[chunk]).nonzero()[0])
            raise CodecError(
                f"indices: value {i} lands at position {int(local[i])} of chunk {int(chunk[i])}, "
                f"which holds {int(length[chunk[i]])} elements"
            )
        out = torch.zeros(n, dtype=torch.float32)
        mag = torch.where(codes & 1 == 1, hi[chunk], lo[chunk])
        out[chunk * c + local] = torch.where(codes & 2 == 2, -mag, mag)
        return out

    def _bound(self, flat: torch.Tensor) -> torch.Tensor:
        """Dropped elements: |x|; kept ones: (hi - lo)/2 of their chunk, plus fp32 slack."""
        bound = flat.abs()
        if not flat.numel():
            return bound
        pos, vals, chunk = self._select(flat)
        nc = ceil_div(flat.numel(), self.block_size)
        mag = vals.abs()
        hi = torch.zeros(nc).scatter_reduce_(0, chunk, mag, "amax", include_self=True)
        lo = torch.full((nc,), torch.inf).scatter_reduce_(0, chunk, mag, "amin", include_self=True)
        kept = torch.where(hi >= FLUSH_BELOW, (hi - lo) / 2 * _SLACK, hi)[chunk]
        bound[pos] = kept
        return bound

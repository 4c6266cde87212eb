"""How to code the positions of the sparse codec's kept values: the measurement behind its layout.

For every chunk of C elements the codec keeps k positions. Candidates, bytes for the positions
alone over the whole tensor (the values and levels cost the same under every candidate):

    bitmap        C bits per chunk
    fixed         ceil(log2 C) bits per kept position
    gaps u16      the gaps as little-endian uint16 (zstd's usual input)
    rice          the codec's layout: r = floor(log2(C/k)) remainder bits + unary quotients,
                  the unary stream sized for the worst case (an exact size formula)
    ... + zstd    each of the above through zstd (level 3), kept only when smaller
    entropy       log2(C choose k) per chunk: no code of fixed-k subsets does better on average

Data: real pseudo-gradients (a tiny model, H AdamW steps from its initialization, F=4 fragments,
each fragment's delta = initial - trained) and a Gaussian stand-in, at densities 1/64 and 1/32.
Then the whole payload in bits per element against dense e3m0 (block 128), with and without zstd,
and the encode/decode time of both (median of --repeats runs, same tensor, same run).
Sizes are exact (no noise); the timings are noisy on a shared machine.

    .venv/bin/python benchmarks/bench_sparse_index.py [--steps 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
import zstandard

# benchmarks/ (scripts run from the repo root)
from bench_wire_bytes import real_deltas as wire_bytes_deltas
from streamloco.outer_optim.codecs import make_codec
from streamloco.outer_optim.sparse import SparseCodec
from streamloco.outer_optim.wire import sparse_layout
from timing import median_time


def real_deltas(steps: int, fragments: int = 4) -> torch.Tensor:
    return torch.cat(wire_bytes_deltas(steps, fragments))


def zstd_size(raw: bytes) -> int:
    return min(len(raw), len(zstandard.ZstdCompressor(level=3).compress(raw)))


def pack(bits: np.ndarray) -> bytes:
    return np.packbits(bits.astype(np.uint8), bitorder="little").tobytes()


def index_sizes(x: torch.Tensor, chunk: int, k: int) -> dict[str, float]:
    codec = SparseCodec(chunk, 0, k)
    pos, _, which = codec._select(x)
    pos, which = pos.numpy(), which.numpy()
    local = pos - which * chunk
    n = x.numel()
    nc, kept, r, unary = sparse_layout(n, chunk, k)
    bitmap = np.zeros(nc * chunk, np.uint8)
    bitmap[pos] = 1
    width = max(1, math.ceil(math.log2(chunk)))
    fixed = ((local[:, None] >> np.arange(width)) & 1).reshape(-1)
    first = np.ones(kept, bool)
    first[1:] = which[1:] != which[:-1]
    prev = np.concatenate(([-1], local[:-1]))
    gaps = local - np.where(first, -1, prev) - 1
    rem = ((gaps[:, None] >> np.arange(r)) & 1).reshape(-1)
    un = np.zeros(unary, np.uint8)
    un[np.cumsum((gaps >> r) + 1) - 1] = 1
    rice = pack(rem) + pack(un)
    lengths = [min(chunk, n - j * chunk) for j in range(nc)]
    entropy = sum(
        math.lgamma(L + 1) - math.lgamma(min(k, L) + 1) - math.lgamma(L - min(k, L) + 1)
        for L in lengths
    ) / math.log(2)
    out = {
        "bitmap": len(pack(bitmap)),
        "bitmap + zstd": zstd_size(pack(bitmap)),
        "fixed": len(pack(fixed)),
        "fixed + zstd": zstd_size(pack(fixed)),
        "gaps u16 + zstd": zstd_size(gaps.astype("<u2").tobytes()),
        "rice": len(rice),
        "rice + zstd": zstd_size(rice),
        "entropy bound": entropy / 8,
    }
    return {name: 8 * size / kept for name, size in out.items()}  # bits per kept position


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="AdamW steps behind the deltas (H)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    real = real_deltas(args.steps)
    gauss = torch.randn(real.numel(), generator=torch.Generator().manual_seed(0))
    print(f"{real.numel():,} elements (tiny model, {args.steps} steps, F=4 fragments joined)")
    print("\nbits per kept position, lower is better:")
    names = None
    for label, x in (("real", real), ("gaussian", gauss)):
        for chunk, k in ((4096, 64), (4096, 128), (1024, 16)):
            sizes = index_sizes(x, chunk, k)
            if names is None:
                names = list(sizes)
                print(f"{'data':>9} {'C':>5} {'k':>4} " + " ".join(f"{n:>15}" for n in names))
            row = " ".join(f"{sizes[n]:>15.2f}" for n in names)
            print(f"{label:>9} {chunk:>5} {k:>4} {row}")
    print("\nwhole payload on the real deltas, bits per element, and timing (median):")
    print(f"{'codec':>24} {'bits/el':>8} {'+zstd':>8} {'enc ms':>8} {'dec ms':>8} {'vs e3m0':>8}")
    base = None
    for label, name, block, k in (
        ("e3m0 block 128", "e3m0", 128, 0),
        ("sparse C=4096 k=64", "sparse", 4096, 64),
        ("sparse C=4096 k=128", "sparse", 4096, 128),
    ):
        plain, packed = make_codec(name, block, 0, k), make_codec(name, block, 3, k)
        payload = plain.encode(real)
        bits = 8 * len(payload) / real.numel()
        zbits = 8 * len(packed.encode(real)) / real.numel()
        enc = median_time(lambda c=plain: c.encode(real), args.repeats)
        dec = median_time(lambda c=plain, p=payload: c.decode(p), args.repeats)
        base = base or bits
        print(
            f"{label:>24} {bits:>8.3f} {zbits:>8.3f} {1e3 * enc:>8.1f} {1e3 * dec:>8.1f} "
            f"{base / bits:>7.1f}x"
        )


if __name__ == "__main__":
    main()

"""Throughput and wire size of the pseudo-gradient codecs on one big Gaussian tensor.

    .venv/bin/python benchmarks/bench_codecs.py [--numel N] [--repeats R] [--zstd-level L]
        [--block-size B] [--threads T] [--json PATH]

Default N = 124M elements: the pseudo-gradient of a whole 124M-parameter model. For every codec,
without and with the zstd stage, it prints the payload size, the ideal N*b/8 bytes (b = 32, 16, 8,
4, 4), the overhead of header + scales against that ideal (negative when zstd beats it), bits per
element on the wire, encode and decode throughput in GB of fp32 input per second (median of the
repeats), the relative RMS error and the encode+decode time relative to plain fp32 in the same run.
Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from streamloco.outer_optim.codecs import make_codec

IDEAL_BITS = {"fp32": 32, "bf16": 16, "int8": 8, "int4": 4, "e3m0": 4}


def measure(name: str, x: torch.Tensor, block_size: int, zstd_level: int, repeats: int) -> dict:
    """Encode and decode `x` `repeats` times; sizes, median times and the error of one round."""
    codec = make_codec(name, block_size, zstd_level)
    codec.decode(codec.encode(x[:4096]))  # warm-up: lookup tables, allocator
    enc, dec = [], []
    for i in range(repeats):
        t0 = time.perf_counter()
        payload = codec.encode(x)
        t1 = time.perf_counter()
        y = codec.decode(payload)
        t2 = time.perf_counter()
        enc.append(t1 - t0)
        dec.append(t2 - t1)
        size = len(payload)
        if i == repeats - 1:
            rel = float((y - x).norm() / x.norm())
        # free before the next round, as a training loop would, so rounds reuse memory
        del payload, y
    n = x.numel()
    ideal = n * IDEAL_BITS[name] / 8
    return {
        "codec": name,
        "zstd_level": zstd_level,
        "payload_bytes": size,
        "ideal_bytes": int(ideal),
        "overhead_pct": 100.0 * (size - ideal) / ideal,
        "bits_per_element": 8.0 * size / n,
        "encode_s": statistics.median(enc),
        "decode_s": statistics.median(dec),
        "encode_gbps": 4 * n / 1e9 / statistics.median(enc),
        "decode_gbps": 4 * n / 1e9 / statistics.median(dec),
        "rel_rms_error": rel,
    }


def render(rows: list[dict]) -> str:
    """Plain aligned table of the result rows."""
    head = (
        f"{'codec':<6} {'zstd':>4} {'payload B':>13} {'ideal B':>13} {'overhead':>9} "
        f"{'bits/el':>8} {'enc GB/s':>9} {'dec GB/s':>9} {'rel RMS':>9} {'vs fp32':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['codec']:<6} {r['zstd_level']:>4} {r['payload_bytes']:>13,} "
            f"{r['ideal_bytes']:>13,} {r['overhead_pct']:>8.3f}% {r['bits_per_element']:>8.4f} "
            f"{r['encode_gbps']:>9.3f} {r['decode_gbps']:>9.3f} {r['rel_rms_error']:>9.2e} "
            f"{r['time_vs_fp32']:>7.2f}x"
        )
    return "\n".join(lines)


def main() -> None:
    """Parse flags, run every codec with and without zstd, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--numel", type=int, default=124_000_000, help="elements of the tensor")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per codec (median)")
    ap.add_argument("--zstd-level", type=int, default=3, help="level of the zstd rows; 0 skips")
    ap.add_argument("--block-size", type=int, default=256, help="block size of scaled codecs")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the Gaussian input")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()
    if args.numel < 1 or args.repeats < 1:
        ap.error("--numel and --repeats must be >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.numel, generator=gen)
    levels = [0] + ([args.zstd_level] if args.zstd_level > 0 else [])
    rows = []
    for level in levels:
        for name in IDEAL_BITS:  # dense codecs; sparse: bench_sparse_index.py
            rows.append(measure(name, x, args.block_size, level, args.repeats))
    base = next(r for r in rows if r["codec"] == "fp32" and r["zstd_level"] == 0)
    base_s = base["encode_s"] + base["decode_s"]
    for r in rows:
        r["time_vs_fp32"] = (r["encode_s"] + r["decode_s"]) / base_s

    print(
        f"numel={args.numel:,} (Gaussian, seed {args.seed})  block_size={args.block_size}  "
        f"repeats={args.repeats} (median)  torch {torch.__version__}  "
        f"threads={torch.get_num_threads()}"
    )
    print(
        "GB/s = GB of fp32 input per second; vs fp32 = (encode+decode) / that of fp32 without zstd"
    )
    print(render(rows))
    if args.json:
        meta = {
            "numel": args.numel,
            "block_size": args.block_size,
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()

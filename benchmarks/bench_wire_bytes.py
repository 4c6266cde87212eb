"""Bytes on the wire per fragment and per codec, against the ideal N*b/8.

Part A, a 124M-parameter model cut into F fragments (strided): every codec's exact payload size
(headers and fp32 block scales included) against N*b/8, and with zstd on Gaussian stand-ins.
Part B, real pseudo-gradients: a tiny model trained for H inner steps from its initialization;
delta = initial - trained per fragment, encoded by every codec with and without zstd. zstd's gain
depends on the data, so part B is the honest number for it. Prints tables; asserts nothing.

    .venv/bin/python benchmarks/bench_wire_bytes.py [--fragments 4] [--block-size 128]
"""

from __future__ import annotations

import argparse

import torch

from streamloco.outer_optim.codecs import make_codec
from streamloco.outer_optim.fragments import partition
from streamloco.outer_optim.optimizer import flatten
from streamloco.workers.model import Transformer, model_args
from streamloco.workers.synthetic import MarkovLanguage, SyntheticStream

BITS = {"fp32": 32, "bf16": 16, "int8": 8, "int4": 4, "e3m0": 4}
# the dense codecs; the sparse one is measured by bench_sparse_index.py
DENSE = tuple(BITS)


def fragment_tensors(model: Transformer, fragments: int) -> list[list[torch.Tensor]]:
    named = dict(model.named_parameters())
    plan = partition([(n, p.numel()) for n, p in named.items()], fragments)
    return [[named[n] for n in names] for names in plan.names]


def table(rows: list[tuple], header: tuple) -> None:
    print("".join(f"{h:>14}" for h in header))
    for row in rows:
        print("".join(f"{c:>14,}" if isinstance(c, int) else f"{c:>14}" for c in row))


def part_a(fragments: int, block: int, zstd: int) -> None:
    with torch.device("meta"):
        model = Transformer(model_args("124m", 50304, 1024))
    frags = fragment_tensors(model, fragments)
    print(
        f"\nA. 124m model (tied, vocab 50304), F={fragments} strided, block {block}; "
        f"zstd level {zstd} on N(0, 1e-3) stand-ins"
    )
    rows = []
    gen = torch.Generator().manual_seed(0)
    for p, params in enumerate(frags):
        n = sum(t.numel() for t in params)
        x = torch.randn(n, generator=gen) * 1e-3
        for name in DENSE:
            ideal = n * BITS[name] // 8
            size = make_codec(name, block).payload_size((n,))
            zsize = len(make_codec(name, block, zstd).encode(x)) if name != "fp32" else size
            rows.append(
                (
                    p,
                    name,
                    n,
                    ideal,
                    size,
                    f"{100 * (size / ideal - 1):+.3f}%",
                    zsize,
                    f"{8 * zsize / n:.3f}",
                )
            )
    table(
        rows,
        ("fragment", "codec", "params", "N*b/8", "payload", "overhead", "+zstd", "zstd bits/el"),
    )


def real_deltas(steps: int, fragments: int) -> list[torch.Tensor]:
    """Pseudo-gradients of the tiny model (vocab 256) after `steps` AdamW steps, per fragment
    (also the input of bench_sparse_index.py)."""
    torch.manual_seed(0)
    model = Transformer(model_args("tiny", 256, 128))
    start = [flatten(ps) for ps in fragment_tensors(model, fragments)]
    lang = MarkovLanguage(256, 8, seed=0)
    stream = SyntheticStream(lang, 8, 128, seed=0, stream=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    for _ in range(steps):
        batch = stream.next()
        loss = model.loss(batch[:, :-1], batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [
        s - flatten(ps) for s, ps in zip(start, fragment_tensors(model, fragments), strict=True)
    ]


def part_b(fragments: int, block: int, zstd: int, steps: int) -> None:
    deltas = real_deltas(steps, fragments)
    print(
        f"\nB. real pseudo-gradients: tiny model (vocab 256), {steps} AdamW steps, "
        f"F={fragments}, block {block}, zstd level {zstd}"
    )
    rows = []
    for name in DENSE:
        n = sum(d.numel() for d in deltas)
        plain = sum(len(make_codec(name, block).encode(d)) for d in deltas)
        packed = sum(len(make_codec(name, block, zstd).encode(d)) for d in deltas)
        rel = max(
            float(
                (make_codec(name, block).decode(make_codec(name, block).encode(d)) - d).norm()
                / d.norm()
            )
            for d in deltas
        )
        rows.append(
            (
                name,
                n,
                n * BITS[name] // 8,
                plain,
                f"{8 * plain / n:.3f}",
                packed,
                f"{8 * packed / n:.3f}",
                f"{100 * (1 - packed / plain):.1f}%",
                f"{rel:.4f}",
            )
        )
    table(
        rows,
        (
            "codec",
            "params",
            "N*b/8",
            "payload",
            "bits/el",
            "+zstd",
            "zstd bits/el",
            "zstd saves",
            "max rel err",
        ),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fragments", type=int, default=4)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--zstd-level", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30, help="inner steps for part B (H)")
    args = ap.parse_args()
    part_a(args.fragments, args.block_size, args.zstd_level)
    part_b(args.fragments, args.block_size, args.zstd_level, args.steps)


if __name__ == "__main__":
    main()

"""Cost of one outer sync for a 124M-parameter model, per fragment, through the real engine code.

send  = flatten local + delta (fp32) + encode
apply = decode M payloads + fp32 reduce in group order + Nesterov step + merge into local

Each is timed as the median of --repeats runs; the e3m0 apply is also reported as a ratio to the
fp32-codec apply measured in the same run. Prints a table; asserts nothing.

    .venv/bin/python benchmarks/bench_outer_apply.py [--size 124m] [--groups 2] [--fragments 4]
"""

from __future__ import annotations

import argparse

import torch

from streamloco.config import OuterConfig
from streamloco.outer_optim.engine import StreamingEngine, _InFlight
from streamloco.outer_optim.transport import CompletedHandle, InProcessHub
from streamloco.workers.model import Transformer, model_args
from timing import median_time  # benchmarks/timing.py (scripts run from the repo root)


def bench_codec(
    model: Transformer, codec: str, groups: int, fragments: int, zstd: int, repeats: int
) -> list[tuple[int, int, float, float]]:
    opts = OuterConfig(
        sync_every=fragments * 10,
        fragments=fragments,
        overlap=0,
        alpha=0.5,
        codec=codec,
        zstd_level=zstd,
    )
    engine = StreamingEngine(model, opts, InProcessHub(1).transport(0), timeout_s=60)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for p in range(fragments):
        n = engine.global_params[p].numel()
        # Realistic magnitudes: pseudo-gradients are small relative to the weights.
        payloads = {
            g: engine.codec.encode(torch.randn(n, generator=gen) * 1e-3) for g in range(groups)
        }

        def send(p=p):
            engine.in_flight.pop(p, None)
            engine.step_count += 1  # a fresh round key each time
            engine._send(p)

        def apply(p=p, payloads=payloads):
            engine.in_flight[p] = _InFlight(0, CompletedHandle(payloads), None)
            engine._apply(p)

        send_s = median_time(send, repeats)
        apply_s = median_time(apply, repeats)
        rows.append((p, n, send_s, apply_s))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="124m")
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--groups", type=int, default=2)
    ap.add_argument("--fragments", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Transformer(model_args(args.size, args.vocab, 256))
    total = sum(p.numel() for p in model.parameters())
    print(
        f"model {args.size}: {total:,} params; M={args.groups} groups, F={args.fragments} "
        f"fragments (strided); {args.threads} torch threads; median of {args.repeats}"
    )
    results = {}
    for codec, zstd in [("fp32", 0), ("e3m0", 0), ("e3m0", 3)]:
        results[(codec, zstd)] = bench_codec(
            model, codec, args.groups, args.fragments, zstd, args.repeats
        )
    base = {p: a for p, _, _, a in results[("fp32", 0)]}
    print(
        f"{'codec':<10}{'frag':>5}{'params':>14}{'send ms':>10}{'apply ms':>10}"
        f"{'apply/fp32':>12}{'apply GB/s':>12}"
    )
    for (codec, zstd), rows in results.items():
        name = codec + ("+zstd" if zstd else "")
        for p, n, send_s, apply_s in rows:
            gbs = n * 4 / apply_s / 1e9
            print(
                f"{name:<10}{p:>5}{n:>14,}{send_s * 1e3:>10.1f}{apply_s * 1e3:>10.1f}"
                f"{apply_s / base[p]:>12.2f}{gbs:>12.2f}"
            )
        whole = sum(r[3] for r in rows)
        print(
            f"{name:<10}{'all':>5}{total:>14,}{sum(r[2] for r in rows) * 1e3:>10.1f}"
            f"{whole * 1e3:>10.1f}{whole / sum(base.values()):>12.2f}"
            f"{total * 4 / whole / 1e9:>12.2f}"
        )


if __name__ == "__main__":
    main()

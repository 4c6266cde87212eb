"""What streaming, overlap and 4-bit payloads buy on a slow link, measured on one machine.

Two worker groups train the tiny model as threads over the in-process transport with a simulated
link (bandwidth per group, latency). For each link setting and each variant we measure the wall
clock, the time groups spent blocked waiting for payloads, and compute utilization =
1 - blocked / wall (median over --repeats runs). The variants follow the Streaming DiLoCo paper's
bandwidth table: DiLoCo (F=1, fp32) -> Streaming (F=3) -> + overlap (tau) -> + 4-bit e3m0.
The unlimited link in the same run is the baseline for the slowdown column. Asserts nothing.

    .venv/bin/python benchmarks/bench_overlap.py [--mbps 0 100 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics

from streamloco.config import load_config
from streamloco.simulate import run_simulation

VARIANTS = {
    "diloco fp32": ["--outer.fragments=1", "--outer.overlap=0", "--outer.codec='fp32'"],
    "streaming fp32": ["--outer.fragments=3", "--outer.overlap=0", "--outer.codec='fp32'"],
    "+ overlap": [
        "--outer.fragments=3",
        "--outer.overlap=5",
        "--outer.codec='fp32'",
        "--outer.alpha=0.5",
    ],
    "+ 4-bit e3m0": [
        "--outer.fragments=3",
        "--outer.overlap=5",
        "--outer.codec='e3m0'",
        "--outer.alpha=0.5",
    ],
}


def measure(mbps: float, latency_ms: float, variant: list[str], steps: int) -> tuple[float, ...]:
    cfg = load_config(
        None,
        [
            f"--train.steps={steps}",
            "--train.batch_size=8",
            "--train.eval_every=0",
            "--train.eval_batches=1",
            "--model.vocab_size=64",
            "--model.seq_len=64",
            "--outer.sync_every=30",
            "--inner.lr=3e-3",
            "--inner.warmup_steps=10",
            "--run.tensorboard=false",
            f"--transport.bandwidth_mbps={mbps}",
            f"--transport.latency_ms={latency_ms}",
            *variant,
        ],
    )
    res = run_simulation(cfg)
    blocked = max(g.blocked_s for g in res.groups)
    moved = res.groups[0].bytes_sent + res.groups[0].bytes_received
    return res.wall_s, blocked, moved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--mbps",
        type=float,
        nargs="+",
        default=[0.0, 100.0, 20.0],
        help="link bandwidths in Mbit/s (0 = unlimited, the baseline)",
    )
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--steps", type=int, default=90)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(
        f"tiny model, 2 groups (threads), {args.steps} steps, H=30; latency "
        f"{args.latency_ms} ms on limited links; median of {args.repeats}"
    )
    print(
        f"{'link':>10}  {'variant':<16}{'wall s':>9}{'blocked s':>11}{'util':>8}"
        f"{'slowdown':>10}{'MB moved/group':>16}"
    )
    base: dict[str, float] = {}
    for mbps in args.mbps:
        latency = args.latency_ms if mbps > 0 else 0.0
        for name, variant in VARIANTS.items():
            runs = [measure(mbps, latency, variant, args.steps) for _ in range(args.repeats)]
            wall = statistics.median(r[0] for r in runs)
            blocked = statistics.median(r[1] for r in runs)
            moved = runs[0][2]
            base.setdefault(name, wall)
            link = f"{mbps:g} Mb/s" if mbps > 0 else "unlimited"
            print(
                f"{link:>10}  {name:<16}{wall:>9.2f}{blocked:>11.2f}"
                f"{1 - blocked / wall:>8.1%}{wall / base[name]:>10.2f}{moved / 1e6:>16.2f}"
            )


if __name__ == "__main__":
    main()

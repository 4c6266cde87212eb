"""Per-group bytes per round of the all-gather and the two-phase reduce (outer.reduce), and what
the two-phase reduce's second quantization costs in eval loss.

Bytes: short real runs (`run_simulation`: the Trainers, the engine and the in-process hub;
bytes do not depend on Ray, nor on the batch: 4 sequences) of the demo config at M = 2, 4, 8
for three wire formats: e3m0 + zstd, e3m0 without zstd, sparse (C=4096, k=64, error feedback).
For each run, per group and round: bytes up, bytes down, and the ratio of each to ONE payload,
the all-gather's own upload in the same configuration (exactly one fragment payload per round).
Counts are exact, in the broker model of transport.py (an upload is counted once however many
groups read it); the medians are over groups (they differ only by shard size).

Loss: the eval loss of the global parameters after a longer run at M=4 (the demo config's batch)
for both reduces, median over --seeds seeds (each seed is a paired comparison: same data, same
initialization, the reduce is the only difference), with the two-phase reduce's median
re-encode error (owner side).

    .venv/bin/python benchmarks/bench_reduce_bytes.py [--byte-steps 30] [--loss-steps 150]
        [--seeds 2] [--groups 2 4 8]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

from streamloco.config import load_config
from streamloco.outer_optim.engine import StreamingEngine
from streamloco.outer_optim.reduce import bytes_per_round
from streamloco.results import RunResult
from streamloco.simulate import run_simulation

BASE = "configs/demo.toml"
FORMATS = {
    "e3m0+zstd": ["--outer.codec=e3m0", "--outer.zstd_level=3"],
    "e3m0": ["--outer.codec=e3m0", "--outer.zstd_level=0"],
    "sparse": [
        "--outer.codec=sparse",
        "--outer.zstd_level=0",
        "--outer.block_size=4096",
        "--outer.topk=64",
        "--outer.error_feedback=true",
        "--outer.alpha=0.0",
        "--outer.lr=1.4",
        "--outer.momentum=0.0",
    ],
}


def run(
    fmt: str, m: int, reduce: str, steps: int, seed: int = 0, batch: int = 0, log: bool = False
) -> RunResult:
    overrides = [
        *([f"--train.batch_size={batch}"] if batch else []),
        *FORMATS[fmt],
        f"--outer.reduce={reduce}",
        f"--train.groups={m}",
        f"--train.steps={steps}",
        f"--train.seed={seed}",
        "--train.threads=1",
        "--run.tensorboard=false",
        f"--train.eval_every={steps}",
        "--train.log_every=10",
    ]
    cfg = load_config(BASE, overrides)
    t0 = time.perf_counter()
    res = run_simulation(cfg)
    if log:
        print(f"  ({fmt}, M={m}, {reduce}: {time.perf_counter() - t0:.0f} s)", flush=True)
    assert res.globals_identical(), (fmt, m, reduce)
    return res


# Bytes depend on the model, not on the batch: the byte runs use a small one (4 sequences).
BYTES = {"batch": 4, "log": True}


def per_round(res: RunResult) -> tuple[float, float, int]:
    """Median over groups of (bytes up per round, bytes down per round), and the rounds."""
    ups, downs = [], []
    for g in res.groups:
        rounds = len(g.rounds)
        ups.append(sum(r.bytes_sent for r in g.rounds) / rounds)
        downs.append(sum(r.bytes_received for r in g.rounds) / rounds)
    return statistics.median(ups), statistics.median(downs), len(res.groups[0].rounds)


def bytes_table(groups: list[int], steps: int) -> None:
    print(
        "\n| format | M | reduce | up / round | down / round | up / P | down / P | "
        "(up+down) / P | formula (up, down) / P |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for fmt in FORMATS:
        for m in groups:
            base_up, base_down, rounds = per_round(run(fmt, m, "allgather", steps, **BYTES))
            payload = base_up  # the all-gather uploads exactly one payload per round
            for reduce, (up, down, n) in (
                ("allgather", (base_up, base_down, rounds)),
                ("two_phase", per_round(run(fmt, m, "two_phase", steps, **BYTES))),
            ):
                assert n == rounds
                f_up, f_down = bytes_per_round(reduce, m, 1.0)
                print(
                    f"| {fmt} | {m} | {reduce} | {up / 1e3:,.1f} kB | {down / 1e3:,.1f} kB | "
                    f"{up / payload:.3f} | {down / payload:.3f} | {(up + down) / payload:.3f} | "
                    f"{f_up:.3f}, {f_down:.3f} |",
                    flush=True,
                )


def loss_table(steps: int, seeds: int, m: int = 4) -> None:
    print(
        f"\n| format | M | reduce | eval loss after {steps} steps (median of {seeds} seeds) | "
        "per seed | owner re-encode rel. error (median) |"
    )
    print("|---|---|---|---|---|---|")
    for fmt in ("e3m0+zstd", "sparse"):
        for reduce in ("allgather", "two_phase"):
            with reencode_errors() as errors:
                losses = [
                    run(fmt, m, reduce, steps, seed, log=True).final_eval_loss
                    for seed in range(seeds)
                ]
            err = f"{statistics.median(errors):.3f}" if errors else "-"
            print(
                f"| {fmt} | {m} | {reduce} | {statistics.median(losses):.4f} | "
                f"{', '.join(f'{x:.4f}' for x in losses)} | {err} |",
                flush=True,
            )


@contextlib.contextmanager
def reencode_errors():
    """Collect every two-phase apply's owner-side re-encode error (SyncEvent.reduce_rel_error;
    the run records do not carry it) while the block runs."""
    errors: list[float] = []
    original = StreamingEngine._apply_two_phase

    def spy(self, *args, **kwargs):
        ev = original(self, *args, **kwargs)
        errors.append(ev.reduce_rel_error)
        return ev

    StreamingEngine._apply_two_phase = spy  # type: ignore[method-assign]
    try:
        yield errors
    finally:
        StreamingEngine._apply_two_phase = original  # type: ignore[method-assign]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--byte-steps", type=int, default=30)
    ap.add_argument("--loss-steps", type=int, default=150)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--groups", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--skip-loss", action="store_true")
    args = ap.parse_args()
    print(f"base {BASE}; bytes from {args.byte_steps}-step runs; P = one payload")
    bytes_table(args.groups, args.byte_steps)
    if not args.skip_loss:
        loss_table(args.loss_steps, args.seeds)


if __name__ == "__main__":
    main()

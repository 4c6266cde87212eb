"""Time blocked on communication per round, with and without overlap, at a simulated slow link.

`streamloco train` (launcher/driver.py `train()`) runs 2 worker groups x 1 rank as Ray actors on a
local Ray (1 CPU each), exchanging through the Ray transport with its simulated link (per group:
--bandwidth-mbps and --latency-ms; a payload's upload starts when it is sent, the download of the
other group's payload when both uploads have landed, and the apply tau steps after the send waits
for it). Model: the demo's shapes by default (tiny at vocab 8000, seq_len 128, batch 16, random
tokens), where an fp32 fragment takes on the order of a second per direction at 20 Mbit/s; the
payload sizes and link times are computed from the config and printed first.

Variants (the Streaming DiLoCo paper's ladder, H=30):
  DiLoCo             F=1, tau=0, fp32
  Streaming          F=3, tau=0, fp32
  + overlap          F=3, tau=--overlap, fp32 (alpha 0.5)
  + 4-bit e3m0       F=3, tau=--overlap, e3m0 (alpha 0.5)
plus, unless --no-baseline, DiLoCo on an unlimited link: the wall clock without any link cost
(the wall/ref column divides by it).

Per variant: the driver's wall clock (start-up excluded), time blocked waiting for exchanges in
total and per round (mean over groups), rounds (outer applies per group), bytes per group (sent +
received), and compute utilization = 1 - blocked / wall. Blocked time also holds waiting for
the slower group (two actors share the machine's cores): the unlimited-link row shows that
floor. The last round of a run is applied right after the last step (nothing left to overlap it
with), so it is blocked for its whole transfer in every variant. With --repeats > 1 every number
is the median over repeats. Asserts nothing.

    .venv/bin/python benchmarks/bench_blocked.py [--bandwidth-mbps 20] [--latency-ms 20]
        [--steps 90] [--overlap 5] [--repeats 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench_train_overhead import (  # benchmarks/ (scripts run from the root)
    shard_run_overrides,
    write_random_shards,
)
from streamloco.config import Config, load_config
from streamloco.outer_optim.codecs import make_codec
from streamloco.outer_optim.fragments import partition
from streamloco.outer_optim.transport import LinkModel
from streamloco.workers.trainer import build_model

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.toml"


def variants(overlap: int) -> dict[str, list[str]]:
    def v(fragments: int, tau: int, alpha: float, codec: str) -> list[str]:
        return [
            f"--outer.fragments={fragments}",
            f"--outer.overlap={tau}",
            f"--outer.alpha={alpha}",
            f"--outer.codec='{codec}'",
        ]

    return {
        "DiLoCo fp32": v(1, 0, 0.0, "fp32"),
        "Streaming fp32": v(3, 0, 0.0, "fp32"),
        "+ overlap": v(3, overlap, 0.5, "fp32"),
        "+ 4-bit e3m0": v(3, overlap, 0.5, "e3m0"),
    }


def make_config(args, data_dir: Path, name: str, mbps: float, latency_ms: float, variant) -> Config:
    return load_config(
        DEMO,
        [
            *shard_run_overrides(args, data_dir, args.steps),
            "--train.groups=2",
            "--train.log_every=10",
            f"--outer.sync_every={args.sync_every}",
            "--outer.zstd_level=0",
            "--cluster.cpus_per_rank=1",
            f"--transport.bandwidth_mbps={mbps}",
            f"--transport.latency_ms={latency_ms}",
            f"--run.name='{name}'",
            *variant,
        ],
    )


def payload_table(cfg: Config, link: LinkModel) -> list[str]:
    """Per fragment: elements, payload bytes and the link time of one round (M=2: upload own,
    then download the other group's) for fp32 and e3m0, from the config."""
    model = build_model(cfg, "cpu")
    named = [(n, p.numel()) for n, p in model.named_parameters()]
    lines = []
    for frags in sorted({1, 3}):
        plan = partition(named, frags, cfg.outer.pattern)
        for codec in ("fp32", "e3m0"):
            c = make_codec(codec, cfg.outer.block_size, 0)
            sizes = [c.payload_size((n,)) for n in plan.numels]
            shown = ", ".join(f"{s / 1e6:.2f} MB ({2 * link.transfer_s(s):.2f}s)" for s in sizes)
            lines.append(f"  F={frags} {codec:<5} per fragment: {shown}")
    return lines


def measure(cfg: Config, run_dir: Path) -> dict[str, float]:
    from streamloco.launcher.driver import train

    res = train(cfg, run_dir, progress=False)
    groups = res.groups
    blocked = statistics.fmean(g.blocked_s for g in groups)
    rounds = len(groups[0].quant_rel_error)  # group 0 records one per apply
    moved = statistics.fmean(g.bytes_sent + g.bytes_received for g in groups)
    return {
        "wall": res.wall_s,
        "blocked": blocked,
        "rounds": rounds,
        "per_round": blocked / max(rounds, 1),
        "bytes": moved,
        "util": 1 - blocked / res.wall_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bandwidth-mbps", type=float, default=20.0, help="per group, Mbit/s")
    ap.add_argument("--latency-ms", type=float, default=20.0, help="one-way link latency")
    ap.add_argument("--steps", type=int, default=90, help="inner steps per group")
    ap.add_argument("--sync-every", type=int, default=30, help="H")
    ap.add_argument("--overlap", type=int, default=5, help="tau of the overlap variants")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run DiLoCo on an unlimited link (the wall/ref column's reference)",
    )
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    import ray

    runs: list[tuple[str, float, float, list[str]]] = []  # (name, mbps, latency, overrides)
    mbps, lat = args.bandwidth_mbps, args.latency_ms
    found = variants(args.overlap)
    if args.baseline:
        runs.append(("DiLoCo fp32, no link limit", 0.0, 0.0, found["DiLoCo fp32"]))
    runs += [(name, mbps, lat, v) for name, v in found.items()]
    results: dict[str, list[dict[str, float]]] = {name: [] for name, *_ in runs}

    with tempfile.TemporaryDirectory(prefix="bench_blocked_") as tmp:
        data = write_random_shards(Path(tmp) / "shards", args.vocab, 2_000_000)
        cfg = make_config(args, data, "probe", mbps, lat, found["+ overlap"])
        link = LinkModel.from_mbps(mbps, lat)
        print(
            f"model {args.size}, vocab {args.vocab}, seq_len {args.seq_len}, batch {args.batch}; "
            f"2 groups x 1 rank (Ray actors, 1 CPU each); {args.steps} steps, "
            f"H={args.sync_every}, overlap tau={args.overlap}; link {mbps:g} Mbit/s, {lat:g} ms"
        )
        print("payload per fragment and its link time per round (upload + download, 2 groups):")
        print("\n".join(payload_table(cfg, link)))
        if args.repeats == 1:
            print("1 repeat (single measurements, not medians; --repeats N for medians)")
        else:
            print(f"median of {args.repeats} repeats")
        t0 = time.perf_counter()
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
        )
        print(f"ray.init {time.perf_counter() - t0:.1f}s", flush=True)
        try:
            for r in range(args.repeats):
                for i, (name, bw, latency, overrides) in enumerate(runs):
                    run_name = f"blocked{r}-{i}"
                    cfg = make_config(args, data, run_name, bw, latency, overrides)
                    t0 = time.perf_counter()
                    m = measure(cfg, Path(tmp) / "runs" / run_name)
                    print(
                        f"  repeat {r + 1} {name}: wall {m['wall']:.1f}s, blocked "
                        f"{m['blocked']:.1f}s (call {time.perf_counter() - t0:.1f}s)",
                        flush=True,
                    )
                    results[name].append(m)
        finally:
            ray.shutdown()

    def med(name: str, key: str) -> float:
        return statistics.median(m[key] for m in results[name])

    base = med(runs[0][0], "wall")
    print(
        f"\n{'variant':<28}{'link':>10}{'wall s':>8}{'blocked s':>11}{'rounds':>8}"
        f"{'s/round':>9}{'MB/group':>10}{'util':>8}{'wall/ref':>10}"
    )
    for name, bw, _, _ in runs:
        link_s = f"{bw:g} Mb/s" if bw > 0 else "unlimited"
        print(
            f"{name:<28}{link_s:>10}{med(name, 'wall'):>8.1f}{med(name, 'blocked'):>11.2f}"
            f"{med(name, 'rounds'):>8.0f}{med(name, 'per_round'):>9.2f}"
            f"{med(name, 'bytes') / 1e6:>10.1f}{med(name, 'util'):>8.1%}"
            f"{med(name, 'wall') / base:>10.2f}"
        )
    print(
        "wall: driver's wall clock without start-up; blocked: waiting for exchanges, mean over "
        "groups;\nMB/group: sent + received; util = 1 - blocked / wall; wall/ref: wall / "
        f"that of {runs[0][0]} (first row);\nthe last round (sent at the last step) is "
        "applied in finish(), with no steps left to overlap it, in every variant"
    )


if __name__ == "__main__":
    main()

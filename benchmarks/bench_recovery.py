"""Live recovery of a dead worker group, measured on a local Ray (prints numbers only).

Trains M groups (default 3, 0.5 CPU each) on the demo's model shapes over random-token shards,
kills group 1's actor after --kill-at steps (the `kill` fault drill), and reports:

- time from the group's death being noticed to its replacement training again;
- bytes of the live recovery (global parameters + outer momentum pulled from a healthy peer
  through the object store) against the size of a checkpoint of the same run;
- tokens/s of the surviving groups before the death, during the outage, and after the rejoin.

    .venv/bin/python benchmarks/bench_recovery.py [--groups 3] [--steps 150] [--kill-at 50]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bench_train_overhead import write_random_shards  # same directory
from streamloco.config import load_config
from streamloco.launcher.drills import Fault
from streamloco.launcher.driver import train

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.toml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=3)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--kill-at", type=int, default=50)
    ap.add_argument("--vocab", type=int, default=8000)
    a = ap.parse_args()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        write_random_shards(out / "shards", a.vocab, 5_000_000)
        cfg = load_config(
            DEMO,
            [
                "--data.source=shards",
                f"--data.dir={out / 'shards'}",
                f"--model.vocab_size={a.vocab}",
                f"--train.steps={a.steps}",
                f"--train.groups={a.groups}",
                f"--cluster.cpus_per_rank={2 / (a.groups + 1):.3f}",
                "--train.eval_every=0",
                "--train.log_every=5",
                "--run.checkpoint_every=30",
                f"--run.out_dir={out}",
                "--run.name=recovery",
            ],
        )
        result = train(cfg, out / "recovery", progress=False, faults=[Fault("kill", 1, a.kill_at)])
        acc = EventAccumulator(str(out / "recovery" / "tb"), size_guidance={"scalars": 0})
        acc.Reload()
        ckpt = max((out / "recovery" / "checkpoints").iterdir())
        ckpt_bytes = (ckpt / "state.pt").stat().st_size
        (_, rec_bytes), *_ = result.recoveries
        took = acc.Scalars("faults/recovery_s")[0]
        lost = [e.step for e in acc.Scalars("train/loss/group1")]
        death, back = next((b, c) for b, c in itertools.pairwise(lost) if c != b + 1)

        def tps(lo: int, hi: int) -> float:
            rates = [
                e.value
                for g in range(a.groups)
                if g != 1
                for e in acc.Scalars(f"perf/tokens_per_s/group{g}")
                if lo < e.step <= hi
            ]
            return statistics.median(rates) if rates else float("nan")

    ray.shutdown()
    before, during, after = tps(10, death), tps(death, back), tps(back + 10, a.steps)
    print(f"{a.groups} groups on 2 CPU cores; group 1 killed after step {a.kill_at}")
    print(f"group 1 last reported step {death}; its replacement joined at step {back}")
    print(f"time from the death being noticed to training again: {took.value:.1f}s")
    print(
        f"live recovery: {rec_bytes / 1e6:.2f} MB (global + outer momentum) vs one checkpoint "
        f"{ckpt_bytes / 1e6:.2f} MB ({ckpt_bytes / rec_bytes:.1f}x)"
    )
    print(
        "surviving groups' tokens/s per group (median of 5-step chunks): "
        f"before {before:,.0f}, during the outage {during:,.0f} ({during / before:.2f}x), "
        f"after the rejoin {after:,.0f} ({after / before:.2f}x)"
    )
    print(
        f"final: globals identical {result.globals_identical()}, "
        f"eval loss {result.eval_history[-1][1]:.3f}"
    )


if __name__ == "__main__":
    main()

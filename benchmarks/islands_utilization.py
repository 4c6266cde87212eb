"""Compute utilization against bandwidth on a REAL link (two islands of scripts/islands.sh, tc
limiting the veths) beside the SIMULATED link (same islands, tc off, the Ray transport's sleep)
and the analytic model (src/streamloco/bench/utilization.py), for the paper's ladder: DP (an
exchange every step), DiLoCo, Streaming, + overlap, + 4-bit; docs/results.md, "On real links".

Every run: 2 groups pinned to islands a and b, the synthetic language (no data files), tiny model.
Utilization = compute / (compute + time blocked on exchanges), compute = steps x the step time of
a run with no limit at all (the model's definition; `streamloco bench` divides by the wall time
instead, which here would also charge the end-of-run checkpoint gather, slow on a real link and
instant on a simulated one: that time is printed apart, as "tail s"). The model takes the same
step time, the payload sizes and the bandwidth (latency 0: netem does not exist here, so the real
link adds none either), once as the simulated link works (up, then down, on one link) and once
full duplex (up and down at once, as a real link). Each cell is the median of --repeats runs.
Also printed: the kernel's bytes on island b's link per real run (whole run: start-up,
checkpoint and final check included) and the engine's (the group on b: sent + received).

Run from the host (it brings the islands up and always tears them down):
    .venv/bin/python benchmarks/islands_utilization.py --mbps 10,25,100 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ISL = ROOT / "scripts" / "islands.sh"
PREFIX = "sbu"
VENV = Path(sys.executable).parent


def sh(*args: str, timeout: float = 900) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    r = subprocess.run([str(ISL), *args], capture_output=True, text=True, timeout=timeout, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"islands.sh {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def counters() -> dict[str, int]:
    out = {}
    for line in sh("counters", "--prefix", PREFIX).split("\n"):
        if line:
            name, sent, recv = line.split()
            out[name] = int(sent.split("=")[1]) + int(recv.split("=")[1])
    return out


def train(run_dir: Path, steps: int, outer: dict, sim_mbps: float, step_s: float | None) -> dict:
    """One `streamloco train` on the islands; its utilization, bytes and step time."""
    over = [
        f"--run.out_dir={run_dir.parent}", f"--run.name={run_dir.name}",
        f"--train.steps={steps}", "--train.eval_every=0", "--train.eval_batches=1",
        "--train.log_every=10", "--run.tensorboard=false", "--cluster.islands=['a','b']",
        "--outer.zstd_level=0", f"--transport.bandwidth_mbps={sim_mbps}",
        f"--inner.warmup_steps={min(10, steps)}",
        *(f"--outer.{k}={v}" for k, v in outer.items()),
    ]  # fmt: skip
    before = counters()
    log = sh(
        "exec", "a", "--prefix", PREFIX, "--", str(VENV / "streamloco"), "train",
        "--config", str(ROOT / "configs" / "synthetic.toml"), *over,
    )  # fmt: skip
    after = counters()
    recs = [json.loads(ln) for ln in (run_dir / "records.jsonl").read_text().splitlines()]
    totals = {}
    for r in recs:
        if r["record"] == "totals":
            totals[r["group"]] = r
    wall = float(log.split(" tokens in ")[1].split("s")[0])
    blocked = statistics.fmean(t["blocked_s"] for t in totals.values())
    compute = steps * step_s if step_s else wall - blocked
    return {
        "wall_s": wall,
        "blocked_s": blocked,
        "util": compute / (compute + blocked),
        "tail_s": wall - compute - blocked,
        "step_s": (wall - blocked) / steps,
        "engine_b": totals[1]["bytes_sent"] + totals[1]["bytes_received"],
        "kernel_b": after["b"] - before["b"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mbps", default="10,25,100")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--steps", type=int, default=60, help="steps per run (DP: a third)")
    args = ap.parse_args()
    from streamloco.bench import utilization as U
    from streamloco.config import load_config
    from streamloco.outer_optim.fragments import partition
    from streamloco.outer_optim.transport import LinkModel
    from streamloco.workers.trainer import build_model

    cfg = load_config(ROOT / "configs" / "synthetic.toml")
    named = [(n, p.numel()) for n, p in build_model(cfg, "cpu").named_parameters()]
    ladder = {  # as `streamloco bench` (bench/run.py), H=30, F=3 (synthetic.toml), tau=1
        "DP": dict(sync_every=1, fragments=1, overlap=0, codec="bf16", alpha=0.0),
        "DiLoCo": dict(sync_every=30, fragments=1, overlap=0, codec="bf16", alpha=0.0),
        "Streaming": dict(sync_every=30, fragments=3, overlap=0, codec="bf16"),
        "+ overlap": dict(sync_every=30, fragments=3, overlap=1, codec="bf16"),
        "+ 4-bit": dict(sync_every=30, fragments=3, overlap=1, codec="e3m0"),
    }
    mbps_list = [float(x) for x in args.mbps.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="sbu-"))
    sh("up", "2", "--rate", "1000mbit", "--prefix", PREFIX, timeout=400)
    rows = []
    try:
        for name, outer in ladder.items():
            steps = max(10, args.steps // 3) if name == "DP" else args.steps
            pattern = U.CommPattern.from_numels(
                name,
                partition(named, outer["fragments"], cfg.outer.pattern).numels,
                outer["sync_every"],
                outer["overlap"],
                outer["codec"],
                cfg.outer.block_size,
            )

            def runs(tag: str, sim: float, step_s=None, outer=outer, steps=steps, name=name):
                stem = name.strip("+ ").replace(" ", "-")
                return [
                    train(tmp / f"{stem}-{tag}-{i}", steps, outer, sim, step_s)
                    for i in range(args.repeats)
                ]

            sh("rate", "none", "--prefix", PREFIX)
            base = runs("unlimited", 0.0)
            step_s = statistics.median(r["step_s"] for r in base)
            for mbps in mbps_list:
                sh("rate", f"{mbps:g}mbit", "--prefix", PREFIX)
                real = runs(f"real{mbps:g}", 0.0, step_s)
                sh("rate", "none", "--prefix", PREFIX)
                sim = runs(f"sim{mbps:g}", mbps, step_s)
                link = LinkModel.from_mbps(mbps, 0)
                model = U.simulate(pattern, groups=2, steps=steps, step_s=step_s, link=link)
                # A real link is full duplex: the payload going up and the one coming down share
                # no time slot. At M=2 that is the model's "ring" accounting (one transfer of
                # one payload per round), where the simulated link queues up, then down.
                duplex = U.simulate(
                    pattern, groups=2, steps=steps, step_s=step_s, link=link, collective="ring"
                )
                row = {
                    "variant": name,
                    "mbps": mbps,
                    "step_s": step_s,
                    "real": statistics.median(r["util"] for r in real),
                    "sim": statistics.median(r["util"] for r in sim),
                    "model": model.utilization,
                    "model_duplex": duplex.utilization,
                    "tail_real": statistics.median(r["tail_s"] for r in real),
                    "tail_sim": statistics.median(r["tail_s"] for r in sim),
                    "kernel_mb": statistics.median(r["kernel_b"] for r in real) / 1e6,
                    "engine_mb": statistics.median(r["engine_b"] for r in real) / 1e6,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        sh("down", "--prefix", PREFIX)
    print(
        "\n| variant | s/step | Mbit/s | real link | simulated link | model | model, full duplex "
        "| tail s real / sim | kernel MB (b, real) | engine MB (b) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['variant']} | {r['step_s']:.3f} | {r['mbps']:g} | {r['real']:.1%} | "
            f"{r['sim']:.1%} | {r['model']:.1%} | {r['model_duplex']:.1%} | "
            f"{r['tail_real']:.1f} / {r['tail_sim']:.1f} | "
            f"{r['kernel_mb']:.2f} | {r['engine_mb']:.2f} |"
        )


if __name__ == "__main__":
    main()

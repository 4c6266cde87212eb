"""The GPU path end to end, for a machine with at least one NVIDIA GPU (prints numbers only).

Runs `streamloco train` (local Ray) on shards of random tokens with bf16 autocast, a GPU per
rank and NCCL inside a group, and prints tokens/s and MFU per configuration:

  1. 1 group x 1 rank, the 35m model (the paper's smallest), optionally torch.compile'd;
  2. 2 groups sharing the GPU(s) (0.5 GPU each when there is one): the Ray transport between
     groups with the state on the CPU;
  3. with >= 2 GPUs: 1 group x 2 ranks (DDP over NCCL, the sharded all-gather over NCCL).

    .venv/bin/python benchmarks/gpu_check.py [--steps 200] [--size 35m] [--compile]

On a machine without CUDA it says so and exits 2 (nothing here can be faked on a CPU).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench_train_overhead import write_random_shards  # same directory
from streamloco.config import load_config
from streamloco.launcher.driver import train
from streamloco.workers.model import mfu, model_args, peak_flops


def run(name: str, overrides: list[str], out: Path) -> None:
    cfg = load_config(
        None,
        [
            "--data.source=shards",
            f"--data.dir={out / 'shards'}",
            "--model.vocab_size=32000",
            "--model.seq_len=512",
            "--train.batch_size=32",
            "--train.eval_every=0",
            "--train.log_every=25",
            "--outer.sync_every=100",
            "--outer.fragments=2",
            "--outer.overlap=1",
            "--train.precision=bf16",
            f"--run.out_dir={out}",
            f"--run.name={name}",
            "--run.tensorboard=false",
            *overrides,
        ],
    )
    t0 = time.perf_counter()
    result = train(cfg, out / name, progress=False)
    wall = time.perf_counter() - t0
    args = model_args(cfg.model.size, cfg.model.vocab_size, cfg.model.seq_len)
    tps = result.tokens / result.wall_s
    peak = peak_flops(torch.cuda.get_device_name(0))
    util = f"{100 * mfu(tps, args, cfg.model.seq_len, peak):.1f}%" if peak else "n/a"
    print(
        f"{name:<28} {tps:>12,.0f} tok/s  MFU {util:>6}  loss {result.eval_history[-1][1]:.3f}  "
        f"globals identical {result.globals_identical()}  wall {wall:.0f}s (incl. start-up)",
        flush=True,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--size", default="35m")
    ap.add_argument("--compile", action="store_true")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible; run this on a GPU machine", file=sys.stderr)
        return 2
    gpus = torch.cuda.device_count()
    print(f"{gpus} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    common = [f"--model.size={a.size}", f"--train.steps={a.steps}", "--cluster.cpus_per_rank=2"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        write_random_shards(out / "shards", 32000, 50_000_000)
        one = [*common, "--train.groups=1", "--cluster.gpus_per_rank=1"]
        run("1 group x 1 rank", one, out)
        if a.compile:
            run("1 group x 1 rank, compiled", [*one, "--train.compile=true"], out)
        share = 0.5 if gpus == 1 else 1
        run(
            "2 groups x 1 rank",
            [*common, "--train.groups=2", f"--cluster.gpus_per_rank={share}"],
            out,
        )
        if gpus >= 2:
            ddp = [*common, "--train.groups=1", "--cluster.ranks_per_group=2"]
            run("1 group x 2 ranks (NCCL)", [*ddp, "--cluster.gpus_per_rank=1"], out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

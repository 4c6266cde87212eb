"""Framework overhead: tokens/s of one worker group against a bare PyTorch loop, same run.

Three ways to train the same model (default: the demo's shapes, model tiny at vocab 8000,
seq_len 128, batch 16) on the same number of torch threads, on synthetic data (random tokens):

  bare loop   Transformer + the same AdamW and schedule (`build_inner_optimizer`) + grad clip,
              batches generated before the clock starts; 10 warm-up steps, then `--steps`
              steps timed in chunks of 10.
  trainer     `Trainer` in this process (no Ray), 1 group, with the outer sync of the demo config
              (H=30, F=3, tau=1, e3m0 + zstd 3) over the in-process transport: the engine's
              send/apply, the data loader (random-token shards written to a temp dir) and the
              per-chunk report all count as overhead. A first (warm-up) `train()` chunk of 10
              steps, then `--steps` steps timed per 10-step chunk (each holds one send and one
              apply).
  launcher    `streamloco train` (launcher/driver.py `train()`) on a local Ray with 1 group of
              1 rank and cluster.cpus_per_rank = --threads, the same steps: a chunk's time is
              the gap between two report arrivals at the driver (the driver keeps two chunks
              queued, so this is the worker's chunk plus any Ray cost between chunks). Also
              shown: the workers' own chunk seconds (no Ray cost between chunks), and the
              start-up (placement group + actor + Trainer, up to the first step) separately, as
              is the one ray.init() that all repeats share. The final 1-step chunk (finish, eval,
              checkpoint) is not timed.

The three are interleaved per repeat, in an order rotated every repeat (a b c, b c a, c a b, ...),
so that a machine whose load changes affects them alike and none always runs right after the
launcher has torn its actor down. Reported per variant: the median tokens/s over all timed chunks
of all repeats (robust to bursts of load from other processes), its extremes, the median over
repeats of whole timed runs, and both as a ratio to the bare loop (goal: within 5%, i.e.
>= 0.95). Asserts nothing.

    .venv/bin/python benchmarks/bench_train_overhead.py [--steps 30] [--repeats 3] [--threads 1]
        [--size tiny] [--vocab 8000] [--seq-len 128] [--batch 16]

--profile FILE additionally runs the in-process Trainer once under cProfile and prints its top
functions by cumulative time (written to FILE as pstats).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from streamloco.config import Config, load_config
from streamloco.data_pipeline.manifest import Manifest, ShardEntry, TokenizerRef, write_manifest
from streamloco.data_pipeline.shards import write_shard
from streamloco.outer_optim.transport import InProcessHub
from streamloco.workers.inner import build_inner_optimizer
from streamloco.workers.model import lm_loss
from streamloco.workers.trainer import Placement, Trainer, build_model

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.toml"
CHUNK = 10  # train.log_every: steps per report, as in a default run


def write_random_shards(root: Path, vocab: int, train_tokens: int, seed: int = 0) -> Path:
    """A shard directory of random tokens (one language), for data.source=shards."""
    rng = np.random.default_rng(seed)
    dtype = np.uint16 if vocab <= 1 << 16 else np.uint32
    entries = []
    for split, n in (("train", train_tokens), ("validation", max(train_tokens // 50, 4096))):
        rel = f"{split}/rnd-00000.tok.zst"
        (root / split).mkdir(parents=True, exist_ok=True)
        info = write_shard(root / rel, rng.integers(0, vocab, n).astype(dtype), documents=1)
        entries.append(ShardEntry(rel, info.sha256, n, 1, info.bytes, "rnd", split))
    tok = TokenizerRef("random", "0" * 64, vocab, 0)
    m = Manifest(root, tok, np.dtype(dtype).name, 0.02, 0, train_tokens, 3)
    m.shards = sorted(entries, key=lambda e: (e.split, e.lang, e.path))
    write_manifest(m)
    return root


def shard_run_overrides(args, data_dir: Path, steps: int) -> list[str]:
    """Config overrides every benchmark run on random-token shards shares (no eval, no TB)."""
    return [
        "--data.source='shards'",
        f"--data.dir='{data_dir}'",
        f"--model.size='{args.size}'",
        f"--model.vocab_size={args.vocab}",
        f"--model.seq_len={args.seq_len}",
        f"--train.batch_size={args.batch}",
        f"--train.steps={steps}",
        "--train.eval_every=0",
        "--train.eval_batches=1",
        "--train.device='cpu'",
        f"--inner.warmup_steps={min(30, steps)}",
        "--cluster.ranks_per_group=1",
        "--run.tensorboard=false",
    ]


def make_config(
    args, data_dir: Path, out_dir: Path, total_steps: int, name: str = "overhead"
) -> Config:
    return load_config(
        DEMO,
        [
            *shard_run_overrides(args, data_dir, total_steps),
            "--train.groups=1",
            f"--train.threads={args.threads}",
            f"--train.log_every={CHUNK}",
            f"--cluster.cpus_per_rank={args.threads}",
            f"--run.out_dir='{out_dir}'",
            f"--run.name='{name}'",
        ],
    )


# ---- (a) bare loop ------------------------------------------------------------------------------

Chunks = list[tuple[int, float]]  # (tokens, seconds) per timed chunk of CHUNK steps


def bare_loop(cfg: Config, steps: int) -> Chunks:
    """A plain PyTorch training loop on pre-generated batches, after CHUNK warm-up steps."""
    torch.set_num_threads(cfg.train.threads)
    model = build_model(cfg, "cpu")
    opt, sched = build_inner_optimizer(model, cfg.inner, cfg.train.steps)
    g = torch.Generator().manual_seed(0)
    shape = (cfg.train.batch_size, cfg.model.seq_len + 1)
    batches = [
        torch.randint(0, cfg.model.vocab_size, shape, generator=g) for _ in range(CHUNK + steps)
    ]
    clip = cfg.inner.grad_clip

    def step(batch: torch.Tensor) -> float:
        loss = lm_loss(model(batch[:, :-1]), batch[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        return loss.item()

    for b in batches[:CHUNK]:  # warm-up, as long as the others' first (untimed) chunk
        step(b)
    chunks = []
    for i in range(CHUNK, CHUNK + steps, CHUNK):
        t0 = time.perf_counter()
        for b in batches[i : i + CHUNK]:
            step(b)
        tokens = CHUNK * cfg.train.batch_size * cfg.model.seq_len
        chunks.append((tokens, time.perf_counter() - t0))
    return chunks


# ---- (b) the Trainer in this process ---------------------------------------------------------


def trainer_in_process(cfg: Config, steps: int) -> Chunks:
    """`Trainer.train` chunks after the first one (the engine syncs as configured)."""
    torch.set_num_threads(cfg.train.threads)
    hub = InProcessHub(1)
    trainer = Trainer(cfg, Placement(0), hub.transport(0), device=torch.device("cpu"))
    trainer.train(CHUNK)  # warm-up chunk
    chunks = []
    while trainer.step < CHUNK + steps:
        t0 = time.perf_counter()
        rep = trainer.train(trainer.step + CHUNK)
        chunks.append((rep.tokens, time.perf_counter() - t0))
    return chunks


# ---- (c) the Ray launcher --------------------------------------------------------------------


@contextmanager
def report_arrivals():
    """Record (arrival time, report) of every chunk report the driver folds in."""
    import streamloco.launcher.driver as driver

    base = driver.Collector
    arrivals: list[tuple[float, object]] = []

    class Timed(base):  # type: ignore[misc, valid-type]
        def add(self, rep) -> None:
            arrivals.append((time.perf_counter(), rep))
            super().add(rep)

    driver.Collector = Timed
    try:
        yield arrivals
    finally:
        driver.Collector = base


def launcher(cfg: Config, run_dir: Path, steps: int) -> tuple[Chunks, Chunks, float]:
    """Per timed chunk: (tokens, seconds between report arrivals at the driver) and (tokens,
    the worker's own chunk seconds); and the start-up seconds up to the first step."""
    from streamloco.launcher.driver import train

    with report_arrivals() as arrivals:
        t0 = time.perf_counter()
        train(cfg, run_dir, progress=False)
    reps = [(t, r) for t, r in arrivals if r.rank == 0]
    startup = reps[0][0] - t0 - reps[0][1].seconds
    between, own = [], []
    for (t_prev, _), (t, r) in itertools.pairwise(reps):
        if CHUNK < r.step <= CHUNK + steps:
            between.append((r.tokens, t - t_prev))
            own.append((r.tokens, r.seconds))
    return between, own, startup


def profile_trainer(cfg: Config, steps: int, path: str, top: int = 25) -> None:
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    trainer_in_process(cfg, steps)
    prof.disable()
    prof.dump_stats(path)
    print(f"\ncProfile of the in-process Trainer ({steps} timed steps; saved to {path}):")
    pstats.Stats(prof).sort_stats("cumulative").print_stats(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="tiny", help="model.size (tiny, 35m, ...)")
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (= cpus_per_rank)")
    ap.add_argument(
        "--steps", type=int, default=30, help="timed steps (a multiple of 10; 30 = one H period)"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", metavar="FILE", help="also cProfile the in-process Trainer")
    args = ap.parse_args()
    if args.steps % CHUNK or args.steps < 2 * CHUNK:
        # the launcher's first timed chunk has no earlier report to measure from
        ap.error(f"--steps must be a multiple of {CHUNK} (the report chunk), at least {2 * CHUNK}")
    import ray

    total = CHUNK + args.steps + 1  # warm-up chunk, timed chunks, a 1-step final chunk
    names = ["bare loop", "trainer (in-process)", "launcher (Ray)", "launcher, chunk seconds"]
    runs: dict[str, list[Chunks]] = {name: [] for name in names}  # per repeat
    startups: list[float] = []
    order = ["bare", "trainer", "launcher"]
    with tempfile.TemporaryDirectory(prefix="bench_overhead_") as tmp:
        data = write_random_shards(Path(tmp) / "shards", args.vocab, 2_000_000)
        cfg = make_config(args, data, Path(tmp) / "runs", total)
        print(
            f"model {args.size}, vocab {args.vocab}, seq_len {args.seq_len}, batch {args.batch} "
            f"({args.batch * args.seq_len} tokens/step), {args.threads} torch thread(s); "
            f"{args.repeats} repeats x {args.steps} timed steps in chunks of {CHUNK}"
        )
        print(
            f"outer sync as configured: H={cfg.outer.sync_every} F={cfg.outer.fragments} "
            f"tau={cfg.outer.overlap} codec={cfg.outer.codec} zstd={cfg.outer.zstd_level} "
            f"(one send and one apply in every chunk)",
            flush=True,
        )
        t0 = time.perf_counter()
        ray.init(
            num_cpus=args.threads,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"OMP_NUM_THREADS": str(args.threads)}},
        )
        ray_init_s = time.perf_counter() - t0
        try:
            for r in range(args.repeats):
                seq = order[r % 3 :] + order[: r % 3]  # rotated: no variant always
                for kind in seq:
                    if kind == "bare":  # runs right after the launcher tore its actor down
                        runs["bare loop"].append(bare_loop(cfg, args.steps))
                    elif kind == "trainer":
                        runs["trainer (in-process)"].append(trainer_in_process(cfg, args.steps))
                    else:
                        run_dir = Path(tmp) / "runs" / f"overhead{r}"
                        between, own, startup = launcher(cfg, run_dir, args.steps)
                        runs["launcher (Ray)"].append(between)
                        runs["launcher, chunk seconds"].append(own)
                        startups.append(startup)
                line = ", ".join(f"{k} {_rate(v[-1]):,.0f}" for k, v in runs.items())
                print(f"  repeat {r + 1} ({' '.join(seq)}) tokens/s: {line}", flush=True)
        finally:
            ray.shutdown()
        if args.profile:
            profile_trainer(cfg, args.steps, args.profile)

    # chunk: median over every timed chunk of every repeat (robust to load bursts from other
    # processes); run: median over repeats of a repeat's tokens / seconds.
    chunk = {k: statistics.median(_rate([c]) for rep in v for c in rep) for k, v in runs.items()}
    run = {k: statistics.median(_rate(rep) for rep in v) for k, v in runs.items()}
    print(
        f"\n{'variant':<26}{'chunk tok/s':>12}{'min':>8}{'max':>8}{'run tok/s':>11}"
        f"{'vs bare':>9}{'(run)':>8}"
    )
    for name, reps in runs.items():
        rates = [_rate([c]) for rep in reps for c in rep]
        print(
            f"{name:<26}{chunk[name]:>12,.0f}{min(rates):>8,.0f}{max(rates):>8,.0f}"
            f"{run[name]:>11,.0f}{chunk[name] / chunk['bare loop']:>9.3f}"
            f"{run[name] / run['bare loop']:>8.3f}"
        )
    print(
        f"chunk tok/s: median over the {len(rates)} timed chunks of {CHUNK} steps (min, max: "
        "the extreme chunks); run tok/s: median over repeats of the timed steps' tokens/s;\n"
        "vs bare: ratio of the chunk medians to the bare loop's (goal >= 0.95), (run): of the "
        "run medians"
    )
    print(
        f"start-up: ray.init {ray_init_s:.1f}s (once); launcher up to the first step "
        f"(placement group, actor, Trainer) median {statistics.median(startups):.1f}s "
        f"(min {min(startups):.1f}, max {max(startups):.1f})"
    )


def _rate(chunks: Chunks) -> float:
    return sum(t for t, _ in chunks) / sum(s for _, s in chunks)


if __name__ == "__main__":
    main()

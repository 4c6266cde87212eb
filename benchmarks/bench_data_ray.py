"""Tokenizing on Ray: our own Ray tasks (`RayExecutor`) against Ray Data, on the demo corpus x4.

    .venv/bin/pip install "ray[data]==2.60.0"   # Ray Data needs pandas and pyarrow
    .venv/bin/python benchmarks/bench_data_ray.py [--repeats R] [--workers N] [--scale S]

One local Ray instance with N CPUs (default 2), the demo corpus written S times (default 4) as
files under a temp dir, a tokenizer trained on it first (not timed). Each median of R runs,
interleaved:

1. **reading**: the corpus files into documents. (a) our reader (`iter_documents`) in the
   driver, alone; (b) Ray Data's `read_json` (zstd streams), N CPUs, rows pulled to the driver.
2. **encode**: the texts as chunks through (a) `RayExecutor.map_ordered` (Ray tasks, ordered
   bounded window) and (b) Ray Data `from_items` -> `map` (preserve_order) -> `iter_rows`, both
   running the pipeline's own encode function; results pulled to the driver.
3. **end to end** `tokenize_corpus` (read in the driver, encode on Ray, shards + manifest
   written by the driver) with `RayExecutor` and with a `RayDataExecutor` (section 2b wrapped
   in the `Executor` protocol; it materializes the chunk list first, see below); the two
   outputs are compared byte for byte.

What decides between them is printed as numbers; the choice and its reasons are in docs/data.md
("Scale-out"). Ray Data's `from_items` needs the whole input in the driver's memory, which a
corpus beyond one machine cannot be: it is measured here as the cost of Ray Data's execution
engine alone, the part a file-based Ray Data pipeline would share.
"""

from __future__ import annotations

import argparse
import filecmp
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import ray

from streamloco.data_pipeline.corpus import iter_documents
from streamloco.data_pipeline.demo import write_demo_corpus
from streamloco.data_pipeline.tokenize import _encode, _Encoder, tokenize_corpus
from streamloco.launcher.ray_executor import RayExecutor
from streamloco.tokenizer.model import Tokenizer, TokenizerOptions
from streamloco.tokenizer.train import train_tokenizer

# benchmarks/timing.py (scripts run from the repo root)
from timing import medians, wall_and_cpu

S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")


class RayDataExecutor:
    """The `Executor` protocol on Ray Data (benchmark only): ordered `map` over the items."""

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def map_ordered(self, fn: Callable[[S, T], R], shared: S, items: Iterable[T]) -> Iterator[R]:
        ray.data.DataContext.get_current().execution_options.preserve_order = True
        shared_ref = ray.put(shared)

        def apply(row: dict[str, Any]) -> dict[str, Any]:
            return {"out": fn(ray.get(shared_ref), list(row["item"]))}

        items = list(items)  # materialized: Ray Data reads no generator
        ds = ray.data.from_items(items, override_num_blocks=len(items))  # one chunk per task
        pool = ray.data.TaskPoolStrategy(size=self.workers)
        for row in ds.map(apply, compute=pool, num_cpus=1).iter_rows():
            yield row["out"]


def corpus_files(tmp: Path, scale: int) -> list[str]:
    src = tmp / "demo"
    write_demo_corpus(src)
    out = tmp / "x"
    out.mkdir()
    files = []
    for k in range(scale):
        for f in sorted(src.glob("*.jsonl.zst")):
            dst = out / f"{f.name.split('.')[0]}-{k}.jsonl.zst"
            shutil.copy(f, dst)
            files.append(str(dst))
    return files


def chunked(texts: list[str], size: int = 256) -> list[list[str]]:
    return [texts[i : i + size] for i in range(0, len(texts), size)]


def row(name: str, runs: list[tuple[float, float]], base: float | None = None) -> None:
    wall, cpu = medians(runs)
    ratio = f"{base / wall:8.2f}x" if base else " " * 9
    print(f"  {name:46s} {wall:7.2f} s  {ratio}   (driver CPU {cpu:.2f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=8000)
    args = ap.parse_args()
    n = args.workers
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        files = corpus_files(tmp, args.scale)
        docs = list(iter_documents(files))
        opts = TokenizerOptions(vocab_size=args.vocab, max_chars=3_000_000)
        tok_path = train_tokenizer(docs[: len(docs) // args.scale], tmp / "tok", opts)
        chars = sum(len(x.text) for x in docs)
        print(f"demo corpus x{args.scale}: {len(files)} files, {len(docs)} documents, "
              f"{chars:,} characters; Ray with {n} CPUs; median of {args.repeats}")  # fmt: skip
        ray.init(num_cpus=n, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        try:
            enc = _Encoder(Tokenizer.load(tok_path), "uint16")
            chunks = chunked([x.text for x in docs])
            ours_read, rd_read, ours_enc, rd_enc, ours_e2e, rd_e2e = ([] for _ in range(6))
            outs: dict[str, Path] = {}
            for k in range(args.repeats):
                ours_read.append(wall_and_cpu(lambda: sum(1 for _ in iter_documents(files))))
                rd_read.append(wall_and_cpu(lambda: ray.data.read_json(
                    files, lines=True,
                    num_cpus=1, concurrency=n).count()))  # fmt: skip
                for runs, ex in ((ours_enc, RayExecutor(n)), (rd_enc, RayDataExecutor(n))):
                    encoded = ex.map_ordered(_encode, enc, chunks)
                    runs.append(wall_and_cpu(lambda it=encoded: sum(1 for _ in it)))
                for name, runs, ex in (("tasks", ours_e2e, RayExecutor(n)),
                                       ("data", rd_e2e, RayDataExecutor(n))):  # fmt: skip
                    out = outs[name] = tmp / f"shards-{name}-{k}"
                    runs.append(wall_and_cpu(lambda ex=ex, out=out: tokenize_corpus(
                        lambda: iter_documents(files), tok_path, out, executor=ex,
                        progress=False)))  # fmt: skip
            same = not filecmp.dircmp(outs["tasks"], outs["data"]).diff_files and all(
                filecmp.cmp(p, outs["data"] / p.relative_to(outs["tasks"]), shallow=False)
                for p in outs["tasks"].rglob("*") if p.is_file())  # fmt: skip
        finally:
            ray.shutdown()
        print("1. reading the corpus files (wall; ratio = ours / Ray Data wall)")
        row("our reader, in the driver", ours_read)
        row("Ray Data read_json, rows counted", rd_read, medians(ours_read)[0])
        print("2. encoding the chunks, results in the driver")
        row("own Ray tasks (RayExecutor)", ours_enc)
        row("Ray Data map (preserve_order)", rd_enc, medians(ours_enc)[0])
        print("3. end to end tokenize_corpus (read, encode on Ray, shards written)")
        row("own Ray tasks (RayExecutor)", ours_e2e)
        row("Ray Data map (preserve_order)", rd_e2e, medians(ours_e2e)[0])
        print(f"   shards and manifest byte-identical between the two: {same}")
        print(f"   ({os.cpu_count()} cores on this machine)")


if __name__ == "__main__":
    main()

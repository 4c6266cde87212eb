"""Data pipeline numbers: tokenization throughput, shard compression, loader vs training speed.

    .venv/bin/python benchmarks/bench_data.py [--repeats R] [--workers N] [--vocab V]
        [--scale S] [--synthetic] [--json PATH] [--tokenize-only]

Corpus: the demo corpus (`write_demo_corpus` into a temp dir; needs the `demo` extra), else
(or with --synthetic) a synthetic multilingual text of similar size. A tokenizer of V pieces is
trained on it first (not timed); the corpus is then repeated S times (default 4) so that the
process pool's start-up is amortized as it would be on a real corpus. Then, all in this run, on
the same cores:

1. tokenize_corpus with N worker processes (documents already in memory, shards written, the
   manifest included) against SentencePiece's own batched encode ``sp.encode(texts,
   num_threads=N)`` on the same, already normalized, texts. Both count tokens without eos. The
   ratio pipeline/SentencePiece is the figure; N=1 is shown too, with the share of the time
   spent in `normalize` (measured on one core) and the pool start-up time (a one-document run).
2. All tokens of the unrepeated corpus as one shard at zstd levels 1, 3, 9, 19: bytes per
   token (raw uint16 is 2.0), shard write and streaming read speed in MB/s of uncompressed
   tokens and in tokens/s.
3. MixtureLoader tokens/s over the unrepeated corpus (B=8, T=256, the temperature mixture)
   against the tokens/s that the tiny model trains at on this CPU (forward, backward, AdamW
   step; same B and T).

Every time is the median of R runs. Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import sentencepiece as spm

from streamloco.data_pipeline.manifest import load_manifest
from streamloco.data_pipeline.shards import iter_shard_chunks, write_shard
from streamloco.data_pipeline.tokenize import tokenize_corpus
from streamloco.text.documents import Document
from streamloco.tokenizer.model import Tokenizer, TokenizerOptions
from streamloco.tokenizer.train import train_tokenizer

# benchmarks/timing.py (scripts run from the repo root)
from timing import median_time, medians, wall_and_cpu


def load_corpus(tmp: Path, synthetic: bool) -> tuple[list[Document], str]:
    if not synthetic:
        try:
            from streamloco.data_pipeline.corpus import iter_documents
            from streamloco.data_pipeline.demo import write_demo_corpus
            from streamloco.data_pipeline.inputs import CorpusSpec

            write_demo_corpus(tmp / "demo")
            specs = [CorpusSpec(str(p)) for p in sorted((tmp / "demo").glob("*.jsonl.zst"))]
            return list(iter_documents(specs)), "demo corpus"
        except (ImportError, ValueError) as e:
            print(f"demo corpus unavailable ({e}); using synthetic text")
    rng = random.Random(0)
    syll = {
        "nya": "ma ku dzi nga wa mbo chi ya li",
        "nah": "tla tl itz ca hua mo ne qui",
        "oto": "hñä ma̱ nzä ra ngu ʼbe nda",
        "spa": "de la que el en los se del por",
    }
    docs = []
    for lang, s in syll.items():
        parts = s.split()
        n = 2000 if lang == "spa" else 500
        for i in range(n):
            words = ["".join(rng.choices(parts, k=rng.randint(1, 3))) for _ in range(400)]
            docs.append(Document(" ".join(words), lang, "synthetic", i + 1))
    return docs, "synthetic"


def bench_tokenize(docs, tok_path: Path, tmp: Path, workers: int, repeats: int) -> list[dict]:
    tok = Tokenizer.load(tok_path)
    texts = [tok.normalize(d.text) for d in docs]
    sp = spm.SentencePieceProcessor(model_file=str(tok_path))
    norm_s = median_time(lambda: [tok.normalize(d.text) for d in docs], repeats)
    rows = []
    for n in sorted({1, workers}):
        sp_tokens = sum(map(len, sp.encode(texts, num_threads=n)))
        runs = iter(range(repeats))

        def pipeline(n=n, runs=runs) -> None:
            out = tmp / f"tok-{n}-{next(runs)}"
            tokenize_corpus(lambda: docs, tok_path, out, workers=n, progress=False,
                            shard_tokens=1_000_000, validation_fraction=0.01)  # fmt: skip

        # interleaved (SentencePiece, pipeline, SentencePiece, ...): a burst of load on the
        # shared machine hits both, not one
        sp_runs, pipe_runs = [], []
        for _ in range(repeats):
            sp_runs.append(wall_and_cpu(lambda n=n: sp.encode(texts, num_threads=n)))
            pipe_runs.append(wall_and_cpu(pipeline))
        (sp_s, sp_cpu), (pipe_s, pipe_cpu) = medians(sp_runs), medians(pipe_runs)
        startup = iter(range(repeats))
        start_s = median_time(
            lambda n=n, it=startup: tokenize_corpus(
                lambda: docs[:1], tok_path, tmp / f"one-{n}-{next(it)}", workers=n, progress=False
            ),
            repeats,
        )
        m = load_manifest(tmp / f"tok-{n}-0")
        pipe_tokens = sum(s.tokens - s.documents for s in m.shards)  # without the eos tokens
        rows.append({
            "workers": n,
            "sentencepiece_tok_s": sp_tokens / sp_s,
            "pipeline_tok_s": pipe_tokens / pipe_s,
            "ratio": (pipe_tokens / pipe_s) / (sp_tokens / sp_s),
            # tokens per CPU second, pipeline over SentencePiece: what busy cores cannot change
            "cpu_ratio": (pipe_tokens / pipe_cpu) / (sp_tokens / sp_cpu),
            "normalize_share": norm_s / n / pipe_s,
            "startup_s": start_s,
            "tokens": pipe_tokens,
            "sp_tokens": sp_tokens,
        })  # fmt: skip
    return rows


def bench_zstd(tokens: np.ndarray, tmp: Path, repeats: int) -> list[dict]:
    rows, mb = [], tokens.nbytes / 1e6
    for level in (1, 3, 9, 19):
        path = tmp / f"level{level}.tok.zst"
        write_s = median_time(lambda lv=level, p=path: write_shard(p, tokens, 1, lv), repeats)
        read_s = median_time(lambda p=path: sum(map(len, iter_shard_chunks(p))), repeats)
        rows.append({
            "level": level,
            "bytes_per_token": path.stat().st_size / tokens.size,
            "write_MB_s": mb / write_s,
            "read_MB_s": mb / read_s,
            "write_tok_s": tokens.size / write_s,
            "read_tok_s": tokens.size / read_s,
        })  # fmt: skip
    return rows


def bench_loader(data_dir: Path, vocab: int, repeats: int, batches: int = 200) -> dict:
    # imported here: spawned tokenizer workers re-import this script, and torch costs them ~1.5 s
    import torch

    from streamloco.data_pipeline.loader import MixtureLoader
    from streamloco.workers.model import Transformer, model_args

    manifest = load_manifest(data_dir)
    b, t = 8, 256

    def read() -> None:
        loader = MixtureLoader(manifest, batch_size=b, seq_len=t, seed=0, group=0, num_groups=1)
        for _ in range(batches):
            loader.next_batch()

    load_s = median_time(read, repeats)
    torch.manual_seed(0)
    model = Transformer(model_args("tiny", vocab_size=vocab, max_seq_len=t))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loader = MixtureLoader(manifest, batch_size=b, seq_len=t, seed=0, group=0, num_groups=1)
    batch = loader.next_batch()

    def step() -> None:
        loss = model.loss(batch[:, :-1], batch[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up: allocator, kernels
    train_s = median_time(step, max(repeats, 5))
    return {
        "loader_tok_s": batches * b * t / load_s,
        "train_tok_s": b * t / train_s,
        "ratio": (batches * b * t / load_s) / (b * t / train_s),
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--scale", type=int, default=4, help="repeat the corpus S times")
    ap.add_argument("--synthetic", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--tokenize-only", action="store_true", help="section 1 only")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        docs, source = load_corpus(tmp, args.synthetic)
        opts = TokenizerOptions(vocab_size=args.vocab, max_chars=3_000_000)
        tok_path = train_tokenizer(docs, tmp / "tok", opts)
        # the unrepeated corpus for sections 2 and 3 (repeats would flatter zstd's ratio)
        data = tmp / "corpus"
        tokenize_corpus(lambda: docs, tok_path, data, workers=1, progress=False)
        docs = docs * args.scale
        chars = sum(len(x.text) for x in docs)
        print(f"corpus: {source} x{args.scale}, {len(docs)} documents, {chars:,} characters, "
              f"{os.cpu_count()} cores")  # fmt: skip
        result = {"corpus": source, "documents": len(docs), "chars": chars}

        result["tokenize"] = bench_tokenize(docs, tok_path, tmp, args.workers, args.repeats)
        print("\n1. tokenization throughput (tokens/s, eos excluded)")
        print("workers  SentencePiece   pipeline  pipeline/SP  per CPU s  normalize share  "
              "start-up s")  # fmt: skip
        for r in result["tokenize"]:
            print(f"{r['workers']:7d}  {r['sentencepiece_tok_s']:13,.0f}  "
                  f"{r['pipeline_tok_s']:9,.0f}  {r['ratio']:11.2f}  {r['cpu_ratio']:9.2f}  "
                  f"{r['normalize_share']:15.0%}  {r['startup_s']:10.2f}")  # fmt: skip

        if args.tokenize_only:
            return
        m = load_manifest(data)
        tokens = np.concatenate([np.concatenate(list(iter_shard_chunks(m.shard_path(s))))
                                 for s in m.shards])  # fmt: skip
        result["zstd"] = bench_zstd(tokens, tmp, args.repeats)
        print(f"\n2. shard compression ({tokens.size:,} tokens, {m.dtype}; raw = 2.00 B/token)")
        print("level  bytes/token  write MB/s  read MB/s  write tok/s  read tok/s")
        for r in result["zstd"]:
            print(f"{r['level']:5d}  {r['bytes_per_token']:11.3f}  {r['write_MB_s']:10.1f}  "
                  f"{r['read_MB_s']:9.1f}  {r['write_tok_s']:11.3g}  "
                  f"{r['read_tok_s']:10.3g}")  # fmt: skip

        result["loader"] = bench_loader(data, Tokenizer.load(tok_path).vocab_size, args.repeats)
        r = result["loader"]
        print("\n3. loader vs training (B=8, T=256, tiny model, "
              f"{r['torch_threads']} torch threads)")  # fmt: skip
        print(f"loader {r['loader_tok_s']:,.0f} tok/s, training {r['train_tok_s']:,.0f} tok/s, "
              f"loader/training = {r['ratio']:.1f}x")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

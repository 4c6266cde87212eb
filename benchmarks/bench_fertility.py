"""Fertility and parity per language of tokenizers trained three ways on the demo corpus.

    .venv/bin/python benchmarks/bench_fertility.py [--corpus DIR] [--vocab-size 8000]
        [--max-chars 3000000] [--heldout 0.1] [--seed 0] [--keep DIR] [--json PATH]

Writes the demo corpus (`write_demo_corpus`, needs the ``demo`` extra) to a temporary directory
unless ``--corpus`` names one already written, splits every language's documents into train and
held-out by the pipeline's own per-document hash (`split_of`), trains three SentencePiece
tokenizers (same vocabulary size, sample size bound and seed): T=1 and T=5 with pieces split by
Unicode script (the defaults before `split_by_script`), and T=5 without (today's default). It
prints `fertility_report` on the held-out documents for each, then the per-language change from
T=1 to T=5 and from splitting by script to not. The sample bound keeps the run to a few minutes
on two cores. Numbers are printed, never asserted; they are deterministic (no timing in the
tables), so one run is the figure.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from streamloco.data_pipeline.corpus import iter_documents
from streamloco.data_pipeline.inputs import CorpusSpec
from streamloco.data_pipeline.tokenize import split_of
from streamloco.text.documents import Document
from streamloco.tokenizer.model import Tokenizer, TokenizerOptions
from streamloco.tokenizer.report import fertility_report, format_report
from streamloco.tokenizer.train import train_tokenizer

# name -> TokenizerOptions fields that differ between the runs
RUNS = {
    "T=1": {"temperature": 1.0, "split_by_script": True},
    "T=5": {"temperature": 5.0, "split_by_script": True},
    "T=5, no script split": {"temperature": 5.0, "split_by_script": False},
}


def load_split(corpus: Path, heldout: float, seed: int) -> tuple[list[Document], list[Document]]:
    docs = list(iter_documents([CorpusSpec(str(corpus / "*.jsonl.zst"))], on_error="fail"))
    train = [d for d in docs if split_of(d, heldout, seed) == "train"]
    held = [d for d in docs if split_of(d, heldout, seed) == "validation"]
    return train, held


def compare(rows: dict[str, list[dict]], shares: dict[str, dict], a: str, b: str,
            reference: str) -> str:  # fmt: skip
    """Markdown table of the change from run `a` to run `b`, then the parity gap of the languages
    that pay more than the reference in `a` (gap = parity - 1)."""
    ra, rb = ({r["lang"]: r for r in rows[t]} for t in (a, b))
    sa, sb = shares[a], shares[b]
    lines = [
        f"| lang | sample share {a} / {b} | tokens/char {a} | tokens/char {b} | change "
        f"| parity {a} | parity {b} | byte fallback {a} / {b} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    gaps = []
    for lang in ra:
        x, y = ra[lang], rb[lang]
        change = y["tokens_per_char"] / x["tokens_per_char"] - 1
        lines.append(
            f"| {lang} | {sa.get(lang, 0):.1%} / {sb.get(lang, 0):.1%} "
            f"| {x['tokens_per_char']:.3f} | {y['tokens_per_char']:.3f} | {change:+.1%} "
            f"| {x['parity']:.2f} | {y['parity']:.2f} "
            f"| {x['byte_fallback_rate']:.2%} / {y['byte_fallback_rate']:.2%} |"
        )
        if lang != reference and x["parity"] > 1.05:
            gap1, gap2 = x["parity"] - 1, y["parity"] - 1
            gaps.append(f"{lang} {gap1:.2f} -> {gap2:.2f} ({gap2 / gap1 - 1:+.0%})")
    lines.append("")
    lines.append(
        f"parity gap to {reference} (parity - 1) of the languages above 1.05 in {a}: "
        + ("; ".join(gaps) or "none")
    )
    return "\n".join(lines)


def run(args: argparse.Namespace, corpus: Path, work: Path) -> dict:
    train, held = load_split(corpus, args.heldout, args.seed)
    print(f"train documents: {len(train):,}   held-out documents: {len(held):,}")
    out: dict = {"args": vars(args) | {"corpus": str(corpus)}, "runs": {}}
    rows, shares = {}, {}
    for k, (name, fields) in enumerate(RUNS.items()):
        opts = TokenizerOptions(
            vocab_size=args.vocab_size, max_chars=args.max_chars, seed=args.seed, **fields
        )
        t0 = time.perf_counter()
        path = train_tokenizer(train, work / f"spm_{k}", opts)
        seconds = time.perf_counter() - t0
        tok = Tokenizer.load(path)
        rows[name] = fertility_report(tok, held, reference_lang=args.reference)
        sample = tok.sidecar["sample"]
        print(f"\n## {name}: trained in {seconds:.1f} s, vocab {tok.vocab_size}")
        total = sum(sample["chars"].values())
        shares[name] = {k: v / total for k, v in sample["chars"].items()}
        print(
            f"sample: {total:,} chars; "
            + ", ".join(f"{k} {v:.1%}" for k, v in shares[name].items())
        )
        print(format_report(rows[name]))
        out["runs"][name] = {"train_s": seconds, "sample": sample, "rows": rows[name]}
    for a, b in (("T=1", "T=5"), ("T=5", "T=5, no script split")):
        print(f"\n## change from {a} to {b} (held-out text)")
        print(compare(rows, shares, a, b, args.reference))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, help="demo corpus dir (default: write a fresh one)")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--max-chars", type=int, default=3_000_000, help="training sample bound")
    p.add_argument("--heldout", type=float, default=0.1, help="held-out share per language")
    p.add_argument("--seed", type=int, default=0, help="split and sample seed")
    p.add_argument("--reference", default="spa", help="language parity is measured against")
    p.add_argument("--keep", type=Path, help="keep the tokenizers in this directory")
    p.add_argument("--json", type=Path, help="also write all numbers as JSON here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = args.corpus
        if corpus is None:
            from streamloco.data_pipeline.demo import write_demo_corpus

            corpus = Path(tmp) / "demo"
            print(write_demo_corpus(corpus).report())
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        out = run(args, corpus, work)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

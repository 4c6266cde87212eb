"""The data pipeline's stages driven by one Config: corpus -> tokenizer -> shards -> report.

Each function here only translates config keys into the stage's own options; the stages live in
corpus.py, tokenizer/, tokenize.py and stay usable without a Config. The train/validation split is
one rule everywhere (`split_of`: a hash of the document, per language): the tokenizer trains on the
train split only, the report measures fertility on the validation split, and the shards carry the
same split, so no held-out text is ever seen by the tokenizer or the model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streamloco.atomic import atomic_write_bytes
from streamloco.config import Config
from streamloco.data_pipeline.corpus import iter_documents
from streamloco.data_pipeline.executor import Executor
from streamloco.data_pipeline.inputs import CorpusSpec, fingerprint_inputs
from streamloco.data_pipeline.manifest import Manifest
from streamloco.data_pipeline.read_stats import ReadStats, format_skips
from streamloco.data_pipeline.tokenize import split_of, tokenize_corpus
from streamloco.text.documents import Document
from streamloco.text.normalize import NormalizeOptions


def corpus_specs(cfg: Config) -> list[CorpusSpec]:
    if not cfg.corpus.inputs:
        raise ValueError(
            "corpus.inputs: empty; list your corpus files (or run `streamloco data demo "
            "data/demo` and use configs/demo.toml)"
        )
    specs = []
    for raw in cfg.corpus.inputs:
        spec = CorpusSpec.parse(raw)
        specs.append(
            CorpusSpec(
                spec.path, spec.format, spec.lang, cfg.corpus.text_field, cfg.corpus.lang_field
            )
        )
    return specs


class CorpusReader:
    """A callable giving a fresh stream of the corpus (one split, or all documents).

    `stats` counts the latest pass only: the tokenizer reads the corpus twice (count, then
    sample), and its skips must not be reported twice.
    """

    def __init__(self, cfg: Config, split: str | None = None) -> None:
        self.cfg, self.split, self.specs = cfg, split, corpus_specs(cfg)
        self.stats = ReadStats()

    def __call__(self) -> Iterator[Document]:
        cfg, split = self.cfg, self.split
        fraction, seed = cfg.data.validation_fraction, cfg.data.split_seed
        self.stats = stats = ReadStats()
        pins = cfg.corpus.pins or None
        for doc in iter_documents(self.specs, on_error=cfg.corpus.on_error, stats=stats, pins=pins):
            if split is None or split_of(doc, fraction, seed) == split:
                yield doc


def tokenizer_model_path(cfg: Config) -> Path:
    return Path(cfg.tokenizer.path + ".model")


def train_tokenizer_from_config(cfg: Config) -> Path:
    from streamloco.tokenizer.model import TokenizerOptions
    from streamloco.tokenizer.train import train_tokenizer

    tk = cfg.tokenizer
    opts = TokenizerOptions(
        vocab_size=tk.vocab_size,
        model_type=tk.model_type,
        character_coverage=tk.character_coverage,
        split_digits=tk.split_digits,
        split_by_script=tk.split_by_script,
        temperature=tk.temperature,
        max_chars=tk.max_chars,
        seed=cfg.data.split_seed,
        lang_tags=tk.lang_tags,
        normalize=NormalizeOptions(
            form=cfg.corpus.normalize_form, apostrophes=cfg.corpus.apostrophes
        ),
    )
    out = Path(tk.path)
    out.parent.mkdir(parents=True, exist_ok=True)
    reader = CorpusReader(cfg, "train")
    model = train_tokenizer(reader, out, opts)
    _record_in_sidecar(model, reader.stats.as_dict())
    return model


def _record_in_sidecar(model: Path, read: dict[str, Any]) -> None:
    """Add what reading the corpus skipped to the tokenizer's sidecar, as ``corpus_read``.

    Written here, not by train_tokenizer (which takes documents, not files). The rewrite is
    atomic and the model is unchanged, so a crash before it leaves a valid pair without counts.
    """
    from streamloco.tokenizer.model import sidecar_path

    side = sidecar_path(model)
    info = json.loads(side.read_text(encoding="utf-8"))
    info["corpus_read"] = read
    atomic_write_bytes(side, (json.dumps(info, indent=2, ensure_ascii=False) + "\n").encode())


def report_from_config(cfg: Config, reference_lang: str) -> str:
    from streamloco.tokenizer.model import Tokenizer
    from streamloco.tokenizer.report import fertility_report, format_report

    tok = Tokenizer.load(tokenizer_model_path(cfg))
    reader = CorpusReader(cfg, "validation")
    rows = fertility_report(tok, reader(), reference_lang)
    return format_report(rows) + "\n\n" + format_skips(reader.stats.as_dict())


def tokenize_from_config(
    cfg: Config, executor: Executor, progress: bool = True, rebuild: bool = False
) -> Manifest:
    """Tokenize the corpus into `data.dir` with `executor`.

    The caller picks the executor (`data.executor`, `data.workers`): a Ray one can only be built
    where Ray may be imported (launcher/, the CLI), never here.
    """
    reader = CorpusReader(cfg)
    c = cfg.corpus  # the reading options that change which documents come out
    inputs = fingerprint_inputs(
        reader.specs, on_error=c.on_error, text_field=c.text_field, lang_field=c.lang_field
    )
    return tokenize_corpus(
        reader,
        tokenizer_model_path(cfg),
        Path(cfg.data.dir),
        shard_tokens=cfg.data.shard_tokens,
        validation_fraction=cfg.data.validation_fraction,
        seed=cfg.data.split_seed,
        zstd_level=cfg.data.zstd_level,
        progress=progress,
        executor=executor,
        corpus_read=lambda: reader.stats.as_dict(),
        inputs=inputs,
        rebuild=rebuild,
    )


def manifest_summary(manifest: Manifest) -> str:
    """Shards, documents and tokens per language and split, as a console table."""
    t = manifest.totals()
    lines = [f"{'lang':<6}{'split':<12}{'shards':>8}{'documents':>12}{'tokens':>14}"]
    for lang, splits in t["languages"].items():
        for split, c in sorted(splits.items()):
            lines.append(
                f"{lang:<6}{split:<12}{c['shards']:>8}{c['documents']:>12,}{c['tokens']:>14,}"
            )
    lines.append(
        f"{'total':<18}{t['shards']:>8}{t['documents']:>12,}{t['tokens']:>14,}"
        f"  ({t['bytes'] / 1e6:.1f} MB compressed, {manifest.dtype}) in "
        f"{manifest.data_dir}"
    )
    return "\n".join(lines)

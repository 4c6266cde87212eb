"""Where a run's tokens come from: the tokenized corpus (shards) or the synthetic language.

Both give every (group, rank) its own deterministic stream of (B/K, T+1) windows (a group's
batch is split over its K ranks) and a fixed set of evaluation batches per language, so the
training loop does not care which one it has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from streamloco.config import Config
from streamloco.workers.synthetic import MarkovLanguage, SyntheticStream

EVAL_STREAM = 10_000  # synthetic stream id of the held-out batches (never a training group)


class BatchStream(Protocol):
    def next(self) -> torch.Tensor: ...  # (B, T+1) int64
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class DataSource:
    kind: str
    eval_sets: dict[str, list[torch.Tensor]]  # language -> fixed (B, T+1) batches
    # (stream index, number of streams, sequences per batch) -> a deterministic stream
    make_stream: Callable[[int, int, int], BatchStream]
    groups: int
    batch_size: int  # sequences per group per step
    nll_floor: float | None = None  # the synthetic language's true NLL on its eval batches
    # UTF-8 bytes per predicted token of each eval set (for bits per byte); empty if unknown
    eval_bytes_per_token: dict[str, float] = field(default_factory=dict)

    def stream(self, group: int, rank: int = 0, ranks: int = 1) -> BatchStream:
        """Rank `rank` of `ranks` in `group`: disjoint from every other (group, rank)."""
        return self.make_stream(group * ranks + rank, self.groups * ranks, self.batch_size // ranks)


class _LoaderStream:
    """MixtureLoader behind the BatchStream protocol."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def next(self) -> torch.Tensor:
        return self.loader.next_batch()

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)


def build_data_source(cfg: Config) -> DataSource:
    if cfg.data.source == "shards":
        return _shard_source(cfg)
    return _synthetic_source(cfg)


MAX_SYNTHETIC_VOCAB = 512  # the order-2 table holds vocab^3 numbers (0.5 GB at 512)


def check_synthetic(cfg: Config) -> None:
    if cfg.data.source == "synthetic" and cfg.model.vocab_size > MAX_SYNTHETIC_VOCAB:
        raise ValueError(
            f"model.vocab_size: {cfg.model.vocab_size} is too large for data.source='synthetic' "
            f"(its order-2 table holds vocab^3 numbers; at most {MAX_SYNTHETIC_VOCAB}); use "
            "token shards for larger vocabularies"
        )


def _synthetic_source(cfg: Config) -> DataSource:
    check_synthetic(cfg)
    t, seq = cfg.train, cfg.model.seq_len
    lang = MarkovLanguage(cfg.model.vocab_size, cfg.data.branching, seed=t.seed)
    eval_batch = t.eval_batch_size or t.batch_size
    held_out = SyntheticStream(lang, eval_batch, seq, t.seed, EVAL_STREAM)
    batches, logps = [], []
    for _ in range(t.eval_batches):
        tokens, logp = lang.sample(eval_batch, seq + 1, held_out.generator)
        batches.append(tokens)
        logps.append(logp)
    return DataSource(
        kind="synthetic",
        eval_sets={"synthetic": batches},
        nll_floor=float(-torch.cat(logps).mean()),
        make_stream=lambda i, n, b: SyntheticStream(lang, b, seq, t.seed, i),
        groups=t.groups,
        batch_size=t.batch_size,
    )


def _shard_source(cfg: Config) -> DataSource:
    from streamloco.data_pipeline.loader import MixtureLoader, validation_batches
    from streamloco.data_pipeline.manifest import load_manifest

    manifest = load_manifest(Path(cfg.data.dir), verify="sha256")
    vocab = manifest.tokenizer.vocab_size
    if cfg.model.vocab_size < vocab:
        raise ValueError(
            f"model.vocab_size: {cfg.model.vocab_size} is smaller than the tokenizer's {vocab} "
            f"({manifest.data_dir}/manifest.json); set --model.vocab_size={vocab}"
        )
    t, seq = cfg.train, cfg.model.seq_len
    eval_sets = {}
    for lang in manifest.languages("validation"):
        val_tokens = sum(s.tokens for s in manifest.shards_for(lang, "validation"))
        if val_tokens < seq + 1:
            continue  # too little held-out text for even one window
        eval_sets[lang] = list(
            validation_batches(
                manifest,
                lang,
                batch_size=t.eval_batch_size or t.batch_size,
                seq_len=seq,
                max_batches=t.eval_batches,
            )
        )
    if not eval_sets:
        raise ValueError(
            f"{manifest.data_dir}: no language has a validation window of "
            f"{seq + 1} tokens; raise data.validation_fraction"
        )

    def make(index: int, count: int, batch: int) -> BatchStream:
        return _LoaderStream(
            MixtureLoader(
                manifest,
                batch_size=batch,
                seq_len=seq,
                seed=t.seed,
                group=index,
                num_groups=count,
                temperature=cfg.data.temperature,
                shuffle=cfg.data.shuffle,
            )
        )

    return DataSource(
        kind="shards",
        eval_sets=eval_sets,
        make_stream=make,
        groups=t.groups,
        batch_size=t.batch_size,
        eval_bytes_per_token=_bytes_per_token(manifest, eval_sets),
    )


def _bytes_per_token(manifest, eval_sets: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """UTF-8 bytes per predicted token of each eval set, from the shards' own tokenizer.

    Empty when the tokenizer the manifest names is not readable here (a worker node without
    it): the run then reports nats per token only, and says so (docs/training.md)."""
    from streamloco.tokenizer.model import Tokenizer

    try:
        tok = Tokenizer.load(manifest.tokenizer.path)
    except (OSError, ValueError):
        return {}
    if tok.sha256 != manifest.tokenizer.sha256:
        return {}
    table = torch.from_numpy(tok.byte_lengths())
    out = {}
    for lang, batches in eval_sets.items():
        targets = torch.cat([b[:, 1:].reshape(-1) for b in batches])
        out[lang] = float(table[targets].sum()) / targets.numel()
    return out

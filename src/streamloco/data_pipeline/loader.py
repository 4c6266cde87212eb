"""Mixture loader over a shard manifest: (B, T+1) windows, deterministic, disjoint, resumable.

Stream partitioning. A language's stream is its train shards in manifest order, repeated
forever (epoch e is the e-th pass). It is cut into non-overlapping windows of T+1 tokens
(window w = stream positions [w(T+1), (w+1)(T+1)); a window may run across shards and across
an epoch boundary). With C = num_groups * world_size consumers, consumer c = group*world_size +
rank takes windows c, c+C, c+2C, ... of every language, so within an epoch no two consumers
ever see the same token. Each row of a batch comes from one language drawn with the mixture
weights; the draw for batch b depends only on (seed, c, b) (a fresh generator per batch), so it
needs no stored generator state.

Shuffled order (``shuffle=True``, `data.shuffle`). A language's stream is read in document order
otherwise, and documents are stored in corpus order (a Bible book after book), so consecutive
batches share content and the model drifts with it. Shuffling keeps the same partition, and so
the same guarantees, but over a permuted window order: each epoch takes the language's
`W = tokens // (T+1)` whole windows (the tail of each pass is skipped), cut into blocks of about
one chunk; the blocks come in a random order per epoch and the windows of a block in a random
order per block, both drawn from (seed, language, epoch[, block]). Memory stays bounded: one
block's tokens per language, read forward once when the consumers reach it.

State. ``state_dict()`` is the batch counter plus, per language, how many windows this consumer
has taken (its k: the next window is c + kC). Restoring jumps straight to the shard holding
that position using the manifest's token counts and decompresses only that shard up to the
chunk holding it, so resume cost is bounded by one shard whatever the corpus size.

Memory: one decompressed chunk (``chunk_tokens``) per language at a time.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from streamloco.data_pipeline.manifest import Manifest, ShardEntry
from streamloco.data_pipeline.shards import iter_shard_chunks
from streamloco.text.mixture import temperature_weights


class _Cursor:
    """Forward reads from one language's cycled token stream, one decompressed chunk in memory."""

    def __init__(self, manifest: Manifest, shards: list[ShardEntry], chunk_tokens: int) -> None:
        self.paths = [manifest.shard_path(s) for s in shards]
        self.starts = np.cumsum([0] + [s.tokens for s in shards]).tolist()  # within an epoch
        self.total = self.starts[-1]
        self.chunk_tokens = chunk_tokens
        self.shard = -1  # index of the open shard; -1: none
        self.shard_base = 0  # absolute stream position where the open shard begins
        self.chunk = np.zeros(0, dtype=np.uint32)
        self.chunk_base = 0  # absolute position of self.chunk[0]
        self.chunks: Iterator[np.ndarray] = iter(())

    def _open(self, pos: int) -> None:
        """Open the shard holding absolute position `pos` (skips whole shards undecompressed)."""
        epoch, off = divmod(pos, self.total)
        # bisect_right lands on the last shard starting at or before `off`: never an empty one
        self.shard = bisect.bisect_right(self.starts, off) - 1
        self.shard_base = epoch * self.total + self.starts[self.shard]
        self.chunks = iter_shard_chunks(self.paths[self.shard], self.chunk_tokens)
        self.chunk, self.chunk_base = self.chunk[:0], self.shard_base

    def _shard_len(self) -> int:
        return self.starts[self.shard + 1] - self.starts[self.shard]

    def read(self, pos: int, n: int) -> np.ndarray:
        """Tokens at absolute positions [pos, pos+n); `pos` must not go backwards between calls."""
        out = np.empty(n, dtype=np.int64)
        done = 0
        while done < n:
            p = pos + done
            if self.shard < 0 or p < self.chunk_base or p >= self.shard_base + self._shard_len():
                self._open(p)
            while p >= self.chunk_base + len(self.chunk):
                self.chunk_base += len(self.chunk)
                self.chunk = next(self.chunks)
            i = p - self.chunk_base
            take = min(n - done, len(self.chunk) - i)
            out[done : done + take] = self.chunk[i : i + take]
            done += take
        return out


class _Shuffled:
    """One language's stream in shuffled window order (see the module doc): window k of the
    permuted stream -> its tokens, holding one block's tokens at a time."""

    def __init__(self, cursor: _Cursor, width: int, seed: int, lang: str) -> None:
        self.cursor, self.width, self.seed, self.lang = cursor, width, seed, lang
        self.windows = cursor.total // width  # whole windows per epoch (>= 1: see the caller)
        self.block = max(1, cursor.chunk_tokens // width)  # windows per block
        self.blocks = -(-self.windows // self.block)
        self._epoch = -1
        self._order = np.zeros(0, dtype=np.int64)  # block ids in this epoch's order
        self._ends = np.zeros(0, dtype=np.int64)  # cumulative window counts along that order
        self._at: tuple[int, int] = (-1, -1)  # (epoch, block) held in self._tokens
        self._perm = np.zeros(0, dtype=np.int64)
        self._tokens = np.zeros(0, dtype=np.int64)

    def _size(self, b: np.ndarray | int) -> np.ndarray | int:
        return np.minimum(self.block, self.windows - np.asarray(b) * self.block)

    def window(self, k: int) -> np.ndarray:
        epoch, j = divmod(k, self.windows)
        if epoch != self._epoch:
            rng = np.random.default_rng(_seed_words(self.seed, "blocks", self.lang, epoch))
            self._order = rng.permutation(self.blocks)
            self._ends = np.cumsum(self._size(self._order))
            self._epoch = epoch
        i = int(np.searchsorted(self._ends, j, side="right"))
        b = int(self._order[i])
        if self._at != (epoch, b):
            size = int(self._size(b))
            rng = np.random.default_rng(_seed_words(self.seed, "windows", self.lang, epoch, b))
            self._perm = rng.permutation(size)
            start = epoch * self.cursor.total + b * self.block * self.width
            self._tokens = self.cursor.read(start, size * self.width)
            self._at = (epoch, b)
        r = j - (int(self._ends[i - 1]) if i else 0)
        w = int(self._perm[r])
        return self._tokens[w * self.width : (w + 1) * self.width]


def _seed_words(*parts: int | str) -> list[int]:
    """A numpy SeedSequence entropy list from mixed ints and strings, stable across processes."""
    digest = hashlib.sha256("\0".join(map(str, parts)).encode()).digest()
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]


class MixtureLoader:
    """Batches of (B, T+1) int64 token windows mixed over languages; see the module doc."""

    def __init__(
        self,
        manifest: Manifest,
        *,
        batch_size: int,
        seq_len: int,
        seed: int,
        group: int,
        num_groups: int,
        rank: int = 0,
        world_size: int = 1,
        temperature: float = 5.0,
        weights: Mapping[str, float] | None = None,
        split: str = "train",
        chunk_tokens: int = 1 << 20,
        shuffle: bool = False,
    ) -> None:
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
        if not (0 <= group < num_groups and 0 <= rank < world_size):
            raise ValueError(
                f"need 0 <= group < num_groups and 0 <= rank < world_size, "
                f"got group={group} num_groups={num_groups} rank={rank} world_size={world_size}"
            )
        tokens = manifest.tokens_per_language(split)
        tokens = {k: v for k, v in tokens.items() if v > 0}
        if not tokens:
            raise ValueError(f"{manifest.data_dir}: no {split} tokens in the manifest")
        self._weights = self._resolve_weights(tokens, temperature, weights, manifest)
        self.langs = [k for k, v in self._weights.items() if v > 0]
        self.cum = np.cumsum([self._weights[k] for k in self.langs])
        self.cum[-1] = 1.0  # guard the last bucket against float round-off
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.consumer = group * world_size + rank
        self.consumers = num_groups * world_size
        self.cursors = {
            k: _Cursor(manifest, manifest.shards_for(k, split), chunk_tokens) for k in self.langs
        }
        # a language shorter than one window has no whole window per epoch: it stays in
        # stream order (its windows wrap across epochs, as without shuffling)
        self.shuffle = shuffle
        self.shuffled = {
            k: _Shuffled(c, seq_len + 1, seed, k)
            for k, c in self.cursors.items()
            if shuffle and c.total >= seq_len + 1
        }
        self.batch = 0
        self.taken = dict.fromkeys(self.langs, 0)  # windows of each language this consumer took
        self._fingerprint = self._make_fingerprint(manifest, split)

    @staticmethod
    def _resolve_weights(
        tokens: dict[str, int],
        temperature: float,
        weights: Mapping[str, float] | None,
        manifest: Manifest,
    ) -> dict[str, float]:
        if weights is None:
            return temperature_weights(tokens, temperature)
        unknown = sorted(set(weights) - set(tokens))
        if unknown:
            raise ValueError(
                f"weights name languages with no training tokens in {manifest.data_dir}: "
                f"{unknown} (available: {sorted(tokens)})"
            )
        if any(v < 0 for v in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"weights must be >= 0 and not all zero, got {dict(weights)}")
        total = sum(weights.values())
        return {k: weights.get(k, 0.0) / total for k in tokens}

    def _make_fingerprint(self, manifest: Manifest, split: str) -> str:
        """What a saved state is only valid for: the streams, the mixture and the partition."""
        key = {
            "shards": [(s.path, s.sha256) for s in manifest.shards if s.split == split],
            "weights": self._weights,
            "shape": [self.batch_size, self.seq_len],
            "partition": [self.seed, self.consumer, self.consumers],
        }
        if self.shuffle:  # absent when off: states saved before it stay valid
            key["order"] = "shuffled"
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def language_weights(self) -> dict[str, float]:
        """Probability that a row comes from each language (sums to 1)."""
        return dict(self._weights)

    def next_batch(self) -> torch.Tensor:
        """The next (B, T+1) int64 batch; row r's language is drawn from the mixture weights."""
        rng = np.random.default_rng(_seed_words(self.seed, self.consumer, self.batch))
        picks = np.searchsorted(self.cum, rng.random(self.batch_size), side="right")
        rows = np.empty((self.batch_size, self.seq_len + 1), dtype=np.int64)
        width = self.seq_len + 1
        for r, li in enumerate(picks.tolist()):
            lang = self.langs[li]
            window = self.consumer + self.taken[lang] * self.consumers
            if lang in self.shuffled:
                rows[r] = self.shuffled[lang].window(window)
            else:
                rows[r] = self.cursors[lang].read(window * width, width)
            self.taken[lang] += 1
        self.batch += 1
        return torch.from_numpy(rows)  # (B, T+1)

    def __iter__(self) -> MixtureLoader:
        return self

    def __next__(self) -> torch.Tensor:
        return self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """Small, JSON-serializable state; `load_state_dict` resumes exactly at the next batch."""
        return {"fingerprint": self._fingerprint, "batch": self.batch, "taken": dict(self.taken)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("fingerprint") != self._fingerprint:
            raise ValueError(
                "loader state was saved for different shards, weights, batch shape, seed or "
                f"consumer (fingerprint {state.get('fingerprint')!r}, this loader "
                f"{self._fingerprint!r})"
            )
        if set(state["taken"]) != set(self.langs):
            raise ValueError(f"loader state languages {sorted(state['taken'])} != {self.langs}")
        self.batch = int(state["batch"])
        self.taken = {k: int(state["taken"][k]) for k in self.langs}
        # cursors re-seek lazily: the next read opens the right shard from its position


def validation_batches(
    manifest: Manifest,
    lang: str,
    *,
    batch_size: int,
    seq_len: int,
    max_batches: int | None = None,
    chunk_tokens: int = 1 << 20,
) -> Iterator[torch.Tensor]:
    """Deterministic (B, T+1) batches over the validation shards of `lang`, read once in order.

    Windows are consecutive and non-overlapping (tail tokens that do not fill a window are
    dropped); the last batch may have fewer than B rows. Stops after `max_batches` batches.
    """
    shards = manifest.shards_for(lang, "validation")
    total = sum(s.tokens for s in shards)
    if total == 0:
        raise ValueError(
            f"{manifest.data_dir}: no validation tokens for language {lang!r} "
            f"(languages with validation data: {manifest.languages('validation')})"
        )
    width = seq_len + 1
    windows = total // width
    if max_batches is not None:
        windows = min(windows, max_batches * batch_size)
    cursor = _Cursor(manifest, shards, chunk_tokens)
    for first in range(0, windows, batch_size):
        rows = range(first, min(first + batch_size, windows))
        yield torch.from_numpy(np.stack([cursor.read(w * width, width) for w in rows]))

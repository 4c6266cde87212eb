"""MixtureLoader and validation_batches over synthetic shards whose tokens encode positions.

Language i's stream holds the tokens OFFSET*i + position, so every token says which language and
which stream position it came from: windows, disjointness and resume are checked exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from streamloco.data_pipeline.loader import MixtureLoader, validation_batches
from streamloco.data_pipeline.manifest import (
    Manifest,
    ShardEntry,
    TokenizerRef,
    load_manifest,
    write_manifest,
)
from streamloco.data_pipeline.shards import write_shard
from streamloco.text.mixture import temperature_weights

OFFSET = 1_000_000
# per language: train shard sizes (one empty shard on purpose) and validation sizes
LAYOUT = {
    "aaa": ([3000, 0, 2500, 4000], [700]),
    "bbb": ([900], [250, 130]),
    "ccc": ([11], []),  # shorter than one window: its windows wrap around several epochs
}
CHUNK = 257  # odd and small, so windows straddle chunks, shards and epochs


def _build(root: Path) -> Manifest:
    entries = []
    for li, (lang, (train, val)) in enumerate(LAYOUT.items()):
        for split, sizes in (("train", train), ("validation", val)):
            pos = 0
            for i, n in enumerate(sizes):
                rel = f"{split}/{lang}-{i:05d}.tok.zst"
                (root / split).mkdir(parents=True, exist_ok=True)
                tokens = (OFFSET * (li + 1) + pos + np.arange(n)).astype(np.uint32)
                info = write_shard(root / rel, tokens, documents=1)
                entries.append(ShardEntry(rel, info.sha256, n, 1, info.bytes, lang, split))
                pos += n
    m = Manifest(root, TokenizerRef("t.model", "0" * 64, 5_000_000, 0), "uint32", 0.1, 0, 1, 3)
    m.shards = sorted(entries, key=lambda e: (e.split, e.lang, e.path))
    write_manifest(m)
    return load_manifest(root)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Manifest:
    return _build(tmp_path_factory.mktemp("shards"))


def _loader(manifest: Manifest, **kw) -> MixtureLoader:
    args = dict(batch_size=4, seq_len=15, seed=3, group=0, num_groups=1, chunk_tokens=CHUNK)
    args.update(kw)
    return MixtureLoader(manifest, **args)


def _lang_pos(row: torch.Tensor) -> tuple[str, int]:
    li = int(row[0]) // OFFSET - 1
    return list(LAYOUT)[li], int(row[0]) % OFFSET


def _train_total(lang: str) -> int:
    return sum(LAYOUT[lang][0])


def test_rows_are_consecutive_windows_of_one_language(manifest: Manifest) -> None:
    loader = _loader(manifest)
    taken = dict.fromkeys(LAYOUT, 0)
    for _ in range(60):  # several epochs of bbb and ccc, across shard, chunk and epoch boundaries
        batch = next(loader)
        assert batch.shape == (4, 16) and batch.dtype == torch.int64
        for row in batch:
            lang, _ = _lang_pos(row)
            n, li = _train_total(lang), list(LAYOUT).index(lang) + 1
            # the only consumer takes windows 0, 1, 2, ... of the cycled stream
            expected = OFFSET * li + (taken[lang] * 16 + np.arange(16)) % n
            assert np.array_equal(row.numpy(), expected)
            taken[lang] += 1
    assert taken["bbb"] * 16 > _train_total("bbb")  # wrapped into a second epoch


def test_window_index_follows_consumer_partition(manifest: Manifest) -> None:
    # consumer c = group*world_size + rank takes windows c, c+C, ... of every language
    loader = _loader(manifest, group=1, num_groups=2, rank=1, world_size=3, batch_size=32)
    c, big_c = 1 * 3 + 1, 6
    seen: dict[str, list[int]] = {}
    for row in next(loader):
        lang, start = _lang_pos(row)
        seen.setdefault(lang, []).append(start)
    for lang, starts in seen.items():
        n = _train_total(lang)
        want = [((c + k * big_c) * 16) % n for k in range(len(starts))]
        assert starts == want


def test_deterministic_for_seed_group_rank(manifest: Manifest) -> None:
    def take(**kw) -> list[torch.Tensor]:
        loader = _loader(manifest, num_groups=2, world_size=2, **kw)
        return [next(loader) for _ in range(5)]

    a, b = take(group=1, rank=0), take(group=1, rank=0)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    other_seed = take(group=1, rank=0, seed=4)
    assert not all(torch.equal(x, y) for x, y in zip(a, other_seed, strict=True))


def test_consumers_see_disjoint_windows(manifest: Manifest) -> None:
    # within an epoch no token is read by two consumers: 2 groups x 2 ranks, aaa and bbb
    tokens: dict[tuple[int, int], set[int]] = {}
    for group in range(2):
        for rank in range(2):
            loader = _loader(
                manifest, group=group, rank=rank, num_groups=2, world_size=2,
                weights={"aaa": 1.0, "bbb": 1.0},
            )  # fmt: skip
            got = set()
            for _ in range(3):  # 12 rows: at most 12 windows per language, well inside an epoch
                got |= set(next(loader).flatten().tolist())
            tokens[(group, rank)] = got
    keys = list(tokens)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            assert not tokens[a] & tokens[b], (a, b)
    assert sum(len(t) for t in tokens.values()) == 4 * 12 * 16


def test_temperature_weights_and_empirical_mixture(manifest: Manifest) -> None:
    loader = _loader(manifest, batch_size=64, temperature=5.0)
    counts = {lang: _train_total(lang) for lang in LAYOUT}
    want = {k: n ** (1 / 5) / sum(m ** (1 / 5) for m in counts.values()) for k, n in counts.items()}
    assert loader.language_weights == pytest.approx(want, rel=1e-12)
    assert loader.language_weights == pytest.approx(temperature_weights(counts, 5.0))
    proportional = _loader(manifest, temperature=1.0).language_weights
    assert proportional["ccc"] == pytest.approx(11 / sum(counts.values()))
    freq = dict.fromkeys(LAYOUT, 0)
    rows = 0
    for _ in range(150):
        for row in next(loader):
            freq[_lang_pos(row)[0]] += 1
            rows += 1
    for lang in LAYOUT:  # 9600 rows: one standard deviation is < 0.005
        assert freq[lang] / rows == pytest.approx(want[lang], abs=0.02)


def test_explicit_weights(manifest: Manifest) -> None:
    loader = _loader(manifest, weights={"bbb": 3.0, "ccc": 1.0})
    assert loader.language_weights == {"aaa": 0.0, "bbb": 0.75, "ccc": 0.25}
    langs = {_lang_pos(row)[0] for _ in range(20) for row in next(loader)}
    assert langs == {"bbb", "ccc"}
    with pytest.raises(ValueError, match="'zzz'"):
        _loader(manifest, weights={"zzz": 1.0})
    with pytest.raises(ValueError, match="not all zero"):
        _loader(manifest, weights={"aaa": 0.0})


@pytest.mark.parametrize("steps", [0, 1, 7, 40])
def test_exact_resume(manifest: Manifest, steps: int) -> None:
    reference = _loader(manifest, group=1, num_groups=3)
    for _ in range(steps):
        next(reference)
    state = json.loads(json.dumps(reference.state_dict()))  # small and JSON-safe
    assert len(json.dumps(state)) < 300
    expected = [next(reference) for _ in range(5)]
    restored = _loader(manifest, group=1, num_groups=3)
    restored.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(expected, restored, strict=False))
    # a used loader can also go back to an earlier state (cursors re-seek backwards)
    reference.load_state_dict(state)
    assert torch.equal(next(reference), expected[0])


def test_resume_rejects_other_configuration(manifest: Manifest) -> None:
    state = _loader(manifest).state_dict()
    for kw in ({"seq_len": 31}, {"seed": 4}, {"group": 1, "num_groups": 2}, {"temperature": 1.0}):
        with pytest.raises(ValueError, match="different shards, weights"):
            _loader(manifest, **kw).load_state_dict(state)


def test_memory_is_one_chunk_per_language(manifest: Manifest) -> None:
    loader = _loader(manifest, batch_size=16)
    for _ in range(50):
        next(loader)
    assert all(len(c.chunk) <= CHUNK for c in loader.cursors.values())


def test_bad_arguments(manifest: Manifest) -> None:
    with pytest.raises(ValueError, match="group < num_groups"):
        _loader(manifest, group=2, num_groups=2)
    with pytest.raises(ValueError, match="rank < world_size"):
        _loader(manifest, rank=1, world_size=1)


def test_validation_batches_per_language(manifest: Manifest) -> None:
    # bbb: 380 validation tokens over two shards -> 23 windows of 16 -> 5 batches of 5 (last: 3)
    batches = list(
        validation_batches(manifest, "bbb", batch_size=5, seq_len=15, chunk_tokens=CHUNK)
    )
    assert [b.shape[0] for b in batches] == [5, 5, 5, 5, 3]
    flat = torch.cat(batches).flatten()
    assert torch.equal(flat, torch.arange(23 * 16) + 2 * OFFSET)  # in order, across the shards
    again = list(validation_batches(manifest, "bbb", batch_size=5, seq_len=15))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    capped = list(validation_batches(manifest, "aaa", batch_size=4, seq_len=15, max_batches=2))
    assert len(capped) == 2 and torch.equal(capped[0][0], torch.arange(16) + OFFSET)
    with pytest.raises(ValueError, match=r"'ccc'.*\['aaa', 'bbb'\]"):
        next(validation_batches(manifest, "ccc", batch_size=2, seq_len=15))


def _shuffled_starts(manifest: Manifest, lang: str, rows: int, **kw) -> list[int]:
    """Stream positions of the first `rows` windows of `lang` that a shuffled loader yields."""
    loader = _loader(manifest, shuffle=True, weights={lang: 1.0}, **kw)
    starts = []
    while len(starts) < rows:
        for row in next(loader):
            got, start = _lang_pos(row)
            assert got == lang
            # a whole window of consecutive stream tokens, never across an epoch's end
            assert np.array_equal(row.numpy() % OFFSET, start + np.arange(16))
            starts.append(start)
    return starts[:rows]


def test_shuffled_order_covers_every_whole_window_once_per_epoch(manifest: Manifest) -> None:
    width = 16
    for lang in ("aaa", "bbb"):
        per_epoch = _train_total(lang) // width
        starts = _shuffled_starts(manifest, lang, 2 * per_epoch)
        first, second = starts[:per_epoch], starts[per_epoch:]
        assert sorted(first) == [w * width for w in range(per_epoch)]
        assert sorted(second) == sorted(first) and second != first  # a new order per epoch
        assert first != sorted(first)  # not document order
        # windows are shuffled across blocks (one block holds CHUNK // 16 = 16 windows)
        blocks_first_16 = {s // width // (CHUNK // width) for s in first[:16]}
        assert len(blocks_first_16) == 1  # one block at a time (bounded memory) ...
        assert first[:16] != sorted(first[:16])  # ... in a shuffled order inside it
        assert {s // width // (CHUNK // width) for s in first[16:32]} != blocks_first_16


def test_shuffled_consumers_partition_each_epoch(manifest: Manifest) -> None:
    per_epoch = _train_total("aaa") // 16
    seen = []
    for group in range(3):
        # the shuffled stream's windows c, c+C, ...: together each whole window exactly once
        seen += _shuffled_starts(manifest, "aaa", per_epoch // 3, group=group, num_groups=3)
    assert len(seen) == len(set(seen)) == per_epoch // 3 * 3


def test_shuffled_is_deterministic_resumes_exactly_and_keeps_short_languages(
    manifest: Manifest,
) -> None:
    a = _loader(manifest, shuffle=True, group=1, num_groups=2)
    b = _loader(manifest, shuffle=True, group=1, num_groups=2)
    first = [next(a) for _ in range(30)]
    assert all(torch.equal(x, next(b)) for x in first)
    state = json.loads(json.dumps(a.state_dict()))
    expected = [next(a) for _ in range(20)]
    restored = _loader(manifest, shuffle=True, group=1, num_groups=2)
    restored.load_state_dict(state)
    assert all(torch.equal(x, next(restored)) for x in expected)
    # ccc (11 tokens, less than a window) stays in stream order and wraps across epochs
    assert "ccc" not in a.shuffled and {"aaa", "bbb"} <= set(a.shuffled)
    # an unshuffled state does not resume a shuffled loader, nor the other way round
    with pytest.raises(ValueError, match="different shards, weights"):
        restored.load_state_dict(_loader(manifest, group=1, num_groups=2).state_dict())
    with pytest.raises(ValueError, match="different shards, weights"):
        _loader(manifest, group=1, num_groups=2).load_state_dict(state)

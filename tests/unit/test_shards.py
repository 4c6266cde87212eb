"""Token shard format and manifest validation: round trips, corruption, path escapes."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamloco.atomic import TMP_MARK, atomic_write
from streamloco.data_pipeline.manifest import (
    Manifest,
    ManifestError,
    ShardEntry,
    TokenizerRef,
    load_manifest,
    write_manifest,
)
from streamloco.data_pipeline.shards import (
    HEADER_SIZE,
    ShardError,
    file_sha256,
    iter_shard_chunks,
    read_header,
    read_shard,
    write_shard,
)


def _tokens(n: int, dtype: str, seed: int = 0) -> np.ndarray:
    hi = np.iinfo(dtype).max
    return np.random.default_rng(seed).integers(0, hi, n, endpoint=True).astype(dtype)


# ---- shard format ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_round_trip_and_header(tmp_path: Path, dtype: str) -> None:
    tokens = _tokens(50_000, dtype)
    tokens[:2] = [0, np.iinfo(dtype).max]  # extremes survive
    info = write_shard(tmp_path / "a.tok.zst", tokens, documents=7)
    back = read_shard(info.path)
    assert back.dtype == np.dtype(dtype) and np.array_equal(back, tokens)
    head = read_header(info.path)
    assert (head.dtype.name, head.tokens, head.documents) == (dtype, 50_000, 7)
    assert info.bytes == os.path.getsize(info.path) and info.sha256 == file_sha256(info.path)
    assert (info.tokens, info.documents) == (50_000, 7)
    raw = info.path.read_bytes()
    assert raw[:4] == b"SLTK" and raw[4] == 1 and raw[5] == {"uint16": 1, "uint32": 2}[dtype]
    assert struct.unpack_from("<QQ", raw, 8) == (50_000, 7)


def test_empty_shard(tmp_path: Path) -> None:
    info = write_shard(tmp_path / "e.tok.zst", np.zeros(0, np.uint16), documents=0)
    assert read_shard(info.path).size == 0
    assert list(iter_shard_chunks(info.path)) == []
    assert read_header(info.path).tokens == 0


def test_large_shard_streams_in_bounded_chunks(tmp_path: Path) -> None:
    tokens = (np.arange(3_000_001, dtype=np.uint64) * 7919 % 65_521).astype(np.uint16)
    info = write_shard(tmp_path / "big.tok.zst", tokens, documents=1)
    chunks = list(iter_shard_chunks(info.path, chunk_tokens=1 << 20))
    assert [len(c) for c in chunks] == [1 << 20, 1 << 20, 3_000_001 - 2 * (1 << 20)]
    assert np.array_equal(np.concatenate(chunks), tokens)


@settings(max_examples=25, deadline=None)
@given(
    values=st.lists(st.integers(0, 2**32 - 1), max_size=300),
    chunk=st.integers(1, 64),
    level=st.sampled_from([1, 3, 19]),
)
def test_round_trip_property(tmp_path_factory, values: list[int], chunk: int, level: int) -> None:
    path = tmp_path_factory.mktemp("prop") / "p.tok.zst"
    tokens = np.array(values, dtype=np.uint32)
    write_shard(path, tokens, documents=len(values) // 3, level=level)
    chunks = list(iter_shard_chunks(path, chunk_tokens=chunk))
    assert all(0 < len(c) <= chunk for c in chunks)
    got = np.concatenate(chunks) if chunks else np.zeros(0, np.uint32)
    assert np.array_equal(got, tokens)


def test_write_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint16 or uint32"):
        write_shard(tmp_path / "x", np.arange(4, dtype=np.int64), 1)
    with pytest.raises(ValueError, match="1-D"):
        write_shard(tmp_path / "x", np.zeros((2, 2), np.uint16), 1)
    assert not (tmp_path / "x").exists()


def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "s.tok.zst"
    write_shard(target, np.arange(10, dtype=np.uint16), 1)
    before = target.read_bytes()

    def crash(f) -> None:
        f.write(b"half a shard")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, crash)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.tok.zst"]  # no *.tmp-* left
    assert TMP_MARK not in "".join(p.name for p in tmp_path.iterdir())


@pytest.fixture
def shard(tmp_path: Path) -> Path:
    return write_shard(tmp_path / "c.tok.zst", _tokens(20_000, "uint16"), 3).path


def _mutate(path: Path, offset: int, xor: int = 0x10) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= xor
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("offset", "message"),
    [(0, "not a token shard"), (5, "header checksum"), (12, "header checksum"), (26, "checksum")],
)
def test_header_bit_flip_names_the_shard(shard: Path, offset: int, message: str) -> None:
    _mutate(shard, offset)
    with pytest.raises(ShardError, match=message) as e:
        read_shard(shard)
    assert str(shard) in str(e.value)


def test_truncated_header(shard: Path) -> None:
    shard.write_bytes(shard.read_bytes()[:10])
    with pytest.raises(ShardError, match="truncated header") as e:
        read_header(shard)
    assert str(shard) in str(e.value)


def test_truncated_body(shard: Path) -> None:
    shard.write_bytes(shard.read_bytes()[:-200])
    with pytest.raises(ShardError, match="truncated body") as e:
        read_shard(shard)
    assert str(shard) in str(e.value)


def test_body_bit_flip_is_a_shard_error(shard: Path) -> None:
    size = shard.stat().st_size
    _mutate(shard, HEADER_SIZE + (size - HEADER_SIZE) // 2)
    with pytest.raises(ShardError) as e:
        read_shard(shard)
    assert str(shard) in str(e.value) and "corrupt body" in str(e.value)


def test_trailing_garbage_is_a_shard_error(shard: Path) -> None:
    shard.write_bytes(shard.read_bytes() + b"\x00junk")
    with pytest.raises(ShardError, match=str(shard)):
        read_shard(shard)


# ---- manifest --------------------------------------------------------------------------------


def _data_dir(root: Path) -> Path:
    data = root / "data"
    (data / "train").mkdir(parents=True)
    shards = []
    for i, (lang, split) in enumerate([("nya", "train"), ("nya", "train"), ("spa", "validation")]):
        rel = f"{split}/{lang}-{i:05d}.tok.zst"
        (data / split).mkdir(exist_ok=True)
        info = write_shard(data / rel, _tokens(1000 + i, "uint16", seed=i), documents=10 + i)
        shards.append(
            ShardEntry(rel, info.sha256, info.tokens, info.documents, info.bytes, lang, split)
        )
    tok = TokenizerRef("tok.model", "0" * 64, 400, 2)
    write_manifest(Manifest(data, tok, "uint16", 0.01, 0, 5000, 3, shards))
    return data


def _edit(data: Path, fn) -> None:
    path = data / "manifest.json"
    raw = json.loads(path.read_text())
    fn(raw)
    path.write_text(json.dumps(raw))


def test_manifest_round_trip_and_totals(tmp_path: Path) -> None:
    data = _data_dir(tmp_path)
    m = load_manifest(data)
    assert [s.lang for s in m.shards] == ["nya", "nya", "spa"]
    assert m.tokens_per_language("train") == {"nya": 2001}
    assert m.languages("validation") == ["spa"]
    totals = json.loads((data / "manifest.json").read_text())["totals"]
    assert totals["tokens"] == 1000 + 1001 + 1002 and totals["documents"] == 33
    assert totals["languages"]["nya"]["train"] == {"shards": 2, "tokens": 2001, "documents": 21}
    assert m.to_dict() == json.loads((data / "manifest.json").read_text())


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("../outside.tok.zst", "escapes"),
        ("train/../../outside.tok.zst", "escapes"),
        ("/etc/passwd", "must be relative"),
        ("C:/x.tok.zst", "must be relative"),
        ("train\\..\\..\\x", "must be relative"),
    ],
)
def test_manifest_path_escape(tmp_path: Path, path: str, message: str) -> None:
    data = _data_dir(tmp_path)
    _edit(data, lambda raw: raw["shards"][0].update(path=path))
    for verify in ("none", "sha256"):
        with pytest.raises(ManifestError, match=message) as e:
            load_manifest(data, verify=verify)
        assert repr(path) in str(e.value)


def test_manifest_symlink_out_of_data_dir(tmp_path: Path) -> None:
    data = _data_dir(tmp_path)
    outside = tmp_path / "elsewhere.tok.zst"
    os.replace(data / "train/nya-00001.tok.zst", outside)
    (data / "train/nya-00001.tok.zst").symlink_to(outside)
    with pytest.raises(ManifestError, match="resolves outside") as e:
        load_manifest(data, verify="none")
    assert "train/nya-00001.tok.zst" in str(e.value)
    os.symlink(tmp_path, data / "link")  # a symlinked directory is an escape as well
    _edit(data, lambda raw: raw["shards"][1].update(path="link/elsewhere.tok.zst"))
    with pytest.raises(ManifestError, match="link/elsewhere"):
        load_manifest(data)


def test_manifest_missing_shard(tmp_path: Path) -> None:
    data = _data_dir(tmp_path)
    (data / "validation/spa-00002.tok.zst").unlink()
    with pytest.raises(ManifestError, match=r"'validation/spa-00002\.tok\.zst': missing"):
        load_manifest(data, verify="size")
    assert load_manifest(data, verify="none").shards[2].lang == "spa"


def test_manifest_checksum_mismatch(tmp_path: Path) -> None:
    data = _data_dir(tmp_path)
    shard = data / "train/nya-00001.tok.zst"
    _mutate(shard, shard.stat().st_size - 5)  # same size, same header: only sha256 sees it
    load_manifest(data, verify="size")
    with pytest.raises(ManifestError, match=r"'train/nya-00001\.tok\.zst': sha256 mismatch"):
        load_manifest(data)


def test_manifest_size_and_header_mismatch(tmp_path: Path) -> None:
    data = _data_dir(tmp_path)
    _edit(data, lambda raw: raw["shards"][0].update(bytes=5))
    with pytest.raises(ManifestError, match=r"nya-00000\.tok\.zst.*size"):
        load_manifest(data, verify="size")
    data = _data_dir(tmp_path / "b")
    _edit(data, lambda raw: raw["shards"][0].update(tokens=999))
    with pytest.raises(ManifestError, match=r"nya-00000\.tok\.zst.*header says"):
        load_manifest(data, verify="size")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.update(format="other"), "format"),
        (lambda r: r.update(version=2), "version"),
        (lambda r: r.pop("tokenizer"), "missing key 'tokenizer'"),
        (lambda r: r.update(dtype="int8"), "dtype"),
        (lambda r: r["shards"][0].update(tokens="5"), r"nya-00000.tok.zst'.tokens"),
        (lambda r: r["shards"][0].update(documents=-1), r"documents: negative"),
        (lambda r: r["shards"][0].update(split="test"), r"split: 'test'"),
        (lambda r: r["shards"][0].update(sha256="xyz"), "sha256: not a hex"),
        (lambda r: r["shards"][1].update(path=r["shards"][0]["path"]), "listed twice"),
        (lambda r: r["shards"].append(3), r"shards\[3\]: expected an object"),
    ],
)
def test_manifest_structure_errors(tmp_path: Path, edit, message: str) -> None:
    data = _data_dir(tmp_path)
    _edit(data, edit)
    with pytest.raises(ManifestError, match=message):
        load_manifest(data)


def test_manifest_not_json_or_absent(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no manifest"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path)

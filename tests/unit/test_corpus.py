"""Corpus readers: every format, field names, each bad-input case under both policies, streaming."""

from __future__ import annotations

import gzip
import io
import json
from hashlib import sha256
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from streamloco.data_pipeline import corpus
from streamloco.data_pipeline.corpus import iter_documents
from streamloco.data_pipeline.inputs import CorpusSpec
from streamloco.data_pipeline.read_stats import ReadStats
from streamloco.text.documents import CorpusError, Document


def write(path: Path, data: bytes) -> Path:
    """Write raw bytes, compressed by the file's suffix (.gz, .zst) like real corpora."""
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    elif path.name.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def jsonl(*records: object) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


def read(*specs: CorpusSpec | str, **kwargs) -> list[Document]:
    return list(iter_documents(list(specs), **kwargs))


# --- formats ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_jsonl_formats(tmp_path, suffix):
    recs = [{"text": "Moni, muli bwanji?", "lang": "nya"}, {"text": "ma̱ hñä", "lang": "oto"}]
    path = write(tmp_path / f"c{suffix}", jsonl(*recs) + b"\n")  # trailing blank line is ignored
    stats = ReadStats()
    docs = read(str(path), stats=stats)
    assert docs == [
        Document("Moni, muli bwanji?", "nya", str(path), 1),
        Document("ma̱ hñä", "oto", str(path), 2),
    ]
    assert stats.documents == {"nya": 1, "oto": 1}
    assert stats.chars == {"nya": 18, "oto": 7}  # code points, not bytes: no normalization
    assert stats.files == 1 and not stats.skipped


@pytest.mark.parametrize("suffix", [".txt", ".txt.gz", ".txt.zst"])
def test_text_formats_split_paragraphs(tmp_path, suffix):
    body = "\ufeffpara one\r\nstill one\r\n\r\n  \npara two\n\n\n\npara three\n"
    path = write(tmp_path / f"book{suffix}", body.encode())
    docs = read(CorpusSpec(str(path), lang="nya"))
    assert [(d.text, d.line, d.lang) for d in docs] == [
        ("para one\nstill one", 1, "nya"),  # BOM and CRLF are decoding, not text
        ("para two", 5, "nya"),
        ("para three", 9, "nya"),
    ]


def test_text_doc_lines_keeps_single_blank_lines_inside(tmp_path):
    path = write(tmp_path / "ch.txt", b"a1\n\na2\n\n\nb1\n\nb2\n")
    docs = read(CorpusSpec(str(path), lang="nya"), doc_lines=2)
    assert [d.text for d in docs] == ["a1\n\na2", "b1\n\nb2"]
    with pytest.raises(ValueError, match="doc_lines"):
        read(CorpusSpec(str(path), lang="nya"), doc_lines=0)


def test_text_without_blank_lines_is_cut_at_max_doc_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "MAX_DOC_LINES", 3)
    path = write(tmp_path / "s.txt", "".join(f"s{i}\n" for i in range(7)).encode())
    docs = read(CorpusSpec(str(path), lang="nya"))
    assert [(d.text, d.line) for d in docs] == [("s0\ns1\ns2", 1), ("s3\ns4\ns5", 4), ("s6", 7)]


def test_parquet_string_and_large_string_with_field_names(tmp_path):
    path = tmp_path / "c.parquet"
    table = pa.table(
        {
            "content": pa.array(["uno", "two", "tres"], pa.large_string()),
            "language": pa.array(["spa", None, "spa"], pa.string()),
            "other": [1, 2, 3],
        }
    )
    pq.write_table(table, path, row_group_size=2)  # several row groups / batches
    spec = CorpusSpec(str(path), text_field="content", lang_field="language", lang="eng")
    docs = read(spec)
    assert [(d.text, d.lang, d.line) for d in docs] == [
        ("uno", "spa", 1),
        ("two", "eng", 2),  # null language -> the spec's default
        ("tres", "spa", 3),
    ]


def test_parquet_without_lang_column_uses_spec_lang_or_fails(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["a", "b"]}), path)
    assert [d.lang for d in read(CorpusSpec(str(path), lang="nah"))] == ["nah", "nah"]
    with pytest.raises(CorpusError, match=r"c\.parquet: no column 'lang'"):
        read(str(path))


def test_parquet_bad_columns_always_raise(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": ["a"], "lang": ["spa"]}), path)
    with pytest.raises(CorpusError, match=r"c\.parquet: no column 'text'"):
        read(str(path), on_error="skip")
    pq.write_table(pa.table({"text": [1], "lang": ["spa"]}), path)
    with pytest.raises(CorpusError, match=r"column 'text' has type int64"):
        read(str(path), on_error="skip")


def test_parquet_bad_rows_name_the_row(tmp_path):
    path = tmp_path / "c.parquet"
    text = pa.array([b"ok", b"\xff\xfe", b"  ", b"fine"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"text": text, "lang": ["spa"] * 4}), path)
    stats = ReadStats()
    assert [d.line for d in read(str(path), stats=stats)] == [1, 4]
    assert stats.skipped == {"invalid_utf8": 1, "empty_text": 1}
    with pytest.raises(CorpusError, match=r"c\.parquet:2: invalid UTF-8"):
        read(str(path), on_error="fail")


def test_jsonl_field_names_and_default_lang(tmp_path):
    path = write(
        tmp_path / "c.jsonl",
        jsonl({"body": "a", "language": "nya"}, {"body": "b"}, {"body": "c", "language": None}),
    )
    spec = CorpusSpec(str(path), text_field="body", lang_field="language", lang="spa")
    assert [(d.text, d.lang) for d in read(spec)] == [("a", "nya"), ("b", "spa"), ("c", "spa")]


def test_explicit_format_overrides_suffix_and_unknown_suffix_fails(tmp_path):
    path = write(tmp_path / "c.data", jsonl({"text": "a", "lang": "nya"}))
    assert [d.text for d in read(CorpusSpec(str(path), format="jsonl"))] == ["a"]
    with pytest.raises(CorpusError, match=r"c\.data: cannot tell the format"):
        read(str(path))


def test_spec_parse():
    assert CorpusSpec.parse("nya=books/*.txt") == CorpusSpec("books/*.txt", lang="nya")
    assert CorpusSpec.parse(" data/c.jsonl ") == CorpusSpec("data/c.jsonl")
    assert CorpusSpec.parse("data/a=b.txt") == CorpusSpec("data/a=b.txt")  # '/' -> not a lang
    with pytest.raises(CorpusError):
        CorpusSpec.parse("  ")


def test_glob_expansion_is_sorted_and_specs_keep_their_order(tmp_path):
    for name in ["b.jsonl", "a.jsonl", "sub/c.jsonl", "z.txt"]:
        write(tmp_path / name, jsonl({"text": name, "lang": "spa"}))
    (tmp_path / "dir.jsonl").mkdir()  # a directory matching the glob is not a file to read
    stats = ReadStats()
    docs = read(f"{tmp_path}/**/*.jsonl", f"nya={tmp_path}/z.*", stats=stats)
    assert [Path(d.source).name for d in docs] == ["a.jsonl", "b.jsonl", "c.jsonl", "z.txt"]
    assert stats.files == 4 and docs[-1].lang == "nya"
    assert list(iter_documents(f"{tmp_path}/a.jsonl")) == docs[:1]  # one bare spec


# --- bad input ---------------------------------------------------------------------------------

GOOD = b'{"text": "good", "lang": "nya"}\n'
BAD_JSONL = {
    "invalid_utf8": (b'{"text": "caf\xe9", "lang": "spa"}', "invalid UTF-8"),
    "bad_json": (b'{"text": "a", "lang": ', "bad JSON"),
    "not_object": (b'["a", "nya"]', "expected a JSON object"),
    "missing_lang": (b'{"text": "a"}', "missing language field 'lang'"),
    "empty_lang": (b'{"text": "a", "lang": " "}', "empty language field 'lang'"),
    "bad_lang": (b'{"text": "a", "lang": 3}', "field 'lang' is not a string"),
    "missing_text": (b'{"lang": "nya"}', "missing text field 'text'"),
    "bad_text": (b'{"text": ["a"], "lang": "nya"}', "field 'text' is not a string"),
    "empty_text": (b'{"text": " \\n\\t", "lang": "nya"}', "empty text"),
}
REASON = {"empty_lang": "missing_lang"}  # an empty language counts as a missing one


@pytest.mark.parametrize("case", sorted(BAD_JSONL))
def test_bad_jsonl_record_skip_counts_and_fail_names_file_and_line(tmp_path, case):
    line, message = BAD_JSONL[case]
    path = write(tmp_path / "c.jsonl", GOOD + line + b"\n" + GOOD)
    stats = ReadStats()
    docs = read(str(path), stats=stats)
    assert [d.line for d in docs] == [1, 3]
    assert stats.skipped == {REASON.get(case, case): 1}
    with pytest.raises(CorpusError) as err:
        read(str(path), on_error="fail")
    assert str(err.value).startswith(f"{path}:2: ") and message in str(err.value)


def test_default_lang_does_not_hide_an_empty_lang(tmp_path):
    path = write(tmp_path / "c.jsonl", b'{"text": "a", "lang": ""}\n' + GOOD)
    with pytest.raises(CorpusError, match=r"c\.jsonl:1: empty language"):
        read(CorpusSpec(str(path), lang="spa"), on_error="fail")


def test_text_invalid_utf8_drops_its_paragraph_or_fails_at_the_line(tmp_path):
    path = write(tmp_path / "t.txt", b"one\n\ntwo\nt\xffo\n\nthree\n")
    stats = ReadStats()
    assert [d.text for d in read(f"nya={path}", stats=stats)] == ["one", "three"]
    assert stats.skipped == {"invalid_utf8": 1}
    with pytest.raises(CorpusError, match=rf"^{path}:4: invalid UTF-8 at byte 1"):
        read(f"nya={path}", on_error="fail")


def test_text_needs_a_language(tmp_path):
    path = write(tmp_path / "t.txt", b"one\n")
    with pytest.raises(CorpusError, match=r"t\.txt: plain text needs a language"):
        read(str(path))


@pytest.mark.parametrize("name", ["e.jsonl", "e.txt", "e.jsonl.zst", "e.parquet"])
def test_empty_file(tmp_path, name):
    if name.endswith(".parquet"):
        empty = tmp_path / name
        pq.write_table(pa.table({"text": pa.array([], pa.string())}), empty)
    else:
        empty = write(tmp_path / name, b"\n  \n")  # only whitespace counts as empty
    good = write(tmp_path / "good.jsonl", GOOD)
    specs = [CorpusSpec(str(empty), lang="nya"), CorpusSpec(str(good))]
    stats = ReadStats()
    assert len(read(*specs, stats=stats)) == 1
    assert stats.skipped == {"empty_file": 1}
    with pytest.raises(CorpusError, match=rf"^{empty}: empty file"):
        read(*specs, on_error="fail")


def test_corrupt_compressed_stream(tmp_path):
    data = zstandard.ZstdCompressor().compress(GOOD * 1000)
    path = tmp_path / "c.jsonl.zst"
    path.write_bytes(data[: len(data) // 2] + b"\x00" * 64)
    stats = ReadStats()
    assert read(str(path), str(write(tmp_path / "ok.jsonl", GOOD)), stats=stats)
    assert stats.skipped == {"corrupt_file": 1}  # the rest of the file is skipped, once
    path.write_bytes(b"not zstd at all")
    with pytest.raises(CorpusError, match=r"no documents in .*\(skipped: corrupt_file=1\)"):
        read(str(path))  # counted as corrupt, not also as empty
    with pytest.raises(CorpusError, match=rf"^{path}:1: corrupt compressed data"):
        read(str(path), on_error="fail")


def test_corrupt_parquet(tmp_path):
    path = write(tmp_path / "c.parquet", b"PAR1 this is not parquet")
    with pytest.raises(CorpusError, match=r"\(skipped: corrupt_file=1\)"):
        read(f"spa={path}")
    with pytest.raises(CorpusError, match=rf"^{path}: not a readable Parquet file"):
        read(f"spa={path}", on_error="fail")


@pytest.mark.parametrize("on_error", ["skip", "fail"])
def test_glob_matching_nothing_and_missing_file_always_fail_before_reading(tmp_path, on_error):
    good = write(tmp_path / "good.jsonl", GOOD)
    it = iter_documents([str(good), f"{tmp_path}/nothing/*.jsonl"], on_error=on_error)
    with pytest.raises(CorpusError, match=r"nothing/\*\.jsonl: pattern matches no files"):
        next(it)  # fails before the good file's document is yielded
    with pytest.raises(CorpusError, match=r"missing\.jsonl: no such file"):
        read(str(good), str(tmp_path / "missing.jsonl"), on_error=on_error)


def test_corpus_without_documents_fails_with_skip_counts(tmp_path):
    path = write(tmp_path / "c.jsonl", b'{"text": ""}\n{"lang": "nya"}\n\xff\n')
    with pytest.raises(CorpusError) as err:
        read(str(path))
    assert str(err.value) == (
        f"no documents in {path} (skipped: invalid_utf8=1, missing_lang=1, missing_text=1)"
    )


def test_report_and_as_dict(tmp_path):
    path = write(tmp_path / "c.jsonl", jsonl({"text": "abc", "lang": "spa"}, {"text": "de"}))
    stats = ReadStats()
    read(CorpusSpec(str(path)), stats=stats)
    assert stats.as_dict() == {
        "files": 1,
        "documents": {"spa": 1},
        "chars": {"spa": 3},
        "skipped": {"missing_lang": 1},
        "skipped_by_file": {str(path): {"missing_lang": 1}},
        "examples": {"missing_lang": [f"{path}:2: missing language field 'lang'"]},
    }
    report = stats.report()
    assert "spa" in report and "total" in report and "missing_lang" in report
    assert f"{path}:2: missing language field" in report and f"{path}: missing_lang=1" in report


# --- streaming --------------------------------------------------------------------------------


def test_reading_is_streaming(tmp_path, monkeypatch):
    """The first document arrives after reading a small part of a big file, before a bad end."""

    # Distinct hex digests barely compress, so the compressed file is big too (~3 MB).
    def text(i: int) -> str:
        return f"sentence {i} " + "".join(sha256(b"%d-%d" % (i, k)).hexdigest() for k in range(4))

    records = b"".join(
        json.dumps({"text": text(i), "lang": "nya"}).encode() + b"\n" for i in range(20_000)
    )
    path = write(tmp_path / "big.jsonl.zst", records + b"{broken\n")
    size = path.stat().st_size
    read_bytes = []
    real_open = Path.open

    class Counting(io.RawIOBase):
        def __init__(self, fh):
            self.fh = fh

        def readable(self):
            return True

        def readinto(self, buf):
            n = self.fh.readinto(buf)
            read_bytes.append(n)
            return n

        def close(self):
            self.fh.close()
            super().close()

    def counting_open(self, mode="r", *args, **kwargs):
        fh = real_open(self, mode, *args, **kwargs)
        return io.BufferedReader(Counting(fh)) if self == path else fh

    monkeypatch.setattr(Path, "open", counting_open)
    it = iter_documents([str(path)], on_error="fail")
    assert next(it).text.startswith("sentence 0 ")
    assert sum(read_bytes) < size / 4, (sum(read_bytes), size)  # not the whole file
    with pytest.raises(CorpusError, match=r"big\.jsonl\.zst:20001: bad JSON"):
        for _ in it:
            pass


# --- truncation and pins ------------------------------------------------------------------------


def _zst_frames(*chunks: bytes) -> bytes:
    """One zstd frame per chunk, concatenated (as `zstd` appends or pzstd writes)."""
    return b"".join(zstandard.ZstdCompressor().compress(c) for c in chunks)


@pytest.mark.parametrize("frames", [1, 3])
def test_truncated_zstd_is_a_corrupt_file_not_a_short_one(tmp_path, frames):
    """A .zst cut inside a frame is corrupt (like a cut .gz), not bad JSON at the cut."""
    records = [{"text": f"doc {i} " + "x" * (i % 50), "lang": "nya"} for i in range(3000)]
    per = len(records) // frames
    data = _zst_frames(*(jsonl(*records[k * per : (k + 1) * per]) for k in range(frames)))
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(data[: len(data) - 40])  # inside the last frame
    stats = ReadStats()
    docs = read(str(path), stats=stats)
    assert len(docs) < len(records)
    assert stats.skipped == {"corrupt_file": 1}
    with pytest.raises(CorpusError, match=rf"^{path}:\d+: corrupt compressed data \(.*truncated"):
        read(str(path), on_error="fail")
    path.write_bytes(data)  # the whole multi-frame file reads completely
    assert len(read(str(path), on_error="fail")) == len(records)


def test_pins_catch_a_cut_at_a_frame_boundary_and_unlisted_files(tmp_path, monkeypatch):
    """A multi-frame .zst cut at a frame boundary is a valid shorter stream: only pins see it."""
    monkeypatch.chdir(tmp_path)  # pin paths are relative to the working directory, like inputs
    a, b = jsonl({"text": "uno", "lang": "spa"}), jsonl({"text": "dos", "lang": "spa"})
    write(Path("c/one.jsonl"), a)
    Path("c/two.jsonl.zst").write_bytes(_zst_frames(a, b))
    pins = Path("pins.sha256")
    lines = [f"{sha256(p.read_bytes()).hexdigest()}  {p}" for p in sorted(Path("c").glob("*"))]
    pins.write_text("# sha256sum c/*\n" + "\n".join(lines) + "\n")
    assert len(read("c/*", pins=pins, on_error="fail")) == 3
    Path("c/two.jsonl.zst").write_bytes(_zst_frames(a))  # the second frame is gone
    assert len(read("c/*", on_error="fail")) == 2  # unpinned, nothing can tell
    cut = r"^c/two\.jsonl\.zst: sha256 \w+ differs from \w+ pinned"
    with pytest.raises(CorpusError, match=cut):
        next(iter_documents("c/*", pins=pins))  # checked before the first document
    write(Path("c/new.jsonl"), b)
    with pytest.raises(CorpusError, match=r"^pins\.sha256: inputs not pinned there: c/new\."):
        read("c/*", pins=pins)
    with pytest.raises(CorpusError, match=r"pinned files not among the inputs: c/two\.jsonl\.zst"):
        read("c/one.jsonl", pins=pins)
    pins.write_text("not a pin\n")
    with pytest.raises(CorpusError, match=r"^pins\.sha256:1: expected 'SHA256  PATH'"):
        read("c/*", pins=pins)


# --- each file once -----------------------------------------------------------------------------


def test_symlink_loop_and_aliases_read_each_file_once(tmp_path, monkeypatch):
    """A directory link back to its parent, with **, used to read every file ~40 times."""
    monkeypatch.chdir(tmp_path)
    for i in range(3):
        write(
            Path(f"data/sub/f{i}.jsonl"),
            jsonl(*({"text": f"{i}-{k}", "lang": "nya"} for k in range(4))),
        )
    (tmp_path / "data/sub/loop").symlink_to(tmp_path / "data")  # data/sub/loop -> data
    (tmp_path / "data/alias.jsonl").symlink_to(tmp_path / "data/sub/f0.jsonl")
    stats = ReadStats()
    docs = read("data/**/*.jsonl", "data/sub/f1.jsonl", stats=stats, on_error="fail")
    assert sorted(d.text for d in docs) == sorted(f"{i}-{k}" for i in range(3) for k in range(4))
    assert stats.files == 3
    # data/alias.jsonl sorts first and is read; f0 under its real name is the duplicate, and so is
    # f1 named again by the second input; the loop is not entered
    assert stats.skipped == {"duplicate_file": 2, "linked_dir": 1}
    assert [d.source for d in docs][:4] == ["data/alias.jsonl"] * 4

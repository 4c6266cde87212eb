"""SentencePiece training, the exact round trip, the sidecar and the fertility report."""

from __future__ import annotations

import hashlib
import json
import pickle
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamloco.text.documents import Document
from streamloco.text.mixture import temperature_weights
from streamloco.text.normalize import NormalizeOptions, normalize
from streamloco.tokenizer.model import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    Tokenizer,
    TokenizerOptions,
)
from streamloco.tokenizer.report import fertility_report, format_report
from streamloco.tokenizer.train import (
    MAX_LINE_CHARS,
    split_line,
    train_tokenizer,
    training_lines,
)

WORDS = {
    "spa": "el la de que y en los se del las un por con no una su para es al lo como más",
    "nya": "ndipo anati kwa Yehova Mulungu ana a Israeli ndi mu dziko la anthu onse",
    "oto": "nu̱ ra hñä ya jä'i ma hai bi 'ñäni ngu ha mbo̱ho̱",
}
SIZES = {"spa": 300, "nya": 80, "oto": 15}


def make_corpus(seed: int = 0) -> list[Document]:
    """Documents of three languages: a few lines of random words plus digits."""
    rng = random.Random(seed)
    docs = []
    for lang, n in SIZES.items():
        for i in range(n):
            lines = [" ".join(rng.choice(WORDS[lang].split()) for _ in range(10)) for _ in range(3)]
            lines.append(f"{rng.randrange(10**6)} 0123456789")
            docs.append(Document("\n".join(lines), lang, f"{lang}.jsonl", i + 1))
    return docs


OPTS = TokenizerOptions(vocab_size=400, lang_tags=True, max_chars=100_000)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return train_tokenizer(make_corpus(), tmp_path_factory.mktemp("tok") / "spm", OPTS)


@pytest.fixture(scope="module")
def tok(trained) -> Tokenizer:
    return Tokenizer.load(trained)


# ---------------------------------------------------------------- round trip

EDGE_CASES = [
    "",
    "Ndipo anati kwa Yehova",
    "  leading and trailing  ",
    "tabs\tand\n\nnewlines\r\nand \r returns\n",
    "emoji 😀👍🏽 and flags 🇲🇼",
    "CJK 日本語 한국어 and Devanagari हिन्दी",
    "joiners: \u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645 \u0915\u094d\u200d",
    "emoji family 👨\u200d👩\u200d👧",
    "Greek oxia \u1ffd and varia \u1fef",
    "combining: e\u0301 a\u0331 o\u0332 n\u0303",
    "apostrophes ’ ʼ ꞌ ´ ` '",
    "a literal \u2581 (SentencePiece's space) \u2581\u2581 twice",
    "\u2585 bullets \u2585\u2585 (SentencePiece's unknown mark) and \u2047",
    "<2nya> is text, not a tag; <s></s><pad><unk>",
    "invisible\u200b\u00ad\ufeff and controls \x00\x07\x1b",
    "no-break\u00a0space and\u3000ideographic",
    "12345 67.89",
]


@pytest.mark.parametrize("text", EDGE_CASES)
def test_round_trip_edge_cases(tok, text):
    assert tok.decode(tok.encode(text)) == normalize(text)


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(
    st.text(max_size=80)
    | st.text(alphabet="ab \t\n\r\u2581\u2585\u0301\u0331\u0332'’\u00a0日😀1<>", max_size=40)
)
def test_round_trip_property(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == normalize(text)
    assert UNK_ID not in ids


def test_round_trip_exact_without_normalization(tmp_path):
    # With every rule off the tokenizer must reproduce control characters, \r and runs of
    # spaces verbatim: nothing inside SentencePiece may rewrite text either.
    keep = NormalizeOptions(
        apostrophes="keep",
        underline=False,
        strip_invisible=False,
        spaces=False,
        collapse_whitespace=False,
    )
    opts = TokenizerOptions(vocab_size=350, normalize=keep, model_type="bpe")
    tok = Tokenizer.load(train_tokenizer(make_corpus(), tmp_path / "raw", opts))

    @settings(max_examples=150, deadline=None, derandomize=True)
    @given(st.text(alphabet="a \t\n\r\x00\x1f\u00a0\u2581\u200b’e\u0301", max_size=30))
    def check(text):
        assert tok.decode(tok.encode(text)) == normalize(text, keep)

    check()
    assert tok.decode(tok.encode("a  \r\n\x00b ")) == "a  \r\n\x00b "


def test_encode_normalizes(tok):
    assert tok.encode("ja’i e\u0301 o\u0332") == tok.encode("ja'i é o\u0331")


def test_encode_batch_equals_encode(tok):
    texts = [*EDGE_CASES, *(d.text for d in make_corpus(seed=1)[:50])]
    assert tok.encode_batch(texts, num_threads=2) == [tok.encode(t) for t in texts]


@settings(
    max_examples=50, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.lists(st.text(max_size=20), max_size=5))
def test_encode_batch_property(tok, texts):
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    st.text(alphabet="ab \t\n\r\u2581\u2585\u0301\u0332\u00a0\u1ffd'’日😀1", max_size=60),
    st.integers(1, 8),
)
def test_encoding_in_pieces_equals_encoding_whole(tok, text, limit):
    # Long texts are normalized a few lines at a time and encoded a piece at a time (cut after a
    # newline, or before a space): the tokens must be those of the whole text, at any cut.
    assert tok.encode(text, piece_chars=limit) == tok.encode(text)
    lengths, flat = tok.encode_flat([text, "ab"], "uint32", piece_chars=limit)
    assert lengths.tolist() == [len(tok.encode(text)) + 1, len(tok.encode("ab")) + 1]
    assert flat.tolist() == [*tok.encode(text), tok.eos_id, *tok.encode("ab"), tok.eos_id]


def test_long_document_pieces_equal_whole(tok):
    rng = random.Random(5)
    words = [*WORDS["nya"].split(), "日本", "\u2581", "x\u0332", "  "]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randrange(1, 400))) for _ in range(3000)]
    doc = "\n".join(lines) + " " + " ".join(rng.choice(words) for _ in range(100_000))
    whole = tok._encode_normalized(tok.normalize(doc))
    assert tok.encode(doc, piece_chars=10_000) == whole
    assert tok.encode_flat([doc], "uint16", piece_chars=10_000)[1].tolist() == [*whole, tok.eos_id]


MEMORY_SCRIPT = """
import resource, sys
from streamloco.data_pipeline.tokenize import _Encoder, _encode
from streamloco.tokenizer.model import Tokenizer
tok = Tokenizer.load(sys.argv[1])
line = " ".join(f"ndipo{i % 97} anati Yehova" for i in range(40)) + "\\n"
doc = line * (20_000_000 // len(line))  # 20M characters
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
lengths, flat = _encode(_Encoder(tok, "uint16"), [doc])
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, flat.size)
"""


def test_long_document_memory_is_bounded(trained):
    # A 20M-character document through the tokenize stage's encoder: once +470 MB (SentencePiece's
    # per-byte work arrays over the whole string and a Python int per token); in pieces the
    # growth is the token array (2 bytes per token here) plus one piece's work.
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(trained)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    grown_mb, tokens = map(int, out.stdout.split())
    assert tokens > 3_000_000
    assert grown_mb < 120, out.stdout


# ---------------------------------------------------------------- vocabulary


def test_special_ids(tok):
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (PAD_ID, UNK_ID, BOS_ID, EOS_ID)
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    pieces = [tok.id_to_piece(i) for i in range(4)]
    assert pieces == ["<pad>", "<unk>", "<s>", "</s>"]
    ids = tok.encode("ndipo anati")
    # Control pieces decode to nothing, so a document with bos/eos decodes to its text.
    assert tok.decode([BOS_ID, *ids, EOS_ID, PAD_ID]) == "ndipo anati"


def test_newline_is_one_piece_and_unseen_script_is_bytes(tok):
    assert tok.encode("\n") == [tok.sidecar["newline_id"]]
    ids = tok.encode("日")
    assert len(ids) == 3 and all(tok.is_byte(i) for i in ids)  # 3 UTF-8 bytes
    assert not any(tok.is_byte(i) for i in tok.encode("ndipo anati kwa Yehova"))


def test_vocab_learns_words_and_splits_digits(tok):
    assert len(tok.encode(" Yehova")) <= 2
    assert len(tok.encode("2024")) == 4


def test_lang_tags(tok, tmp_path):
    tags = tok.lang_tags
    assert sorted(tags) == ["nya", "oto", "spa"]
    assert sorted(tags.values()) == [4, 5, 6]
    assert tok.id_to_piece(tok.lang_tag("nya")) == "<2nya>"
    assert tok.lang_tag("fra") is None
    # Tags are control pieces: text spelling a tag is not turned into one, and it decodes to "".
    assert tok.lang_tag("nya") not in tok.encode("<2nya>")
    assert tok.decode([tok.lang_tag("nya"), *tok.encode("ndipo")]) == "ndipo"
    plain = TokenizerOptions(vocab_size=350)
    untagged = Tokenizer.load(train_tokenizer(make_corpus(), tmp_path / "plain", plain))
    assert untagged.lang_tag("nya") is None and untagged.lang_tags == {}


def test_long_lines_are_trained_on(tmp_path):
    # One 40,000-character line: SentencePiece would skip it whole without split_line.
    docs = [Document("zorkma " * 6000, "xxx", "long.txt", 1), Document("ab cd", "yyy", "s", 1)]
    tok = Tokenizer.load(train_tokenizer(docs, tmp_path / "long", TokenizerOptions(300)))
    assert tok.encode(" zorkma") == [tok._sp.piece_to_id("\u2581zorkma")]  # learned as one piece
    chunks = list(split_line("word " * 3000))
    assert all(len(c) <= MAX_LINE_CHARS for c in chunks)
    assert "".join(chunks) == "word " * 3000


def _reserved_corpus() -> list[Document]:
    """A language whose every line holds something SentencePiece's trainer treats specially."""
    rng = random.Random(3)
    words = ["zorkma", "blivet", "quux", "frobnic"]
    marks = ["\u2581", "<s>", "</s>", "<unk>", "<pad>", "<0x41>", "<2nya>", "\x00", "<<s>"]
    docs = []
    for i in range(40):
        lines = [
            f"\u2585 {rng.choice(marks)}" + " ".join(rng.choice(words) for _ in range(6))
            for _ in range(5)
        ]
        docs.append(Document("\n".join(lines), "res", "res.txt", i + 1))
    return docs


def test_lines_with_reserved_characters_are_trained_on(tmp_path):
    # SentencePiece skips a whole sentence holding U+2585 (its internal unknown mark) and
    # replaces the text of a meta piece (<s>, <0x41>, a tag...) with a space: a language that
    # uses any of them on every line must still get its own pieces.
    keep = NormalizeOptions(strip_invisible=False)  # let U+0000 reach the trainer
    opts = TokenizerOptions(vocab_size=300, lang_tags=True, normalize=keep)
    docs = [*_reserved_corpus(), Document("ab cd", "nya", "n", 1)]
    tok = Tokenizer.load(train_tokenizer(docs, tmp_path / "res", opts))
    assert tok.encode(" zorkma") == [tok._sp.piece_to_id("\u2581zorkma")]
    for doc in docs:
        assert tok.decode(tok.encode(doc.text)) == normalize(doc.text, keep)
    assert tok.decode(tok.encode("<s>\u2585<0x41>")) == "<s>\u2585<0x41>"


def _trainer_log_counts(lines: list[str], meta: list[str]) -> tuple[int, int]:
    """(sentences, characters) SentencePiece reports having loaded, read from its own log."""
    script = (
        "import io, json, sys, sentencepiece as spm\n"
        "lines, meta = json.load(sys.stdin)\n"
        "spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=io.BytesIO(),"
        " vocab_size=300, byte_fallback=True, normalization_rule_name='identity',"
        " remove_extra_whitespaces=False, add_dummy_prefix=False, hard_vocab_limit=False,"
        " user_defined_symbols=['\\n'], control_symbols=meta, minloglevel=0, num_threads=1)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps([lines, meta]),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stderr
    sentences = re.search(r"Loaded all (\d+) sentences", out)
    chars = re.search(r"all chars count=(\d+)", out)
    assert sentences and chars, out[-2000:]
    return int(sentences.group(1)), int(chars.group(1))


def test_sidecar_counts_what_sentencepiece_ingested(tmp_path):
    docs = _reserved_corpus()
    opts = TokenizerOptions(vocab_size=300, lang_tags=True)
    side = json.loads(
        train_tokenizer(docs, tmp_path / "res", opts).with_suffix(".json").read_text("utf-8")
    )
    sample = side["sample"]
    normalized = [Document(normalize(d.text), d.lang, d.source, d.line) for d in docs]
    lines = list(training_lines(normalized, tag_pieces=["<2res>"]))
    assert _trainer_log_counts(lines, ["<2res>"]) == (len(lines), sum(map(len, lines)))
    # Every document is sampled once here (one language, T irrelevant, under max_chars).
    assert sample["sentences"] == {"res": len(lines)}
    assert sample["chars"] == {"res": sum(map(len, lines))}
    assert sample["sampled_chars"] == {"res": sum(len(d.text) for d in normalized)}
    assert sample["documents"] == {"res": len(docs)}


# ---------------------------------------------------------------- files


def test_sidecar_content(trained, tok):
    side = json.loads(trained.with_suffix(".json").read_text(encoding="utf-8"))
    assert side["format"] == "streamloco-tokenizer"
    assert side["sha256"] == hashlib.sha256(trained.read_bytes()).hexdigest() == tok.sha256
    assert side["vocab_size"] == tok.vocab_size <= OPTS.vocab_size
    assert TokenizerOptions.from_dict(side["options"]) == OPTS == tok.options
    assert side["special_ids"] == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    sample = side["sample"]
    corpus = sample["corpus_chars"]
    assert corpus == {
        lang: sum(len(normalize(d.text)) for d in make_corpus() if d.lang == lang) for lang in SIZES
    }
    assert sample["weights"] == pytest.approx(temperature_weights(corpus, OPTS.temperature))
    # T=5 lifts the small language: its share of the sample exceeds its share of the corpus.
    share = {k: v / sum(sample["chars"].values()) for k, v in sample["chars"].items()}
    assert share["oto"] > 2 * corpus["oto"] / sum(corpus.values())
    assert set(sample["documents"]) == set(SIZES)
    assert side["sentencepiece_version"]


def test_files_written_atomically(trained):
    names = sorted(p.name for p in trained.parent.iterdir())
    assert names == ["spm.json", "spm.model"]  # no temp files left behind


def test_sha256_mismatch_is_rejected(tmp_path, trained):
    model = tmp_path / "t.model"
    model.write_bytes(trained.read_bytes() + b"\x00")
    (tmp_path / "t.json").write_bytes(trained.with_suffix(".json").read_bytes())
    with pytest.raises(
        ValueError, match=r"t\.model: sha256 \w+ does not match \w+ recorded in .*t\.json"
    ):
        Tokenizer.load(model)


def test_missing_or_bad_sidecar(tmp_path, trained):
    model = tmp_path / "m.model"
    model.write_bytes(trained.read_bytes())
    with pytest.raises(ValueError, match=r"m\.json: sidecar of .*m\.model not found"):
        Tokenizer.load(model)
    (tmp_path / "m.json").write_text("{nope", encoding="utf-8")
    with pytest.raises(ValueError, match=r"m\.json: not valid JSON"):
        Tokenizer.load(model)
    with pytest.raises(ValueError, match="tokenizer model not found"):
        Tokenizer.load(tmp_path / "absent.model")


def test_training_is_deterministic(tmp_path, trained):
    again = train_tokenizer(make_corpus(), tmp_path / "again", OPTS)
    assert again.read_bytes() == trained.read_bytes()


def test_training_input_errors(tmp_path):
    with pytest.raises(ValueError, match="fresh iterator"):
        train_tokenizer(iter(make_corpus()), tmp_path / "x", OPTS)
    with pytest.raises(ValueError, match="no non-empty documents"):
        train_tokenizer([Document(" \n ", "spa", "f", 1)], tmp_path / "x", OPTS)
    assert list(tmp_path.iterdir()) == []
    # A callable giving a fresh iterator each time is the streaming form.
    assert train_tokenizer(make_corpus, tmp_path / "y", OPTS).exists()


def test_options_validation():
    with pytest.raises(ValueError, match="byte_fallback must be True"):
        TokenizerOptions(byte_fallback=False)
    with pytest.raises(ValueError, match="vocab_size"):
        TokenizerOptions(vocab_size=100)
    with pytest.raises(ValueError, match=r"unknown tokenizer option\(s\) \['vocab'\]"):
        TokenizerOptions.from_dict({"vocab": 5})


def test_sidecar_without_strip_joiners_keeps_stripping_them():
    # Models trained before the option existed saw ZWNJ/ZWJ removed; they must keep encoding so.
    old = TokenizerOptions().to_dict()
    del old["normalize"]["strip_joiners"]
    assert TokenizerOptions.from_dict(old).normalize.strip_joiners is True
    assert TokenizerOptions.from_dict(TokenizerOptions().to_dict()) == TokenizerOptions()


def test_pickle(tok):
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.sha256 == tok.sha256
    assert clone.encode("ndipo 日") == tok.encode("ndipo 日")


# ---------------------------------------------------------------- report


def test_fertility_report_hand_checked(tok):
    # Digits are single pieces (split_digits, seen in training): one token per character.
    # "日本" and "日本語" are unseen: one byte piece per UTF-8 byte (3 per character).
    docs = [
        Document("1234", "spa", "s", 1),
        Document("5678", "spa", "s", 2),
        Document("日本", "jpn", "j", 1),
        Document("日本語", "jpn", "j", 2),
    ]
    rows = fertility_report(tok, docs, reference_lang="spa")
    assert [r["lang"] for r in rows] == ["spa", "jpn"]
    spa, jpn = rows
    assert (spa["documents"], spa["chars"], spa["words"], spa["tokens"]) == (2, 8, 2, 8)
    assert (spa["tokens_per_char"], spa["tokens_per_word"], spa["parity"]) == (1.0, 4.0, 1.0)
    assert spa["byte_fallback_rate"] == 0.0 and spa["unk_rate"] == 0.0
    assert (jpn["documents"], jpn["chars"], jpn["words"], jpn["tokens"]) == (2, 5, 2, 15)
    assert (jpn["tokens_per_char"], jpn["tokens_per_word"], jpn["parity"]) == (3.0, 7.5, 3.0)
    assert jpn["byte_fallback_rate"] == 1.0
    table = format_report(rows)
    assert table.splitlines()[0].startswith("| lang | docs | chars |")
    assert "| jpn | 2 | 5 | 15 | 3.000 | 7.50 | 100.00% | 0.00% | 3.00 |" in table


def test_fertility_report_without_reference(tok):
    rows = fertility_report(tok, [Document("ndipo anati", "nya", "n", 1)], reference_lang="spa")
    assert rows[0]["parity"] is None
    assert "| - |" in format_report(rows)


def test_sidecar_without_split_by_script_records_the_old_recipe():
    old = TokenizerOptions().to_dict()
    del old["split_by_script"]
    assert TokenizerOptions.from_dict(old).split_by_script is True
    assert TokenizerOptions().split_by_script is False


def _glottal_corpus() -> list[Document]:
    # Mixtec-like words spelled with the glottal apostrophe, in varied sentences.
    rng = random.Random(0)
    words = ["ndi'i", "kue'e", "chu'un", "ndije'e", "sa'a", "ña'a", "iin", "tuku", "kokó", "nuú"]
    lines = [" ".join(rng.choices(words, k=12)) for _ in range(600)]
    return [Document("\n".join(lines[i : i + 20]), "mix", "t", i) for i in range(0, 600, 20)]


@pytest.mark.parametrize("split_by_script", [True, False])
def test_split_by_script_decides_whether_glottal_words_stay_whole(tmp_path, split_by_script):
    opts = TokenizerOptions(vocab_size=300, split_by_script=split_by_script, max_chars=10**6)
    tok = Tokenizer.load(train_tokenizer(_glottal_corpus(), tmp_path / "t", opts))
    pieces = [tok.id_to_piece(i) for i in range(tok.vocab_size)]
    # a piece with a letter on both sides of the apostrophe exists only without script splitting
    inner = [p for p in pieces if re.search(r"\w'\w", p)]
    assert bool(inner) is not split_by_script, inner[:5]
    text = "ndi'i kue'e chu'un"
    assert tok.decode(tok.encode(text)) == text
    if not split_by_script:
        assert len(tok.encode(text)) < 3 * 3  # not cut at each apostrophe into 3 pieces


def test_byte_lengths_count_the_bytes_decode_gives(tmp_path):
    tok = Tokenizer.load(
        train_tokenizer(make_corpus(), tmp_path / "t", TokenizerOptions(vocab_size=400))
    )
    table = tok.byte_lengths()
    assert table.shape == (tok.vocab_size,) and table[tok.eos_id] == 0
    for text in ["Moni bwanji, ndi'i kue'e!\nHola ñandú 123", "日本語 ▁ \u0331x", "a  b\n\n"]:
        ids = [*tok.encode(text), tok.eos_id]
        assert int(table[ids].sum()) == len(tok.decode(ids).encode("utf-8")), text

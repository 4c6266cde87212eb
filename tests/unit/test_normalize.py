"""The shared normalization: each documented rule, and idempotence on arbitrary text."""

import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamloco.text.normalize import NormalizeOptions, _table, normalize


def test_otomi_underline_variants_become_one_spelling():
    with_low_line = "zo\u0332 ngo\u0332k'ei"  # U+0332 combining low line
    with_macron_below = "zo\u0331 ngo\u0331k'ei"  # U+0331 combining macron below
    assert normalize(with_low_line) == normalize(with_macron_below)
    assert "\u0331" in normalize(with_low_line)


def test_apostrophe_lookalikes():
    variants = ["t\u2019o", "t\u02bco", "t\ua78co", "t\u00b4o", "t'o"]
    assert {normalize(v) for v in variants} == {"t'o"}
    assert normalize("t'o", NormalizeOptions(apostrophes="modifier")) == "t\u02bco"
    assert normalize("t\u2019o", NormalizeOptions(apostrophes="keep")) == "t\u2019o"


def test_nfc_invisible_characters_spaces_and_whitespace():
    assert normalize("a\u0308") == "\u00e4"  # NFC composes
    assert normalize("pa\u00adla\u200bbra\ufeff") == "palabra"
    assert normalize("a\u00a0b\u202fc") == "a b c"
    assert normalize("a  \t b \r\nc  \n") == "a b\nc\n"
    assert normalize("ﬁ", NormalizeOptions(form="NFKC")) == "fi"
    assert normalize("ﬁ") == "ﬁ"


def test_newlines_and_tabs_survive_control_stripping():
    assert normalize("a\x00b\x07\nc") == "ab\nc"


@settings(max_examples=300, deadline=None)
@given(
    st.text(),
    st.sampled_from(
        [
            NormalizeOptions(),
            NormalizeOptions(form="NFKC"),
            NormalizeOptions(apostrophes="modifier"),
        ]
    ),
)
def test_normalize_is_idempotent_and_returns_nfc(text, opts):
    once = normalize(text, opts)
    assert normalize(once, opts) == once
    assert unicodedata.is_normalized(opts.form, once)


# Combining sequences tried with code points: a mark that composes with many bases (acute),
# Otomí's two underlines (U+0332 is mapped, then must compose: b + U+0331 is ḇ), Greek
# ypogegrammeni, a deleted character between a base and its mark, two marks out of canonical
# order, and a joiner.
SUFFIXES = ["\u0301", "\u0331", "\u0332", "\u0345", "\u200b\u0301", "\u0301\u0331", "\u200d"]
OPTION_SETS = [
    NormalizeOptions(),
    NormalizeOptions(form="NFKC"),
    NormalizeOptions(apostrophes="modifier", strip_joiners=True),
    NormalizeOptions(
        apostrophes="keep", underline=False, strip_invisible=False, spaces=False, form="NFKC"
    ),
]
ALL_CODE_POINTS = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]


def _composition_relevant() -> list[str]:
    """Code points whose neighbours can change their normalization, plus every 97th other one.

    Relevant: a combining mark, a character that NFD or NFKD changes (Hangul syllables
    included), one that is part of any character's NFKD (so a base that composes with a mark,
    and Hangul jamo) and every character a rule maps. Any other code point is a starter that no
    mark composes with; those are sampled deterministically, not all tried.
    """
    parts = set(chr(k) for k in _table(OPTION_SETS[0]) | _table(OPTION_SETS[2]))
    relevant = []
    for i, c in enumerate(ALL_CODE_POINTS):
        nfkd = unicodedata.normalize("NFKD", c)
        if nfkd != c:
            parts.update(nfkd)
        if nfkd != c or unicodedata.combining(c) or i % 97 == 0:
            relevant.append(c)
    return sorted(set(relevant) | parts)


def _not_idempotent(texts: list[str], opts: NormalizeOptions) -> list[str]:
    bad = []
    for text in texts:
        once = normalize(text, opts)
        if normalize(once, opts) != once or not unicodedata.is_normalized(opts.form, once):
            bad.append(text)
    return bad


@pytest.mark.parametrize("opts", OPTION_SETS[:2])
def test_idempotent_on_every_code_point_alone(opts):
    # Exhaustive: all 1,112,064 scalar values, one string each (about 2 s per option set).
    assert _not_idempotent(ALL_CODE_POINTS, opts) == []


def test_idempotent_with_combining_marks():
    # Every relevant code point (about 1/15 of Unicode, see _composition_relevant) followed and
    # preceded by each combining sequence, under every option set; batched for speed, 2048 per
    # string joined by newlines (a boundary that composes with nothing). A failing batch is
    # re-checked one piece at a time so the message names the code points.
    chars = _composition_relevant()
    for opts in OPTION_SETS:
        for suffix in SUFFIXES:
            for i in range(0, len(chars), 2048):
                block = chars[i : i + 2048]
                pieces = [c + suffix for c in block] + [suffix + c for c in block]
                if _not_idempotent(["\n".join(pieces)], opts):
                    assert _not_idempotent(pieces, opts) == [], (opts, suffix)


def test_compatibility_characters_that_normalize_to_an_apostrophe():
    # NFC turns U+1FFD (Greek oxia) into U+00B4 ´ and U+1FEF (varia) into U+0060 `, both mapped
    # to ' by the apostrophe rule: one call must give what two calls give.
    assert normalize("a\u1ffdb") == normalize("a\u00b4b") == "a'b"
    assert normalize("a\u1fefb") == "a'b"
    nfkc = NormalizeOptions(form="NFKC")
    # ŉ is ʼn under NFKC; fullwidth ｀ is `; ″ is ′′ (U+2032 twice).
    assert [normalize(c, nfkc) for c in "\u0149\uff40\u2033"] == ["'n", "'", "''"]
    assert normalize("\uff07", NormalizeOptions(form="NFKC", apostrophes="modifier")) == "\u02bc"


def test_joiners_are_kept_by_default():
    # ZWNJ and ZWJ spell words: Persian mi-khaham, a Devanagari half form, an emoji family.
    words = [
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",
        "\u0915\u094d\u200d",
        "👨\u200d👩\u200d👧",
    ]
    for word in words:
        assert normalize(word) == word
    assert normalize("a\u200bb\u2060c") == "abc"  # zero-width space and word joiner still go
    strip = NormalizeOptions(strip_joiners=True)
    assert [normalize(w, strip) for w in words] == [
        w.replace("\u200c", "").replace("\u200d", "") for w in words
    ]


def _reference(text: str, opts: NormalizeOptions) -> str:
    """The rules written the plain way (``str.translate`` on every text): the regex fast path
    of `normalize` must give exactly this."""
    table = _table(opts)
    if opts.strip_invisible:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    while True:
        new = unicodedata.normalize(opts.form, text.translate(table))
        if new == text:
            break
        text = new
    if opts.collapse_whitespace:
        text = re.sub(r"[ \t]+", " ", text)
        text = re.sub(r" +\n", "\n", text).rstrip(" ")
    return text


@pytest.mark.parametrize("opts", OPTION_SETS)
def test_fast_path_equals_plain_translate(opts):
    # Every code point, in blocks with the characters the rules map, CR/LF and spaces mixed in.
    mapped = "".join(chr(c) for c in _table(opts))
    for i in range(0, len(ALL_CODE_POINTS), 4096):
        block = "".join(ALL_CODE_POINTS[i : i + 4096])
        text = f"{block} \r\n{mapped}\t {block[::-1]}  \r"
        assert normalize(text, opts) == _reference(text, opts), (opts, i)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(list(" \t\r\n\u00ad’´"))))
def test_fast_path_equals_plain_translate_on_random_text(text):
    for opts in OPTION_SETS:
        assert normalize(text, opts) == _reference(text, opts)

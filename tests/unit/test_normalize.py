"""The shared normalization: each documented rule, and idempotence on arbitrary text."""

import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from streamloco.text.normalize import NormalizeOptions, normalize


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

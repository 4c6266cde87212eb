"""The one text normalization used at tokenizer training, at encoding and in the reports.

The orthographies we care about mix encodings of the same letter: Otomí's underlined vowels are
written with U+0331 (combining macron below) or U+0332 (combining low line); glottal stops and
saltillos appear as ', ’, ʼ, ꞌ or ´ depending on the keyboard; texts copied from PDFs carry
no-break spaces, soft hyphens and zero-width characters. Rules, applied in this order:

1. ``strip_invisible``: remove soft hyphen (U+00AD), zero-width space (U+200B), word joiner
   (U+2060), BOM (U+FEFF) and C0/C1 control characters other than tab and newline; ``\\r\\n``
   and lone ``\\r`` become ``\\n``. The zero-width non-joiner and joiner (U+200C, U+200D) are
   kept: they are part of the spelling in Persian (``می‌خواهم``), Indic scripts (half forms) and
   emoji sequences. ``strip_joiners=True`` removes them too (with ``strip_invisible``), for a
   corpus where they are only PDF noise; a sidecar written before this option existed reads as
   True, the behaviour its model was trained with.
2. ``apostrophes``: ``"ascii"`` (default) maps the apostrophe look-alikes ’ ‘ ʼ ꞌ Ꞌ ´ ` ′
   (U+2019 U+2018 U+02BC U+A78C U+A78B U+00B4 U+0060 U+2032) to ``'``; ``"modifier"`` maps them
   and ``'`` to ʼ (U+02BC, Unicode's letter apostrophe); ``"keep"`` leaves them.
3. ``underline``: U+0332 (combining low line) becomes U+0331 (combining macron below), so both
   spellings of an underlined vowel are one character sequence.
4. ``spaces``: no-break and other Unicode spaces (U+00A0, U+2000-U+200A, U+202F, U+205F,
   U+3000) become a plain space.
5. Unicode ``form`` (NFC by default; NFKC folds more, e.g. ligatures and superscripts). A few
   characters normalize to one that rules 1-4 map (NFC: U+1FFD Greek oxia is U+00B4 ´ and U+1FEF
   varia is U+0060 `; NFKC: ŉ is ʼn, fullwidth ｀ is `, ″ is ′′): rules 1-4 and the form are
   applied again until nothing changes, so a second call has nothing left to do.
6. ``collapse_whitespace``: runs of spaces and tabs become one space and lines lose trailing
   spaces; newlines are kept (they carry document structure).

`normalize` is idempotent: normalizing twice equals normalizing once (tested exhaustively on
every code point, alone and followed or preceded by combining sequences).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u200b\u2060\ufeff"))
_JOINERS = dict.fromkeys(map(ord, "\u200c\u200d"))
_CONTROLS = {c: None for c in [*range(0x00, 0x20), *range(0x7F, 0xA0)] if c not in (9, 10)}
_APOSTROPHES = "\u2019\u2018\u02bc\ua78c\ua78b\u00b4\u0060\u2032"
_SPACES = (
    "\u00a0\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
)
# Only runs that change: two or more blanks, or any tab (a lone space is most of the matches
# of a plain `[ \t]+`, each rewritten to itself).
_RUNS = re.compile(r" [ \t]+|\t[ \t]*")
_TRAILING = re.compile(r" +\n")


@dataclass(frozen=True)
class NormalizeOptions:
    form: Literal["NFC", "NFKC"] = "NFC"
    apostrophes: Literal["ascii", "modifier", "keep"] = "ascii"
    underline: bool = True
    strip_invisible: bool = True
    spaces: bool = True
    collapse_whitespace: bool = True
    strip_joiners: bool = False


def _table(opts: NormalizeOptions) -> dict[int, str | None]:
    table: dict[int, str | None] = {}
    if opts.strip_invisible:
        table.update(_INVISIBLE)
        table.update(_CONTROLS)
        if opts.strip_joiners:
            table.update(_JOINERS)
    if opts.apostrophes == "ascii":
        table.update({ord(c): "'" for c in _APOSTROPHES})
    elif opts.apostrophes == "modifier":
        table.update({ord(c): "\u02bc" for c in _APOSTROPHES + "'"})
    if opts.underline:
        table[0x0332] = "\u0331"
    if opts.spaces:
        table.update({ord(c): " " for c in _SPACES})
    return table


class _Rules:
    """One options set's table, and a regex of the characters it maps.

    Most text holds none of them (the demo corpus: 90% of documents), and ``str.translate``
    costs a dict lookup per character of every text; a regex scan is about ten times cheaper, and
    ``sub`` then touches only the matches. Same output as ``text.translate(table)``.
    """

    def __init__(self, opts: NormalizeOptions) -> None:
        self.table = _table(opts)
        self.chars = {chr(c): v or "" for c, v in self.table.items()}
        chars = "".join(map(re.escape, sorted(self.chars)))
        # (?!) never matches: an options set that maps nothing
        self.pattern = re.compile(f"[{chars}]" if chars else "(?!)")

    def apply(self, text: str) -> str:
        return self.pattern.sub(lambda m: self.chars[m.group()], text)


_RULES: dict[NormalizeOptions, _Rules] = {}


def normalize(text: str, opts: NormalizeOptions = NormalizeOptions()) -> str:
    """Apply the documented rules (module doc) to `text`."""
    rules = _RULES.get(opts)
    if rules is None:
        rules = _RULES[opts] = _Rules(opts)
    if opts.strip_invisible and "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    mapped = rules.apply(text)
    text = unicodedata.normalize(opts.form, mapped)
    # Normalizing can produce a character the table maps (rule 5). Only text that normalization
    # changed can hold one (CPython returns the same object otherwise), so clean text skips this.
    while text is not mapped and (mapped := rules.apply(text)) != text:
        text = unicodedata.normalize(opts.form, mapped)
    if opts.collapse_whitespace:
        # The substring checks skip two regex passes on the common clean text (tokenizing
        # spends a large share of its time here).
        if "  " in text or "\t" in text:
            text = _RUNS.sub(" ", text)
        if " \n" in text:
            text = _TRAILING.sub("\n", text)
        text = text.rstrip(" ")
    return text

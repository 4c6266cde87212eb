"""A trained SentencePiece model with its sidecar: load, encode, decode.

Files: ``<prefix>.model`` (the SentencePiece model) and ``<prefix>.json`` (the sidecar written by
`streamloco.tokenizer.train.train_tokenizer`: options, training sample counts, the model's sha256).
`Tokenizer.load` refuses a model whose sha256 differs from the sidecar's, so token shards can
never be silently decoded with a different vocabulary.

Special ids are fixed for every model we train:

====  ==========  ==========================================================
id    piece       use
====  ==========  ==========================================================
0     ``<pad>``   padding (so zero-filled buffers are padding)
1     ``<unk>``   unknown; never produced, since byte fallback covers any text
2     ``<s>``     begin of sequence
3     ``</s>``    end of document (the separator in token shards)
4..   ``<2xxx>``  language tags (only with ``lang_tags``), sorted by language code
next  ``\\n``     newline, one piece (documents keep their line structure)
next  ``<0x00>``  .. ``<0xFF>``: the 256 byte-fallback pieces
====  ==========  ==========================================================

Exact round trip: ``decode(encode(x)) == normalize(x)`` for any string ``x`` (without lone
surrogates, which are not encodable text). SentencePiece's own normalization is off (identity
rule, no extra-whitespace removal, no dummy prefix), so the one thing it still rewrites is the
space: it is stored as U+2581 (▁) and every ▁ is decoded as a space. A literal ▁ in the input is
therefore encoded as its three UTF-8 byte pieces, which decode to ▁ verbatim (see `encode`).
Control pieces (pad, bos, eos, language tags) decode to the empty string.

Long texts are encoded in pieces of about `PIECE_CHARS` characters, so memory does not grow with
one document's length (SentencePiece allocates work arrays per byte of the string it encodes):
the text is normalized a run of whole lines at a time (cut just after a newline, where no
normalization rule reaches across) and each run is encoded a piece at a time, cut just before a
space. No piece spans either cut: the newline is a piece of its own, and a learned piece holds
▁ only as its first character (SentencePiece's split_by_whitespace), so every space starts a
piece. The tokens are those of the whole text (tested at every cut position on small pieces).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import sentencepiece as spm
from numpy.typing import DTypeLike

from streamloco.text.normalize import NormalizeOptions, normalize

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPACE_SYMBOL = "\u2581"  # SentencePiece's stand-in for a space
SIDECAR_FORMAT = "streamloco-tokenizer"
SIDECAR_VERSION = 1
PIECE_CHARS = 1 << 20  # longer texts are encoded in pieces of about this many characters


def lang_tag_piece(lang: str) -> str:
    """The piece that tags a language, NLLB style: ``<2nya>``."""
    return f"<2{lang}>"


@dataclass(frozen=True)
class TokenizerOptions:
    """How to train a tokenizer; stored in the sidecar so a model documents its own recipe."""

    vocab_size: int = 8000
    """Pieces in the vocabulary, specials and the 256 byte pieces included."""
    model_type: Literal["unigram", "bpe"] = "unigram"
    """SentencePiece algorithm."""
    character_coverage: float = 0.9995
    """Share of the sample's characters that get their own piece; the rarest go to bytes."""
    byte_fallback: bool = True
    """Always True: unseen characters become UTF-8 byte pieces, never ``<unk>``. The exact round
    trip depends on it, so False is rejected rather than silently ignored."""
    split_digits: bool = True
    """Numbers become one piece per digit (consistent arithmetic tokens across languages)."""
    split_by_script: bool = False
    """SentencePiece's ``split_by_unicode_script``: True forbids a piece that mixes Unicode
    scripts. The apostrophe that spells a glottal stop in Mixtec and Otomí (``ndi'i``,
    ``b'e̱hña``; any look-alike becomes ``'`` under the default normalization) is script Common,
    the letters around it Latin, so True cuts every such word at its apostrophes: Mixtec then
    pays 1.45x Spanish's tokens per character, 1.19x with False (docs/tokenizer.md). A sidecar
    written before this option existed reads as True, the recipe its model was trained with."""
    temperature: float = 5.0
    """Language sampling for the training sample: p(lang) ~ n_lang^(1/T); 1 = proportional."""
    max_chars: int = 20_000_000
    """Characters in the training sample (bounds training time and memory)."""
    seed: int = 0
    """Seed of the hash that selects the training sample."""
    lang_tags: bool = False
    """Add a control piece ``<2xxx>`` per language seen in training (see `Tokenizer.lang_tag`)."""
    normalize: NormalizeOptions = field(default_factory=NormalizeOptions)
    """Normalization applied to training text and to every text encoded."""

    def __post_init__(self) -> None:
        if not self.byte_fallback:
            raise ValueError("TokenizerOptions.byte_fallback must be True (exact round trip)")
        if self.model_type not in ("unigram", "bpe"):
            raise ValueError(f"TokenizerOptions.model_type: {self.model_type!r} not unigram/bpe")
        if self.vocab_size < 300:
            raise ValueError(f"TokenizerOptions.vocab_size must be >= 300, got {self.vocab_size}")
        if not 0 < self.character_coverage <= 1:
            raise ValueError("TokenizerOptions.character_coverage must be in (0, 1]")
        if self.temperature <= 0:
            raise ValueError(f"TokenizerOptions.temperature must be > 0, got {self.temperature}")
        if self.max_chars <= 0:
            raise ValueError(f"TokenizerOptions.max_chars must be > 0, got {self.max_chars}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenizerOptions:
        """Inverse of `to_dict`; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown tokenizer option(s) {unknown}; known: {sorted(known)}")
        values = dict(data)
        if isinstance(values.get("normalize"), dict):
            norm = dict(values["normalize"])
            # A sidecar from before strip_joiners was trained with ZWNJ/ZWJ stripped: a missing
            # key keeps that, so an existing model encodes text as it was trained.
            norm.setdefault("strip_joiners", True)
            values["normalize"] = NormalizeOptions(**norm)
        # Likewise a sidecar from before split_by_script was trained with scripts split: the
        # recipe it records must say so (training-time only; encoding is the same either way).
        values.setdefault("split_by_script", True)
        return cls(**values)


def _cut(text: str, limit: int, sep: str) -> Iterator[str]:
    """`text` in pieces of about `limit` characters, cut just after a newline (`sep` "\\n") or
    just before a space (`sep` " "); a piece without such a place is longer (module doc)."""
    after = sep == "\n"
    start = 0
    while len(text) - start > limit:
        # A cut at `start` itself would give an empty piece: search from start + 1.
        at = text.rfind(sep, start + 1 - after, start + limit)
        if at < 0:
            at = text.find(sep, start + limit)
            if at < 0:
                break
        end = at + after
        yield text[start:end]
        start = end
    yield text[start:]


def sidecar_path(model_path: str | Path) -> Path:
    """``tok.model`` -> ``tok.json`` (any other name: the name plus ``.json``)."""
    p = Path(model_path)
    stem = p.name[: -len(".model")] if p.name.endswith(".model") else p.name
    return p.with_name(stem + ".json")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Tokenizer:
    """Normalize, then SentencePiece; the exact inverse of itself up to normalization."""

    def __init__(self, model_bytes: bytes, sidecar: dict[str, Any], path: Path | None = None):
        self.path = path
        self.sidecar = sidecar
        self._model_bytes = model_bytes
        self.sha256 = sha256_bytes(model_bytes)
        self.options = TokenizerOptions.from_dict(sidecar["options"])
        self.normalize_options: NormalizeOptions = self.options.normalize
        self._sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        self.vocab_size: int = self._sp.get_piece_size()
        self.pad_id, self.unk_id = self._sp.pad_id(), self._sp.unk_id()
        self.bos_id, self.eos_id = self._sp.bos_id(), self._sp.eos_id()
        self._lang_tags: dict[str, int] = dict(sidecar.get("lang_tags", {}))
        self._space_bytes = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in SPACE_SYMBOL.encode()]

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load ``<prefix>.model`` and check it against its sidecar ``<prefix>.json``."""
        path = Path(path)
        side = sidecar_path(path)
        try:
            model_bytes = path.read_bytes()
        except FileNotFoundError:
            raise ValueError(f"{path}: tokenizer model not found") from None
        try:
            sidecar = json.loads(side.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{side}: sidecar of {path} not found") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{side}: not valid JSON ({e})") from None
        if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"{side}: not a {SIDECAR_FORMAT} sidecar")
        actual = sha256_bytes(model_bytes)
        if sidecar.get("sha256") != actual:
            raise ValueError(
                f"{path}: sha256 {actual} does not match {sidecar.get('sha256')} recorded in "
                f"{side} (model replaced or corrupted; retrain or restore the pair)"
            )
        return cls(model_bytes, sidecar, path)

    def normalize(self, text: str) -> str:
        return normalize(text, self.normalize_options)

    def _encode_normalized(self, text: str) -> list[int]:
        if SPACE_SYMBOL not in text:
            return self._sp.encode(text)
        # A literal ▁ would decode as a space: emit its byte pieces instead (module doc).
        ids: list[int] = []
        for i, part in enumerate(text.split(SPACE_SYMBOL)):
            if i:
                ids.extend(self._space_bytes)
            ids.extend(self._sp.encode(part))
        return ids

    def _encode_pieces(self, text: str, piece_chars: int) -> Iterator[list[int]]:
        """Tokens of `text` (not yet normalized), a piece at a time (module doc)."""
        for lines in _cut(text, piece_chars, "\n"):
            for piece in _cut(self.normalize(lines), piece_chars, " "):
                yield self._encode_normalized(piece)

    def encode(self, text: str, piece_chars: int = PIECE_CHARS) -> list[int]:
        """Token ids of ``normalize(text)``; no bos/eos added (the caller decides)."""
        if len(text) <= piece_chars:
            return self._encode_normalized(self.normalize(text))
        return [i for ids in self._encode_pieces(text, piece_chars) for i in ids]

    def encode_batch(
        self, texts: Sequence[str], num_threads: int = 1, piece_chars: int = PIECE_CHARS
    ) -> list[list[int]]:
        """`encode` for many texts, using SentencePiece's threaded batch encoder."""
        # Short texts without a literal ▁ go to the batch encoder; the others one at a time.
        norm = [self.normalize(t) if len(t) <= piece_chars else None for t in texts]
        plain = [i for i, t in enumerate(norm) if t is not None and SPACE_SYMBOL not in t]
        out: list[list[int]] = [[] for _ in norm]
        encoded = self._sp.encode([norm[i] for i in plain], num_threads=num_threads)
        for i, ids in zip(plain, encoded, strict=True):
            out[i] = ids
        for i, t in enumerate(norm):
            if t is None:
                out[i] = self.encode(texts[i], piece_chars)
            elif SPACE_SYMBOL in t:
                out[i] = self._encode_normalized(t)
        return out

    def encode_flat(
        self, texts: Sequence[str], dtype: DTypeLike, piece_chars: int = PIECE_CHARS
    ) -> tuple[np.ndarray, np.ndarray]:
        """(tokens per text, eos included; every text's tokens followed by eos) as arrays.

        Memory for a long text is its token array plus one piece's work, never a Python int
        per token (about 36 bytes each) or SentencePiece's arrays over the whole text.
        """
        short = [t for t in texts if len(t) <= piece_chars]
        encoded = iter(self.encode_batch(short, piece_chars=piece_chars))
        eos = np.array([self.eos_id], dtype=dtype)
        parts: list[np.ndarray] = []
        lengths = np.zeros(len(texts), dtype=np.int64)
        for k, text in enumerate(texts):
            if len(text) <= piece_chars:
                pieces: Iterable[list[int]] = [next(encoded)]
            else:
                pieces = self._encode_pieces(text, piece_chars)
            for ids in pieces:
                parts.append(np.array(ids, dtype=dtype))
                lengths[k] += len(ids)
            parts.append(eos)
            lengths[k] += 1
        return lengths, np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; control pieces (pad, bos, eos, language tags) decode to nothing."""
        return self._sp.decode([int(i) for i in ids])

    def lang_tag(self, lang: str) -> int | None:
        """Id of the ``<2xxx>`` tag of `lang`, or None (no tags, or language unseen in training)."""
        return self._lang_tags.get(lang)

    @property
    def lang_tags(self) -> dict[str, int]:
        return dict(self._lang_tags)

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(i)

    def byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes that each id decodes to (int64, one per id): a byte piece 1, a control or
        unknown piece 0, any other piece its text with ▁ as a space. Bits per byte of a loss
        need it (tokens per byte differ between languages and tokenizers)."""
        sp = self._sp
        out = np.zeros(self.vocab_size, dtype=np.int64)
        for i in range(self.vocab_size):
            if sp.is_byte(i):
                out[i] = 1
            elif not (sp.is_control(i) or sp.is_unknown(i)):
                out[i] = len(sp.id_to_piece(i).replace(SPACE_SYMBOL, " ").encode("utf-8"))
        return out

    def is_byte(self, i: int) -> bool:
        """True for the 256 byte-fallback pieces ``<0x00>``..``<0xFF>``."""
        return self._sp.is_byte(i)

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable (e.g. sent to worker processes): the model travels as its bytes.
        return (Tokenizer, (self._model_bytes, self.sidecar, self.path))

    def __repr__(self) -> str:
        return (
            f"Tokenizer({self.path}, vocab_size={self.vocab_size}, "
            f"{self.options.model_type}, sha256={self.sha256[:12]})"
        )

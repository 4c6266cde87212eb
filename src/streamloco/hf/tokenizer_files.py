"""Our SentencePiece tokenizer as the files transformers' AutoTokenizer reads.

Written next to the weights:

- ``tokenizer.model``: the SentencePiece model itself (for sentencepiece users, and the source
  of everything else here);
- ``tokenizer.json``: the same unigram model for the `tokenizers` library, which AutoTokenizer
  loads. transformers 5's ``LlamaTokenizer`` is a BPE tokenizer and would re-read a unigram
  model as merges (different ids), so the config names the generic fast tokenizer instead;
- ``tokenizer_config.json``, ``special_tokens_map.json``: the special tokens; no bos/eos added
  by ``encode`` (our shards are documents followed by ``</s>``, never preceded by ``<s>``);
- ``streamloco_tokenizer.json``: our sidecar (normalization options, language tags), so that
  streamloco encodes exactly as in training.

How the tokenizers pipeline mirrors SentencePiece as we train it (tokenizer/train.py): no
normalizer (SentencePiece's is the identity rule, no dummy prefix, no whitespace folding); a
Metaspace pre-tokenizer that replaces spaces with ▁ and starts a word at every ▁
(split_by_whitespace); a Unigram model with the same pieces, ids and scores and byte fallback;
the newline piece (user-defined) and the control pieces as added tokens. Encoding equals ours
on normalized text (tested on the demo corpus). What differs: streamloco normalizes (NFC and
the rules of text/normalize.py) before encoding and transformers does not, so feed it normalized
text; and literal text that spells a control piece (``</s>``, ``<2nya>``) is that token in
transformers but characters in streamloco.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sentencepiece import sentencepiece_model_pb2 as spm_pb2

from streamloco.tokenizer.model import SPACE_SYMBOL, Tokenizer

SIDECAR_NAME = "streamloco_tokenizer.json"
_NORMAL, _UNKNOWN, _CONTROL, _USER, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
# Byte and unused pieces must never be matched from text (SentencePiece keeps them out of its
# lattice); in the tokenizers Unigram every vocab entry is in the lattice, so they get a score
# no real segmentation can lose to.
_NEVER = -1e9


def model_proto(tok: Tokenizer) -> spm_pb2.ModelProto:
    proto = spm_pb2.ModelProto()
    proto.ParseFromString(tok._model_bytes)
    return proto


def tokenizer_json(tok: Tokenizer) -> dict[str, Any]:
    """The tokenizers-library description of our unigram SentencePiece model (module doc)."""
    proto = model_proto(tok)
    if proto.trainer_spec.model_type != spm_pb2.TrainerSpec.UNIGRAM:
        raise ValueError(
            f"{tok.path}: only unigram SentencePiece models can be written as tokenizer.json "
            "(tokenizer.model_type = 'bpe' is not supported by the export yet)"
        )
    vocab, added = [], []
    for i, p in enumerate(proto.pieces):
        score = p.score if p.type == _NORMAL else 0.0 if p.type == _USER else _NEVER
        vocab.append([p.piece, score])
        if p.type in (_CONTROL, _USER, _UNKNOWN):
            added.append(
                {
                    "id": i,
                    "content": p.piece,
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": False,
                    "special": p.type != _USER,
                }
            )
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Metaspace",
            "replacement": SPACE_SYMBOL,
            "prepend_scheme": "never",
            "split": True,
        },
        "post_processor": None,
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": SPACE_SYMBOL}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
            ],
        },
        "model": {
            "type": "Unigram",
            "unk_id": tok.unk_id,
            "vocab": vocab,
            "byte_fallback": True,
        },
    }


def tokenizer_files(tok: Tokenizer, max_len: int) -> dict[str, bytes]:
    """File name -> content of every tokenizer file of an export (module doc)."""
    special = {
        "bos_token": tok.id_to_piece(tok.bos_id),
        "eos_token": tok.id_to_piece(tok.eos_id),
        "unk_token": tok.id_to_piece(tok.unk_id),
        "pad_token": tok.id_to_piece(tok.pad_id),
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_len,
        "additional_special_tokens": [tok.id_to_piece(i) for i in sorted(tok.lang_tags.values())],
    }

    def dump(obj: Any) -> bytes:
        return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    return {
        "tokenizer.model": tok._model_bytes,
        "tokenizer.json": dump(tokenizer_json(tok)),
        "tokenizer_config.json": dump(config),
        "special_tokens_map.json": dump(special),
        SIDECAR_NAME: dump(tok.sidecar),
    }


def load_tokenizer(model_dir: Path) -> Tokenizer | None:
    """Our Tokenizer from an export (tokenizer.model + its sidecar), or None if it has none."""
    model = model_dir / "tokenizer.model"
    side = model_dir / SIDECAR_NAME
    if not model.is_file():
        return None
    if not side.is_file():
        raise ValueError(f"{model_dir}: tokenizer.model without {SIDECAR_NAME} (not an export?)")
    # Tokenizer.load pairs <prefix>.model with <prefix>.json; the export's sidecar has its own
    # name (tokenizer.json is the tokenizers-library file), so check the pair the same way here.
    sidecar = json.loads(side.read_text(encoding="utf-8"))
    tok = Tokenizer(model.read_bytes(), sidecar, model)
    if sidecar.get("sha256") != tok.sha256:
        raise ValueError(
            f"{model}: sha256 {tok.sha256} does not match {sidecar.get('sha256')} in {side}"
        )
    return tok

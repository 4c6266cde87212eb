"""Embedding rows for the pieces an extended tokenizer adds (tokenizer/extend.py).

A new piece's row starts at the mean of the rows of its segmentation under the base tokenizer
(the same for the output rows when the head is untied): the model already knows what that
sequence of tokens means, so the new token starts as a summary of it, not as noise. The random
alternative (N(0, 0.02), the model's own init) is kept for the comparison the command reports.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import torch

from streamloco.text.documents import Document
from streamloco.tokenizer.model import SPACE_SYMBOL, Tokenizer
from streamloco.workers.model import ModelArgs, Transformer, lm_loss

INIT_MODES = ("mean", "random")


def base_segmentation(base: Tokenizer, ext: Tokenizer, i: int) -> list[int]:
    """Base-tokenizer ids of the text of extended piece `i` (the piece's ▁ is a space)."""
    return base.encode(ext.id_to_piece(i).replace(SPACE_SYMBOL, " "))


def extend_embeddings(
    state: dict[str, torch.Tensor],
    args: ModelArgs,
    base: Tokenizer,
    ext: Tokenizer,
    mode: str = "mean",
    seed: int = 0,
) -> tuple[ModelArgs, dict[str, torch.Tensor]]:
    """(args, state) with a row for every id of `ext`; base rows are untouched (copied)."""
    if mode not in INIT_MODES:
        raise ValueError(f"init mode {mode!r} is not one of {', '.join(INIT_MODES)}")
    if args.vocab_size < base.vocab_size:
        raise ValueError(f"model has {args.vocab_size} rows, base tokenizer {base.vocab_size}")
    vocab = max(args.vocab_size, ext.vocab_size)
    new_ids = range(base.vocab_size, ext.vocab_size)
    gen = torch.Generator().manual_seed(seed)
    keys = ["tok_emb.weight"] + ([] if args.tie_embeddings else ["head.weight"])
    out = dict(state)
    for key in keys:
        old = state[key]  # (V_old, C)
        rows = torch.zeros(vocab, old.shape[1], dtype=old.dtype)
        rows[: old.shape[0]] = old
        for i in new_ids:
            if mode == "mean":
                rows[i] = old[base_segmentation(base, ext, i)].mean(dim=0)
            else:
                rows[i] = torch.randn(old.shape[1], generator=gen, dtype=old.dtype) * 0.02
        out[key] = rows
    if args.tie_embeddings:
        out["head.weight"] = out["tok_emb.weight"]
    return replace(args, vocab_size=vocab), out


@torch.no_grad()
def text_loss(
    model: Transformer, tok: Tokenizer, docs: Iterable[Document], max_tokens: int = 8192
) -> tuple[float, int, int]:
    """(mean next-token loss in nats, tokens scored, UTF-8 bytes of the text scored) on `docs`.

    Documents are joined with </s> as in the token shards and taken whole until `max_tokens`;
    every token after the first is scored, in windows of the model's context (the last one
    shorter). Bits per byte = loss * tokens / (bytes * ln 2): comparable across tokenizers.
    """
    stream: list[int] = [tok.eos_id]  # a document starts after </s>, as in training
    nbytes = 0
    for d in docs:
        if len(stream) > max_tokens:
            break
        stream += [*tok.encode(d.text), tok.eos_id]
        nbytes += len(tok.normalize(d.text).encode("utf-8")) + 1  # + the document's end
    if len(stream) < 2:
        raise ValueError("text_loss: no text to score")
    t = model.args.max_seq_len
    x = torch.tensor(stream, dtype=torch.long)
    model.eval()
    total = 0.0
    for start in range(0, len(stream) - 1, t):
        window = x[start : start + t + 1]  # (<= T+1,)
        logits = model(window[None, :-1])  # (1, L, V)
        total += float(lm_loss(logits, window[None, 1:])) * (len(window) - 1)
    tokens = len(stream) - 1
    return total / tokens, tokens, nbytes

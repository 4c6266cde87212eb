"""Sampling text from a model: temperature and nucleus (top-p), seeded, on CPU or GPU.

No KV cache: each new token runs the model over the (at most max_seq_len) last tokens. Our
models are small and this keeps the model code the one that trains.
"""

from __future__ import annotations

import torch

from streamloco.workers.model import Transformer


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Logits (V,) with every token outside the smallest set of probability >= top_p set to -inf.

    The most likely token always stays, so top_p -> 0 is greedy decoding.
    """
    if top_p >= 1.0:
        return logits
    probs, order = torch.sort(torch.softmax(logits, dim=-1), descending=True)  # (V,)
    before = torch.cumsum(probs, dim=-1) - probs  # mass of the tokens ranked above each
    drop = before >= top_p
    drop[0] = False
    out = logits.clone()
    out[order[drop]] = float("-inf")
    return out


@torch.no_grad()
def sample(
    model: Transformer,
    prompt: list[int],
    *,
    max_tokens: int,
    temperature: float = 0.8,
    top_p: float = 0.95,
    seed: int = 0,
    stop: int | None = None,
) -> list[int]:
    """New token ids after `prompt` (stops early at `stop`, which is not returned).

    temperature 0 is greedy (argmax). The same seed and inputs give the same tokens.
    """
    if temperature < 0:
        raise ValueError(f"--temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {top_p}")
    if max_tokens < 0:
        raise ValueError(f"--max-tokens must be >= 0, got {max_tokens}")
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ids = list(prompt)
    out: list[int] = []
    window = model.args.max_seq_len
    for _ in range(max_tokens):
        ctx = torch.tensor([ids[-window:]], dtype=torch.long, device=device)  # (1, T)
        logits = model(ctx)[0, -1].float().cpu()  # (V,)
        if temperature == 0:
            nxt = int(logits.argmax())
        else:
            probs = torch.softmax(top_p_filter(logits / temperature, top_p), dim=-1)
            nxt = int(torch.multinomial(probs, 1, generator=gen))
        if nxt == stop:
            break
        ids.append(nxt)
        out.append(nxt)
    return out

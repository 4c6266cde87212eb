"""A seeded synthetic language with a known entropy floor, for engine tests and the smoke run.

An order-2 Markov chain over V tokens: every context (a, b) allows `branching` next tokens with
Dirichlet-drawn probabilities. A model that learns the table reaches the chain's conditional
entropy, which `nll_floor` measures on the same batches, so a loss curve has a floor to aim at.
"""

from __future__ import annotations

import math

import torch


class MarkovLanguage:
    def __init__(self, vocab_size: int, branching: int = 4, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        v = vocab_size
        # (V*V, branching): allowed next tokens and their probabilities per context a*V + b
        self.next_tokens = torch.rand(v * v, v, generator=g).argsort(dim=1)[:, :branching]
        alpha = torch.full((v * v, branching), 0.5)
        gamma = torch._standard_gamma(alpha, generator=g)  # Dirichlet(0.5) via normalized gammas
        self.probs = gamma / gamma.sum(-1, keepdim=True)
        self.vocab_size = v

    def sample(
        self, batch: int, length: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, length) tokens and (B, length-1) true log-probs of tokens 1.. given the past.

        Tokens 0 and 1 are uniform, so token 1's log-prob is -log V.
        """
        v = self.vocab_size
        out = torch.empty(batch, length, dtype=torch.long)
        out[:, :2] = torch.randint(0, v, (batch, 2), generator=generator)
        logp = torch.full((batch, max(length - 1, 0)), -math.log(v))
        for t in range(2, length):
            ctx = out[:, t - 2] * v + out[:, t - 1]  # (B,)
            choice = torch.multinomial(self.probs[ctx], 1, generator=generator).squeeze(1)
            out[:, t] = self.next_tokens[ctx, choice]
            logp[:, t - 1] = self.probs[ctx, choice].log()
        return out, logp


class SyntheticStream:
    """Batches of (B, T+1) windows for one group; deterministic in (seed, stream)."""

    def __init__(
        self, lang: MarkovLanguage, batch_size: int, seq_len: int, seed: int, stream: int
    ) -> None:
        self.lang, self.batch_size, self.seq_len = lang, batch_size, seq_len
        self.generator = torch.Generator().manual_seed(seed * 1_000_003 + stream + 1)

    def next(self) -> torch.Tensor:
        tokens, _ = self.lang.sample(self.batch_size, self.seq_len + 1, self.generator)
        return tokens  # (B, T+1)

    def state_dict(self) -> dict:
        return {"rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["rng"])

"""Train only the embedding (and output) rows of new tokens; everything else stays bit-exact.

The first stage of an adaptation (docs/adaptation.md) teaches the rows an extended tokenizer
added while the base model stays as it is. Freezing by `requires_grad` would change the
parameter set the engine and the optimizer were built for, so the parameters stay trainable and:

- after backward, frozen parameters lose their gradient (AdamW skips a parameter without one)
  and the frozen rows of the embedding and untied head get a zero gradient;
- after the optimizer step and after every outer step, the frozen values are copied back from a
  snapshot: AdamW's decoupled weight decay shrinks every row of a parameter that has a gradient,
  and the outer merge ``alpha * local + (1 - alpha) * global`` of two equal values can be off by
  one ulp. So frozen values never move, every pseudo-gradient of them is exactly 0, and the
  global model keeps them exact too.

The snapshot is taken at the first step, after any initialization was loaded (init_from, a
checkpoint, a peer's state). It costs one copy of the model's parameters.
"""

from __future__ import annotations

import torch
from torch import nn

ROW_PARAMS = ("tok_emb.weight", "head.weight")


class FrozenRows:
    def __init__(self, model: nn.Module, first_trained_row: int) -> None:
        vocab = model.tok_emb.weight.shape[0]  # type: ignore[union-attr]
        if not 0 < first_trained_row < vocab:
            raise ValueError(
                f"model.train_rows_from: {first_trained_row} must be in (0, {vocab}) (the "
                "embedding rows from there on train; 0 trains everything)"
            )
        self.first = first_trained_row
        self.params = dict(model.named_parameters())  # tied head: listed once, as tok_emb
        self.snapshot: dict[str, torch.Tensor] | None = None

    def _frozen_part(self, name: str, p: torch.Tensor) -> torch.Tensor:
        return p[: self.first] if name in ROW_PARAMS else p

    @torch.no_grad()
    def mask_grads(self) -> None:
        """Call after backward, before clipping and the optimizer step."""
        if self.snapshot is None:
            self.snapshot = {n: self._frozen_part(n, p).clone() for n, p in self.params.items()}
        for name, p in self.params.items():
            if name in ROW_PARAMS:
                if p.grad is not None:
                    p.grad[: self.first] = 0
            else:
                p.grad = None

    @torch.no_grad()
    def restore(self) -> None:
        """Call after the optimizer step and after every outer step."""
        if self.snapshot is None:
            return
        for name, p in self.params.items():
            self._frozen_part(name, p).copy_(self.snapshot[name])

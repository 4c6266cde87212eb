"""The inner optimizer: AdamW with linear warmup then cosine decay (DiLoCo line of work)."""

from __future__ import annotations

import math

import torch
from torch import nn


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Multiplier of the peak lr for 0-based `step`: linear warmup, then cosine to min_ratio."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_inner_optimizer(model: nn.Module, inner, total_steps: int):
    """AdamW + LambdaLR from an `InnerConfig`; norms and 1-d weights get no weight decay."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": inner.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=inner.lr,
        betas=(inner.beta1, inner.beta2),
        foreach=False,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total_steps, inner.warmup_steps, inner.min_lr_ratio)
    )
    return opt, sched

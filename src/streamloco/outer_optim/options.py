"""What the outer loop reads from the run's config, and the error that names a bad option.

`streamloco.config.OuterConfig` is the one definition of these options (defaults, docs, TOML);
this package must not import config (config sits above it), so the engine states what it reads
as a Protocol. Any object with these attributes will do: tests pass an `OuterConfig` directly.
"""

from __future__ import annotations

from typing import Protocol


class OuterOptions(Protocol):
    sync_every: int  # H
    fragments: int  # F
    overlap: int  # tau
    alpha: float
    lr: float
    momentum: float
    nesterov: bool
    codec: str
    block_size: int
    zstd_level: int
    topk: int
    rounding: str
    error_feedback: bool
    error_decay: float
    pattern: str
    schedule: str
    state_device: str
    final_sync: bool
    reduce: str  # "allgather" | "two_phase" | "auto" (reduce.py)


class OptionError(ValueError):
    """A bad value of one option; `option` is its `OuterOptions` attribute name, so the config
    layer can name the key (`outer.<option>`) without parsing the message."""

    def __init__(self, option: str, why: str) -> None:
        super().__init__(f"{option}: {why}")
        self.option, self.why = option, why

"""When each fragment sends its pseudo-gradient and when it applies the outer step.

Inner steps are counted from 1: `step` is the number of inner optimizer steps taken so far, and
the engine asks after every one of them. A fragment p has a send offset s_p in [0, H); it sends at
every step t >= 1 with (t - s_p) % H == 0 and applies tau steps later.

Two offset rules are offered so runs can be compared with either reference:

- ``streaming`` (Streaming DiLoCo paper, design.md): s_p = p*H/F. Fragment 0 first syncs at H,
  fragment p > 0 at p*H/F (so fragment 1 has its first sync after only H/F steps).
- ``torchft`` (torchft's DiLoCo round robin): sync k handles fragment k mod F, sends at
  (k+1)*H/F - tau and applies at (k+1)*H/F; i.e. s_p = ((p+1)*H/F - tau) mod H. Fragment 0
  applies first, at H/F; fragment F-1 applies at H.

DiLoCo is F=1, tau=0 under either rule (one fragment, send and apply at every multiple of H).
tau < H/F is required: then at most one fragment is in flight at any step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from streamloco.outer_optim.options import OptionError, OuterOptions


@dataclass(frozen=True)
class Schedule:
    sync_every: int  # H
    fragments: int  # F
    overlap: int = 0  # tau
    kind: Literal["streaming", "torchft"] = "streaming"

    def __post_init__(self) -> None:
        """The schedule's rules, checked here only (the config layer asks this class)."""
        h, f, tau = self.sync_every, self.fragments, self.overlap
        if h < 1:
            raise OptionError("sync_every", f"H must be >= 1, got H={h}")
        if f < 1:
            raise OptionError("fragments", f"F must be >= 1, got F={f}")
        if h % f:
            raise OptionError("sync_every", f"H={h} must be a multiple of outer.fragments F={f}")
        if not 0 <= tau < h // f:
            raise OptionError(
                "overlap",
                f"tau={tau} must be in [0, H/F={h // f}) so a fragment lands before the next sends",
            )
        if self.kind not in ("streaming", "torchft"):
            raise OptionError("schedule", f"unknown kind {self.kind!r} (streaming, torchft)")

    @classmethod
    def of(cls, options: OuterOptions) -> Schedule:
        """The run's schedule: every caller builds it from the options this one way."""
        return cls(options.sync_every, options.fragments, options.overlap, options.schedule)  # type: ignore[arg-type]

    @property
    def period(self) -> int:
        """Steps between two consecutive syncs of any fragment (H/F)."""
        return self.sync_every // self.fragments

    def send_offset(self, fragment: int) -> int:
        if self.kind == "streaming":
            return fragment * self.period
        return ((fragment + 1) * self.period - self.overlap) % self.sync_every

    def sends(self, step: int) -> list[int]:
        """Fragments whose pseudo-gradient is computed and sent right after inner step `step`."""
        if step < 1:
            return []
        h = self.sync_every
        return [p for p in range(self.fragments) if (step - self.send_offset(p)) % h == 0]

    def applies(self, step: int) -> list[int]:
        """Fragments whose exchange completes and whose outer step is applied after `step`."""
        return self.sends(step - self.overlap)

    def idle_after(self, step: int) -> bool:
        """True if no fragment is in flight once `step` is done (a safe point to checkpoint)."""
        return not any(self.sends(s) for s in range(step - self.overlap + 1, step + 1))

    def next_event(self, step: int) -> tuple[int, int]:
        """(step, fragment) of the first send strictly after `step`, for progress displays."""
        first = step + 1
        return min(
            (first + (self.send_offset(p) - first) % self.sync_every, p)
            for p in range(self.fragments)
        )

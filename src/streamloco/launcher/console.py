"""The driver's console view: one progress bar, with notes printed above it."""

from __future__ import annotations

import math
import sys

from streamloco.outer_optim.schedule import Schedule
from streamloco.records import ChunkReport
from streamloco.results import Collector, human


class ProgressView:
    """The console bar: slowest group's step, loss, tokens/s, bytes exchanged, next sync."""

    def __init__(self, steps: int, start: int, schedule: Schedule) -> None:
        from streamloco.progress import progress_bar

        self.bar = progress_bar(steps, desc="train", unit="step", initial=start)
        self.tps: dict[int, float] = {}
        self.sched = schedule

    def update(self, rep: ChunkReport, collector: Collector) -> None:
        if rep.seconds > 0 and rep.tokens:
            self.tps[rep.group] = rep.tokens / rep.seconds
        step = min(collector.steps)
        moved = sum(g.bytes_sent + g.bytes_received for g in collector.groups)
        nxt, frag = self.sched.next_event(step)
        self.bar.set_postfix(
            refresh=False,
            loss=f"{rep.loss:.3f}" if not math.isnan(rep.loss) else "-",
            tok_s=f"{sum(self.tps.values()):,.0f}",
            exchanged=human(moved),
            next_sync=f"f{frag}@{nxt}",
        )
        self.bar.update(step - self.bar.n)

    def note(self, text: str) -> None:
        self.bar.write(text, file=sys.stdout)

    def close(self) -> None:
        self.bar.close()

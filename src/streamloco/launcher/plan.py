"""When a run's chunks end and its checkpoints are taken (pure: a function of the config)."""

from __future__ import annotations

from dataclasses import dataclass

from streamloco.config import Config
from streamloco.outer_optim.schedule import Schedule


@dataclass
class Plan:
    """When chunks end and checkpoints are taken."""

    steps: int
    log_every: int
    checkpoints: list[int]
    schedule: Schedule

    @classmethod
    def build(cls, cfg: Config, start: int) -> Plan:
        t = cfg.train
        sched = Schedule.of(cfg.outer)
        points = set()
        every = cfg.run.checkpoint_every
        if every:
            for want in range(every, t.steps, every):
                step = next(s for s in range(want, t.steps + 1) if sched.idle_after(s))
                points.add(step)
        points.add(t.steps)  # the end: finish() has applied everything
        return cls(t.steps, t.log_every, sorted(p for p in points if p > start), sched)

    def next_stop(self, step: int) -> int:
        """The end of the chunk that starts after `step`: at least log_every steps on (or the
        next checkpoint), moved to a step with no fragment in flight, where a replacement group
        can take over a peer's state."""
        nxt = min([step + self.log_every, self.steps, *(c for c in self.checkpoints if c > step)])
        while nxt < self.steps and not self.schedule.idle_after(nxt):
            nxt += 1
        return nxt

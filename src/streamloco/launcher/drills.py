"""Fault drills (`streamloco train --inject KIND:GROUP@STEP[=VALUE]`): rehearse failures for real.

The driver does the drill at the first report of the group at or after the step: `kill` kills
the group's rank 0 actor; the others are forwarded to the ranks' trainers (`Trainer.inject`),
which damage payloads through a `DrillTransport` wrapper, never by patching code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamloco.launcher.groups import WorkerGroups


@dataclass(frozen=True)
class Fault:
    """A fault drill: at the first report of `group` at or after `step`, do `kind` to it.

    kill: kill the group's rank 0 actor (the group dies); delay: every rank sleeps `value` s per
    inner step from then on (a straggler); nan: NaN into every rank's weights; corrupt: rank 0's
    next payload gets a flipped byte. Parsed from `--inject KIND:GROUP@STEP[=VALUE]`.
    """

    kind: str
    group: int
    step: int
    value: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Fault:
        import re

        m = re.fullmatch(r"(kill|delay|nan|corrupt):(\d+)@(\d+)(?:=([0-9.]+))?", text)
        if not m:
            raise ValueError(
                f"--inject {text!r}: expected KIND:GROUP@STEP[=VALUE], KIND one of kill, delay, "
                "nan, corrupt (e.g. kill:1@60, delay:2@0=0.05)"
            )
        return cls(m[1], int(m[2]), int(m[3]), float(m[4] or 0.0))


def inject(groups: WorkerGroups, fault: Fault) -> None:
    """Do `fault` to its group's actors now (the driver calls it at the group's report)."""
    import ray

    actors = groups.actors[fault.group]
    if fault.kind == "kill":
        ray.kill(actors[0])
        return
    for actor in actors if fault.kind in ("delay", "nan") else actors[:1]:
        actor.inject.remote(fault.kind, fault.value)

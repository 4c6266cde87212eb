"""What a training run produced (simulated in threads or on Ray) and its console summary."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import torch

from streamloco.config import Config
from streamloco.metrics import MetricsSink
from streamloco.records import ChunkReport, GroupTotals, RecordLog, RoundRecord, scalars, tag


@dataclass
class GroupResult:
    train_loss: list[float] = field(default_factory=list)
    bytes_sent: int = 0
    bytes_received: int = 0
    blocked_s: float = 0.0
    global_state: dict[str, torch.Tensor] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)  # see Trainer.faults
    rounds: list[RoundRecord] = field(default_factory=list)  # every outer round, in order

    def bytes_by(self, step: int, before_zstd: bool = False) -> int:
        """Bytes this group moved in the rounds applied by `step` (a resumed run: since resume)."""
        return sum(
            r.bytes_before_zstd if before_zstd else r.bytes_moved
            for r in self.rounds
            if r.step <= step
        )


@dataclass
class RunResult:
    params: int
    groups: list[GroupResult]
    eval_history: list[tuple[int, float]]  # (step, eval loss of the global parameters)
    eval_by_lang: dict[str, float]  # final eval loss per language
    nll_floor: float | None  # the synthetic language's true NLL on the eval batches
    wall_s: float
    tokens: int
    recoveries: list[tuple[int, int]] = field(
        default_factory=list
    )  # (group, bytes received)  # tokens processed by all groups together
    eval_bpb_by_lang: dict[str, float] = field(default_factory=dict)  # final, bits per byte

    @property
    def final_eval_loss(self) -> float:
        return self.eval_history[-1][1]

    def globals_identical(self) -> bool:
        """True if every group ended with bit-identical global parameters."""
        ref = self.groups[0].global_state
        return all(
            all(torch.equal(ref[k], g.global_state[k]) for k in ref) for g in self.groups[1:]
        )


def ddp_bytes_per_group(numel: int, groups: int, steps: int, bits: int) -> float:
    """Bytes one group sends + receives in a ring all-reduce of every step's gradients.

    A ring all-reduce sends and receives 2(M-1)/M * N*b/8 bytes per rank; this is what a DDP run
    across the same M groups would move for the same number of steps.
    """
    return steps * 2 * 2 * (groups - 1) / groups * numel * bits / 8


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}TB"


def summarize(cfg: Config, result: RunResult) -> str:
    """The console summary of a run: losses, bytes on the wire and the ratio to DDP."""
    m = cfg.train.groups
    lines = [
        f"model {cfg.model.size}: {result.params:,} params; {m} groups x {cfg.train.steps} steps;"
        f" {result.tokens:,} tokens in {result.wall_s:.1f}s "
        f"({result.tokens / result.wall_s:,.0f} tokens/s)",
        (
            f"outer: H={cfg.outer.sync_every} F={cfg.outer.fragments} tau={cfg.outer.overlap} "
            f"alpha={cfg.outer.alpha} codec={cfg.outer.codec}"
            + (f"+zstd{cfg.outer.zstd_level}" if cfg.outer.zstd_level else "")
            + f" schedule={cfg.outer.schedule}"
            if cfg.outer.enabled
            else "outer: none (outer.enabled = false: plain data-parallel training)"
        ),
        f"final eval loss of the global parameters: {result.final_eval_loss:.4f}"
        + (
            f" (the synthetic language's floor: {result.nll_floor:.4f})"
            if result.nll_floor is not None
            else " (mean over languages)"
        ),
    ]
    if len(result.eval_by_lang) > 1:
        lines.append(
            "  per language: "
            + ", ".join(
                f"{lang} {loss:.3f} (ppl {math.exp(loss):.1f}"
                + (
                    f", {result.eval_bpb_by_lang[lang]:.3f} bits/byte)"
                    if lang in result.eval_bpb_by_lang
                    else ")"
                )
                for lang, loss in result.eval_by_lang.items()
            )
        )
    lines.append(f"global parameters identical on all groups: {result.globals_identical()}")
    faults = {g: {k: v for k, v in res.faults.items() if v} for g, res in enumerate(result.groups)}
    for g, nbytes in result.recoveries:
        lines.append(f"group {g} was replaced and recovered live from a peer ({human(nbytes)})")
    if any(faults.values()):
        lines.append(
            "faults: "
            + "; ".join(
                f"group {g}: " + ", ".join(f"{k} {v}" for k, v in f.items())
                for g, f in faults.items()
                if f
            )
            + " (excluded = payloads left out of rounds, adopted = rounds without this group's "
            "payload, resets = whole-model resets to the global parameters)"
        )
    for g, res in enumerate(result.groups):
        moved = res.bytes_sent + res.bytes_received
        lines.append(
            f"group {g}: sent {human(res.bytes_sent)}, received "
            f"{human(res.bytes_received)}, blocked {res.blocked_s:.2f}s"
        )
        if m > 1:
            for bits, name in ((16, "bf16"), (32, "fp32")):
                ddp = ddp_bytes_per_group(result.params, m, cfg.train.steps, bits)
                lines.append(
                    f"  vs DDP in {name} (ring all-reduce, {human(ddp)}): "
                    f"{ddp / max(moved, 1):,.0f}x fewer bytes"
                )
    return "\n".join(lines)


class Collector:
    """Folds the workers' chunk reports into the metrics sink, the run's records.jsonl and the
    run's result.

    Only rank 0's report of each group is used (every rank of a group reports the same group
    sums). Thread-safe, so simulated groups in threads can share one.
    """

    def __init__(
        self,
        cfg: Config,
        sink: MetricsSink,
        params: int,
        nll_floor: float | None = None,
        say=print,
        log: RecordLog | None = None,
    ) -> None:
        self.cfg, self.sink, self.params, self.nll_floor = cfg, sink, params, nll_floor
        self.say = say  # where fault messages go (the console, above the progress bar)
        self.log = log
        self.groups = [GroupResult() for _ in range(cfg.train.groups)]
        self.eval_history: list[tuple[int, float]] = []
        self.eval_by_lang: dict[str, float] = {}
        self.eval_bpb_by_lang: dict[str, float] = {}
        self.steps = [0] * cfg.train.groups
        self.tokens = 0  # processed by this run (a resumed run counts from its checkpoint)
        self.recoveries: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def add(self, rep: ChunkReport) -> None:
        if rep.rank != 0:
            return
        with self._lock:
            for name, value, step in scalars(rep, self.cfg.outer.lr):
                self.sink.scalar(name, value, step)
            if self.log is not None:
                self.log.write(rep)
            res = self.groups[rep.group]
            res.train_loss += rep.losses
            res.rounds += rep.rounds
            res.bytes_sent, res.bytes_received = rep.bytes_sent, rep.bytes_received
            res.blocked_s = rep.blocked_s
            res.faults = dict(rep.faults)
            for line in rep.messages:
                self.say(f"streamloco: {line}")
            self.steps[rep.group] = rep.step
            self.tokens += rep.tokens
            for ev in rep.evals:
                self.eval_history.append((ev.step, ev.loss))
                self.eval_by_lang = dict(ev.loss_by_lang)
                self.eval_bpb_by_lang = ev.bpb_by_lang
            if rep.group == 0 and self.cfg.train.groups > 1:
                self._versus_ddp(res, rep.step)

    def _versus_ddp(self, res: GroupResult, step: int) -> None:
        """What DDP across the same groups would have moved by `step`, and our ratio to it."""
        moved = res.bytes_sent + res.bytes_received
        ddp = ddp_bytes_per_group(self.params, self.cfg.train.groups, step, 16)
        self.sink.scalar(tag("ddp_bytes"), ddp, step)
        if moved:
            self.sink.scalar(tag("ratio_vs_ddp"), ddp / moved, step)

    def totals(self, group: int, with_bytes: bool = True) -> GroupTotals:
        """Group `group`'s counters at its last report (bytes only for the rank that holds
        them: the group's sums add its ranks' counters)."""
        res = self.groups[group]
        if not with_bytes:
            return GroupTotals(blocked_s=res.blocked_s)
        return GroupTotals(res.bytes_sent, res.bytes_received, res.blocked_s)

    def recovered(self, group: int, nbytes: int) -> None:
        with self._lock:
            self.recoveries.append((group, nbytes))

    def finish(self, wall_s: float) -> RunResult:
        return RunResult(
            params=self.params,
            groups=self.groups,
            eval_history=sorted(self.eval_history),
            eval_by_lang=self.eval_by_lang,
            nll_floor=self.nll_floor,
            wall_s=wall_s,
            tokens=self.tokens,
            recoveries=list(self.recoveries),
            eval_bpb_by_lang=self.eval_bpb_by_lang,
        )

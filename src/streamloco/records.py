"""Typed run statistics: what a worker group reports, and every view derived from it.

A `Trainer` turns the engine's `SyncEvent`s into these records; they travel unchanged to the
driver (or `simulate`), to `results.Collector`, to the run's `records.jsonl`, and to the bench.
TensorBoard tags and JSON lines are *views* of the records, derived here and nowhere else: a tag
can be renamed without touching anything that computes with the numbers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from streamloco.atomic import atomic_write_bytes


@dataclass(frozen=True)
class SendRecord:
    """A fragment's pseudo-gradient left this group (as rank 0 saw it)."""

    fragment: int
    step: int
    delta_norm: float  # ||global - local|| of the whole fragment
    abstained: bool  # not finite: an empty payload was sent


@dataclass(frozen=True)
class RoundRecord:
    """One outer round (a fragment's apply) of one group. Bytes are the group's, summed over its
    ranks; the metrics are rank 0's (its own shard of the fragment)."""

    fragment: int
    step: int  # the apply step
    sent_at: int  # the step its payloads were sent at
    bytes_sent: int  # this group's payloads
    bytes_received: int  # everyone else's
    bytes_before_zstd: int  # sent + received as they would be without the zstd stage
    quant_rel_error: float  # ||decode(own) - delta|| / ||delta||
    mean_delta_norm: float  # ||mean decoded delta||
    groups: int  # payloads in the mean

    @property
    def bytes_moved(self) -> int:
        return self.bytes_sent + self.bytes_received


@dataclass(frozen=True)
class EvalRecord:
    """Eval loss of the global parameters on each language's held-out batches."""

    step: int
    loss_by_lang: dict[str, float]
    # UTF-8 bytes per predicted token of each language's eval batches (empty: unknown, e.g. the
    # synthetic language); what turns nats per token into bits per byte
    bytes_per_token: dict[str, float] = field(default_factory=dict)

    @property
    def loss(self) -> float:
        return mean_loss(self.loss_by_lang)

    @property
    def bpb_by_lang(self) -> dict[str, float]:
        """Bits per byte per language: comparable across languages and tokenizers, which
        nats per token are not (a language split into more tokens has lower loss per token)."""
        return bits_per_byte(self.loss_by_lang, self.bytes_per_token)


def bits_per_byte(
    loss_by_lang: dict[str, float], bytes_per_token: dict[str, float]
) -> dict[str, float]:
    """loss (nats per token) / (bytes per token * ln 2), for the languages with a byte count."""
    return {
        lang: loss / (bytes_per_token[lang] * math.log(2))
        for lang, loss in loss_by_lang.items()
        if bytes_per_token.get(lang, 0) > 0
    }


def mean_loss(losses: dict[str, float]) -> float:
    """The overall eval loss: the plain mean over languages (each language counts the same)."""
    return math.fsum(losses.values()) / len(losses)


@dataclass(frozen=True)
class GroupTotals:
    """A group's cumulative counters: what a replacement group continues from."""

    bytes_sent: int = 0
    bytes_received: int = 0
    blocked_s: float = 0.0  # mean over the group's ranks


@dataclass
class ChunkReport:
    """What one `Trainer.train(until)` call did, from the group's point of view."""

    group: int
    rank: int
    first_step: int  # the chunk's first step (losses[0] belongs to it)
    step: int  # the step the chunk ended at
    losses: list[float] = field(default_factory=list)  # group mean training loss per step
    lrs: list[float] = field(default_factory=list)  # inner lr after each step
    sends: list[SendRecord] = field(default_factory=list)
    rounds: list[RoundRecord] = field(default_factory=list)
    evals: list[EvalRecord] = field(default_factory=list)
    tokens: int = 0  # tokens the group processed in this chunk
    seconds: float = 0.0  # wall time of this chunk
    mfu: float | None = None  # model FLOPs utilization (None: the device's peak is unknown)
    bytes_sent: int = 0  # cumulative, whole group
    bytes_received: int = 0  # cumulative, whole group
    blocked_s: float = 0.0  # cumulative time waiting for exchanges (mean over ranks)
    done: bool = False  # the last step ran and every exchange has landed
    messages: list[str] = field(default_factory=list)  # faults worth a console line
    faults: dict[str, int] = field(default_factory=dict)  # cumulative counters of this group

    @property
    def loss(self) -> float:
        """The group's training loss at the chunk's last step (NaN for an empty chunk)."""
        return self.losses[-1] if self.losses else math.nan


# ---- TensorBoard: the one place tags are named -------------------------------------------------

TAGS = {
    "lr_inner": "train/lr_inner",
    "loss": "train/loss/group{g}",
    "delta_norm": "outer/delta_norm/group{g}/fragment{p}",
    "quant_rel_error": "outer/quant_rel_error/fragment{p}",
    "mean_delta_norm": "outer/mean_delta_norm/fragment{p}",
    "outer_lr": "outer/lr",
    "groups_in_round": "outer/groups_in_round",
    "round_bytes_sent": "comm/round_bytes_sent/group{g}",
    "round_bytes_received": "comm/round_bytes_received/group{g}",
    "round_bytes_before_zstd": "comm/round_bytes_before_zstd/group{g}",
    "round_fragment": "comm/round_fragment/group{g}",
    "bytes_sent": "comm/bytes_sent/group{g}",
    "bytes_received": "comm/bytes_received/group{g}",
    "blocked_s": "outer/blocked_s/group{g}",
    "fault": "faults/{counter}/group{g}",
    "tokens_per_s": "perf/tokens_per_s/group{g}",
    "mfu": "perf/mfu/group{g}",
    "eval_loss_lang": "eval/loss/{lang}",
    "eval_ppl_lang": "eval/perplexity/{lang}",
    "eval_bpb_lang": "eval/bpb/{lang}",
    "eval_loss": "eval/loss",
    "eval_ppl": "eval/perplexity",
    "ddp_bytes": "comm/ddp_bf16_bytes_per_group",
    "ratio_vs_ddp": "comm/ratio_vs_ddp_bf16",
    "recovery_s": "faults/recovery_s",
    "recoveries": "faults/recoveries",
    "recovery_bytes": "faults/recovery_bytes",
    "groups_alive": "faults/groups_alive",
}

Scalar = tuple[str, float, int]  # (tag, value, step)


def tag(name: str, **fields: object) -> str:
    return TAGS[name].format(**fields)


def _perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def scalars(rep: ChunkReport, outer_lr: float) -> Iterator[Scalar]:
    """The TensorBoard scalars of one group's chunk. Run-wide series (lr, quantization error,
    eval) come from group 0 only: every group sees the same values."""
    g = rep.group
    steps = range(rep.first_step, rep.first_step + len(rep.losses))
    if g == 0:
        yield from ((tag("lr_inner"), lr, s) for lr, s in zip(rep.lrs, steps, strict=True))
    yield from ((tag("loss", g=g), v, s) for v, s in zip(rep.losses, steps, strict=True))
    for snd in rep.sends:
        yield tag("delta_norm", g=g, p=snd.fragment), snd.delta_norm, snd.step
    for r in rep.rounds:
        if g == 0:
            yield tag("quant_rel_error", p=r.fragment), r.quant_rel_error, r.step
            yield tag("mean_delta_norm", p=r.fragment), r.mean_delta_norm, r.step
            yield tag("outer_lr"), outer_lr, r.step
            yield tag("groups_in_round"), r.groups, r.step
        yield tag("round_bytes_sent", g=g), r.bytes_sent, r.step
        yield tag("round_bytes_received", g=g), r.bytes_received, r.step
        yield tag("round_bytes_before_zstd", g=g), r.bytes_before_zstd, r.step
        yield tag("round_fragment", g=g), r.fragment, r.step
    if rep.rounds or rep.done:
        yield tag("bytes_sent", g=g), rep.bytes_sent, rep.step
        yield tag("bytes_received", g=g), rep.bytes_received, rep.step
        yield tag("blocked_s", g=g), rep.blocked_s, rep.step
    if rep.rounds:
        yield from ((tag("fault", counter=k, g=g), v, rep.step) for k, v in rep.faults.items())
    if rep.losses and rep.seconds > 0:
        yield tag("tokens_per_s", g=g), rep.tokens / rep.seconds, rep.step
        if rep.mfu is not None:
            yield tag("mfu", g=g), rep.mfu, rep.step
    for ev in rep.evals:
        if len(ev.loss_by_lang) > 1:
            for lang, v in ev.loss_by_lang.items():
                yield tag("eval_loss_lang", lang=lang), v, ev.step
                yield tag("eval_ppl_lang", lang=lang), _perplexity(v), ev.step
        for lang, v in ev.bpb_by_lang.items():
            yield tag("eval_bpb_lang", lang=lang), v, ev.step
        yield tag("eval_loss"), ev.loss, ev.step
        yield tag("eval_ppl"), _perplexity(ev.loss), ev.step


# ---- records.jsonl: the same records, one JSON object a line, for people and scripts -----------


def json_lines(rep: ChunkReport) -> Iterator[dict]:
    """One line per step, round and evaluation of a group's chunk; each carries `record` (its
    kind), `group` and `step`, so a resumed run can cut the file at its checkpoint step."""
    g = rep.group
    for i, (loss, lr) in enumerate(zip(rep.losses, rep.lrs, strict=True)):
        yield {"record": "step", "group": g, "step": rep.first_step + i, "loss": loss, "lr": lr}
    for r in rep.rounds:
        yield {"record": "round", "group": g, **asdict(r)}
    for ev in rep.evals:
        yield {
            "record": "eval",
            "group": g,
            "step": ev.step,
            "loss": ev.loss,
            **asdict(ev),
            "bpb_by_lang": ev.bpb_by_lang,
        }
    if rep.rounds or rep.done:
        yield {
            "record": "totals",
            "group": g,
            "step": rep.step,
            "bytes_sent": rep.bytes_sent,
            "bytes_received": rep.bytes_received,
            "blocked_s": rep.blocked_s,
            "faults": rep.faults,
        }


class RecordLog:
    """Appends a run's records to `<run_dir>/records.jsonl`. A resumed run first drops what an
    earlier driver wrote after the checkpoint it resumes from (as TensorBoard's purge_step)."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        if resume_step is not None and self.path.is_file():
            kept = [ln for ln in read_records(self.path) if ln["step"] <= resume_step]
            atomic_write_bytes(self.path, _encode(kept))
        elif resume_step is None:
            self.path.unlink(missing_ok=True)  # a fresh run starts a fresh file
        self._file = self.path.open("ab")

    def write(self, rep: ChunkReport) -> None:
        self._file.write(_encode(json_lines(rep)))
        self._file.flush()

    def write_lines(self, lines: list[dict]) -> None:
        """Other records of the run (e.g. where each group runs); each needs `record`, `step`."""
        self._file.write(_encode(lines))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _encode(lines) -> bytes:
    return "".join(json.dumps(ln, allow_nan=True) + "\n" for ln in lines).encode()


def read_records(path: Path) -> list[dict]:
    """Every complete line of a records.jsonl (a torn last line from a crash is left out)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out

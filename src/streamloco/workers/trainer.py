"""One rank of one worker group: model, AdamW, data stream, the Streaming DiLoCo engine. No Ray.

The Ray actor (launcher/actors.py) owns one `Trainer` and forwards calls; `simulate` runs
Trainers in threads. A caller drives it in chunks: `train(until)` runs inner steps up to `until`
and returns a `ChunkReport` (records.py: losses, rounds, evaluations, byte counters as typed
records), which travels to whoever writes TensorBoard and results (the driver, which may sit on
another node than the workers).

Inside a group of K ranks the model is wrapped in DDP (its gradients are all-reduced over the
group's fast link) and every rank reads its own 1/K of the group's batch. All of a group's ranks
must make the same calls in the same order: `train`, `state_dict` and the chunk's summary are
collectives when K > 1.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
from torch import nn

from streamloco.config import Config
from streamloco.outer_optim.comm import GroupComm, SoloComm
from streamloco.outer_optim.engine import (
    NoOuterLoop,
    StreamingEngine,
    SyncEvent,
)
from streamloco.outer_optim.transport import DrillTransport, Transport
from streamloco.records import ChunkReport, EvalRecord, GroupTotals, RoundRecord, SendRecord
from streamloco.workers.data_source import DataSource, build_data_source
from streamloco.workers.frozen import FrozenRows
from streamloco.workers.inner import build_inner_optimizer
from streamloco.workers.model import (
    Transformer,
    lm_loss,
    mfu,
    model_args,
    peak_flops,
)


@dataclass(frozen=True)
class Placement:
    group: int
    rank: int = 0
    ranks: int = 1  # K: ranks in the group


def build_model(cfg: Config, device: torch.device | str = "cpu") -> Transformer:
    """Same seed -> same initialization on every group (DiLoCo starts all replicas equal)."""
    torch.manual_seed(cfg.train.seed)
    args = model_args(
        cfg.model.size, cfg.model.vocab_size, cfg.model.seq_len, cfg.model.tie_embeddings
    )
    return Transformer(args).to(device)


def load_global(model: Transformer, global_state: Mapping[str, torch.Tensor]) -> None:
    """Load the engine's global parameters (named as in named_parameters) into `model`."""
    missing, unexpected = model.load_state_dict(dict(global_state), strict=False)
    tied = {"head.weight"} if model.args.tie_embeddings else set()
    assert not unexpected and set(missing) <= tied, (missing, unexpected)


@torch.no_grad()
def evaluate(model: Transformer, batches: list[torch.Tensor], autocast) -> float:
    model.eval()
    device = next(model.parameters()).device
    losses = []
    for b in batches:
        b = b.to(device)
        with autocast():
            losses.append(float(model.loss(b[:, :-1], b[:, 1:])))
    model.train()
    return sum(losses) / len(losses)


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device: 'cuda' requested but this rank sees no GPU")
    return torch.device(requested)


_ROUND_SUMS = ("bytes_sent", "bytes_received", "bytes_before_zstd")  # group totals of a round


def _sum_over_ranks(rep: ChunkReport, k: int, device: torch.device) -> None:
    """The group's numbers from its K ranks' (one all-reduce): bytes are summed, losses and the
    blocked time averaged. Every rank holds the same records in the same order (they run the
    same schedule), so the fields line up; they are read back by name, in the order written."""
    from streamloco.workers.dist import all_reduce_sum

    values = [*rep.losses, *(getattr(r, f) for r in rep.rounds for f in _ROUND_SUMS)]
    values += [rep.bytes_sent, rep.bytes_received, rep.blocked_s]
    summed = iter(all_reduce_sum(values, device))
    rep.losses = [next(summed) / k for _ in rep.losses]
    rep.rounds = [replace(r, **{f: int(next(summed)) for f in _ROUND_SUMS}) for r in rep.rounds]
    rep.bytes_sent, rep.bytes_received = int(next(summed)), int(next(summed))
    rep.blocked_s = next(summed) / k


class Trainer:
    def __init__(
        self,
        cfg: Config,
        where: Placement,
        transport: Transport,
        comm: GroupComm | None = None,
        device: torch.device | None = None,
        data: DataSource | None = None,
    ) -> None:
        self.cfg, self.where = cfg, where
        self.device = device or resolve_device(cfg.train.device)
        self.comm = comm or SoloComm()
        self.model = build_model(cfg, self.device)
        self.forward: nn.Module = self.model
        if where.ranks > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward = DistributedDataParallel(self.model, device_ids=ids)
        if cfg.train.compile:
            self.forward = torch.compile(self.forward)  # type: ignore[assignment]
        bf16 = cfg.train.precision == "bf16" or (
            cfg.train.precision == "auto" and self.device.type == "cuda"
        )
        self.autocast = (
            (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16))
            if bf16
            else contextlib.nullcontext
        )
        self.opt, self.sched = build_inner_optimizer(self.model, cfg.inner, cfg.train.steps)
        rows = cfg.model.train_rows_from
        self.frozen = FrozenRows(self.model, rows) if rows else None
        self.transport = DrillTransport(transport)  # drills (`inject`) damage payloads here
        self.engine = self._new_engine()
        self.data = data or build_data_source(cfg)
        self.stream = self.data.stream(where.group, where.rank, where.ranks)
        self.step = 0
        self.finished = False  # the last step ran and every exchange has landed
        self.blocked_s = 0.0
        self.evaluator = where.group == 0 and where.rank == 0
        self.eval_model = build_model(cfg, self.device) if self.evaluator else None
        self.args = self.model.args
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else ""
        self.peak = peak_flops(name)
        self._sent_at: dict[int, int] = {}  # fragment -> own payload bytes of its open round
        # cumulative: payloads left out of rounds (any group's), rounds where this group's own
        # payload was not in the mean, whole-model resets after non-finite values
        self.faults = {"excluded": 0, "adopted": 0, "resets": 0, "abstained": 0, "late": 0}
        self.step_delay_s = 0.0  # fault injection: a slower island (see `inject`)

    # ---- training ------------------------------------------------------------------------------

    def train(self, until: int) -> ChunkReport:
        """Run inner steps up to `until` (capped at train.steps); finish the run at the end."""
        cfg = self.cfg
        until = min(until, cfg.train.steps)
        rep = ChunkReport(self.where.group, self.where.rank, self.step + 1, self.step)
        t0 = time.perf_counter()
        while self.step < until:
            rep.losses.append(self._inner_step())
            self.step += 1
            if self.step_delay_s:
                time.sleep(self.step_delay_s)
            rep.lrs.append(self.sched.get_last_lr()[0])
            events = self.engine.step()
            if self.frozen is not None and events:  # a merge may have moved frozen values
                self.frozen.restore()
            self._record(events, rep)
            every = cfg.train.eval_every
            if self.evaluator and every and self.step % every == 0:
                rep.evals.append(self.eval_record())
        if self.step == cfg.train.steps and not self.finished:
            events = self.engine.finish()
            if self.frozen is not None:
                self.frozen.restore()
            self._record(events, rep)
            if self.evaluator and not (rep.evals and rep.evals[-1].step == self.step):
                rep.evals.append(self.eval_record())
            self.finished = True
        rep.done = self.finished
        rep.seconds = time.perf_counter() - t0
        rep.step = self.step
        self._summarize(rep)
        return rep

    def _inner_step(self) -> float:
        batch = self.stream.next().to(self.device, non_blocking=True)  # (B/K, T+1)
        with self.autocast():
            logits = self.forward(batch[:, :-1])
        loss = lm_loss(logits, batch[:, 1:])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.frozen is not None:
            self.frozen.mask_grads()
        if self.cfg.inner.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.inner.grad_clip)
        self.opt.step()
        if self.frozen is not None:
            self.frozen.restore()
        self.sched.step()
        return loss.item()

    def _record(self, events: list[SyncEvent], rep: ChunkReport) -> None:
        g = self.where.group
        for ev in events:
            if ev.kind == "send":
                self._sent_at[ev.fragment] = ev.payload_bytes
                rep.sends.append(SendRecord(ev.fragment, ev.step, ev.delta_norm, ev.abstained))
                if ev.abstained:
                    self.faults["abstained"] += 1
                    rep.messages.append(
                        f"group {g}: fragment {ev.fragment}'s pseudo-gradient at step {ev.step} "
                        "is not finite: sending nothing this round"
                    )
                continue
            self.blocked_s += ev.blocked_s
            # two_phase: the send's shards plus the reduced shard published during the round
            sent = self._sent_at.pop(ev.fragment, 0) + ev.sent_bytes
            rep.rounds.append(
                RoundRecord(
                    fragment=ev.fragment,
                    step=ev.step,
                    sent_at=ev.sent_at,
                    bytes_sent=sent,
                    bytes_received=ev.received_bytes,
                    bytes_before_zstd=ev.raw_bytes,
                    quant_rel_error=ev.quant_rel_error,
                    mean_delta_norm=ev.mean_delta_norm,
                    groups=ev.groups,
                )
            )
            self._faults(ev, rep)

    def _faults(self, ev: SyncEvent, rep: ChunkReport) -> None:
        """Count what the engine left out; reset a group whose model went non-finite."""
        g = self.where.group
        self.faults["excluded"] += len(ev.excluded)
        if g == 0:  # every group sees the same exclusions: one group reports them
            for bad, why in ev.excluded:
                rep.messages.append(
                    f"round (fragment {ev.fragment}, sent at step {ev.sent_at}): "
                    f"left out group {bad}: {why}"
                )
        if not ev.adopted:
            return
        self.faults["adopted"] += 1
        if ev.own_missing:
            rep.messages.append(
                f"group {g}: its payload for fragment {ev.fragment} (sent at step {ev.sent_at}) "
                "missed the round (late for the round deadline, or lost): left out of the mean, "
                "this group takes the global fragment"
            )
        # A diverged local model (NaN/Inf) would keep poisoning its next sends: restart this
        # group from the global parameters with fresh AdamW moments. All ranks agree: DDP keeps
        # their local models equal.
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            load_global(self.model, self.engine.global_state())
            self.opt.state.clear()
            self.faults["resets"] += 1
            rep.messages.append(
                f"group {g}: local model not finite at step {ev.step}: reset to the global "
                "parameters, inner optimizer state cleared"
            )

    def _summarize(self, rep: ChunkReport) -> None:
        """Turn this rank's chunk into the group's numbers (one small all-reduce when K > 1)."""
        stats = self.transport.stats
        rep.bytes_sent, rep.bytes_received = stats.bytes_sent, stats.bytes_received
        rep.blocked_s = self.blocked_s
        if self.where.ranks > 1:
            _sum_over_ranks(rep, self.where.ranks, self.device)
        rep.tokens = len(rep.losses) * self.cfg.train.batch_size * self.cfg.model.seq_len
        self.faults["late"] = stats.late
        rep.faults = dict(self.faults)
        if rep.losses and rep.seconds > 0 and self.peak:
            rep.mfu = mfu(rep.tokens / rep.seconds, self.args, self.cfg.model.seq_len, self.peak)

    # ---- evaluation ----------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Eval loss of the global (outer) parameters on each language's held-out batches."""
        model = self.eval_model if self.eval_model is not None else build_model(self.cfg)
        load_global(model, self.engine.global_state())
        return {
            lang: evaluate(model, batches, self.autocast)
            for lang, batches in self.data.eval_sets.items()
        }

    def eval_record(self) -> EvalRecord:
        return EvalRecord(self.step, self.evaluate(), self.data.eval_bytes_per_token)

    def global_state(self) -> dict[str, torch.Tensor]:
        return self.engine.global_state()

    def next_sync(self) -> tuple[int, int]:
        """(step, fragment) of the next send, for progress displays."""
        return self.engine.schedule.next_event(self.step)

    # ---- fault injection (tests, benchmarks, drills) ---------------------------------------------

    def inject(self, kind: str, value: float = 0.0) -> None:
        """Make this rank misbehave: "delay" sleeps `value` s after every inner step (a slow
        island), "nan" fills a weight with NaN (a faulty device), "corrupt" flips a byte of the
        next payload this rank sends (a bad link or a buggy peer)."""
        if kind == "delay":
            self.step_delay_s = float(value)
        elif kind == "nan":
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        elif kind == "corrupt":
            self.transport.corrupt_next()
        else:
            raise ValueError(f"inject: unknown fault {kind!r} (delay, nan, corrupt)")

    # ---- live recovery of a replacement group ------------------------------------------------

    def recovery_state(self) -> dict:
        """What a replacement group needs from this healthy one: the engine state (global
        parameters, outer momentum, step). A collective when K > 1; take it when idle."""
        return self.engine.state_dict()

    def recover(self, state: Mapping, totals: GroupTotals | None = None) -> int:
        """Become a member at the peer's step: local = global, fresh AdamW moments, the lr
        schedule at that step, no error feedback (the engine state carries none: the dead
        group's residual belonged to a trajectory that is gone, and the peer's is the peer's
        own). `totals`: the dead group's counters at its last report, so its
        byte and blocked-time series go on from there (they belong to the group, not to this
        process); the driver gives the bytes to rank 0 only, so the group's sums stay right.
        Returns the bytes received (global + momentum), which are counted apart."""
        if totals is not None:
            stats = self.transport.stats
            stats.bytes_sent, stats.bytes_received = totals.bytes_sent, totals.bytes_received
            self.blocked_s = totals.blocked_s
        self.engine.load_state_dict(state)
        load_global(self.model, self.engine.global_state())
        self.opt.state.clear()
        self.step = self.engine.step_count
        self.sched.last_epoch = self.step - 1
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": on purpose
            warnings.simplefilter("ignore", UserWarning)
            self.sched.step()  # the lr of step `self.step`
        tensors = [*state["global"], *(m for m in state["momentum"] if m is not None)]
        return sum(t.numel() * t.element_size() for t in tensors)

    # ---- initial broadcast and checkpoints ---------------------------------------------------

    def model_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def load_initial(self, state: Mapping[str, torch.Tensor]) -> None:
        """Start from another rank's initialization (group 0's), before any step."""
        if self.step:
            raise RuntimeError("load_initial after training started")
        self.model.load_state_dict(dict(state))
        # the engine's global copy was taken from the old initialization: start it over
        self.engine = self._new_engine()

    def _new_engine(self) -> StreamingEngine | NoOuterLoop:
        """The outer loop, whose global copy starts from the model as it is now."""
        outer = self.cfg.outer
        if not outer.enabled:
            return NoOuterLoop(self.model, outer)
        timeout = self.cfg.transport.timeout_s
        return StreamingEngine(self.model, outer, self.transport, self.comm, timeout)

    def state_dict(self) -> dict:
        """This rank's part of a checkpoint (a collective when K > 1; take it when idle).

        Every rank returns its own part ("rank": data-stream position, byte counters); rank 0 of
        a group also returns the group's ("group": model and inner optimizer, which DDP keeps
        equal on all ranks, and the engine's per-group error feedback; "engine": global
        parameters and outer state, equal on all groups).
        """
        engine = self.engine.state_dict()  # collective for K > 1: every rank must call it
        own = self.engine.group_state_dict()  # this group's error feedback; collective too
        stats = self.transport.stats
        out: dict = {
            "step": self.step,
            "rank": {
                "data": self.stream.state_dict(),
                "bytes": [stats.bytes_sent, stats.bytes_received, stats.exchanges],
                "blocked_s": self.blocked_s,
            },
        }
        if self.where.rank == 0:
            out["group"] = {
                "model": self.model_state(),
                "inner": self.opt.state_dict(),
                "sched": self.sched.state_dict(),
                "outer": own,
            }
            out["engine"] = engine
        return out

    def load_state_dict(self, step: int, group: Mapping, engine: Mapping, rank: Mapping) -> None:
        """Continue from a checkpoint: the group's part, the run's engine state, this rank's."""
        self.model.load_state_dict(group["model"])
        self.opt.load_state_dict(group["inner"])
        self.sched.load_state_dict(group["sched"])
        self.engine.load_state_dict(engine)
        self.engine.load_group_state_dict(group.get("outer"))
        self.stream.load_state_dict(dict(rank["data"]))
        stats = self.transport.stats
        stats.bytes_sent, stats.bytes_received, stats.exchanges = (int(x) for x in rank["bytes"])
        self.blocked_s = float(rank["blocked_s"])
        self.step = int(step)
        if self.engine.step_count != self.step:
            raise ValueError(f"checkpoint: engine at step {self.engine.step_count}, run at {step}")

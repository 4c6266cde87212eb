"""The Streaming DiLoCo engine: call `step()` once after every inner optimizer step.

Per fragment p (see schedule.py for when):

- send:  delta = global_p - local_p in fp32; payload = codec.encode(delta); start the exchange.
- apply: wait for every group's payload; decode them in group-id order and sum in fp32 in that
  order; mean_delta = sum / groups; global_p <- OuterSGD(global_p, grad=mean_delta);
  local_p <- alpha * local_p + (1 - alpha) * global_p.

Every group decodes the same bytes, its own payload included (never its unquantized delta), and
reduces them in the same order on the same kind of device, so all groups end every round with
bit-identical global parameters and outer state.

Bad contributions never reach the global model: a group whose pseudo-gradient is not finite sends
an empty payload (it abstains), and every payload that is empty or fails validation (header,
checksum, size, finiteness) is left out of the mean. Every group sees the same bytes, so every
group leaves out the same ones and the globals stay identical. A group whose own payload is not in
the mean (it abstained, sent something invalid, or the transport closed the round without it)
adopts the global fragment (local = global, whatever alpha) instead of merging.

Error feedback (`error_feedback`, SparseLoCo/DeMo): per fragment, each group keeps what its
payloads have not carried yet. send: acc = error_decay * acc + delta; payload = codec(acc);
acc -= decode(payload). It is per-group state (`group_state_dict`), reset to zero when the group
abstains, adopts the global fragment, or is a replacement seeded by live recovery
(docs/engine.md has the rules). Stochastic rounding draws are seeded by (step, fragment, group,
rank), so resumed runs send the same bytes.

Two-phase reduce (`outer.reduce`, reduce.py): instead of the all-gather, each group owns 1/M of
the fragment (of its rank's shard of it), receives that shard from every group, means it in group
order, re-encodes it and publishes it; every group then decodes the same M reduced shards, so the
outer step and the globals stay bit-identical, for about 2 payloads per group and round whatever
M. The send encodes one payload per shard; the apply waits for both hops. A shard whose reduced
payload is missing or invalid is skipped by every group alike (its global slice and momentum
stay); a group whose own contribution is missing from any shard adopts the global fragment, as
with the all-gather. Error feedback keeps only the sender's own compression error.

Hierarchical sync (a group of K ranks, see comm.py): every rank holds the full global copy and
its group's full local parameters (DDP keeps them equal), but sends, reduces and outer-steps only
its own shard of each fragment (whole codec blocks, so results are bit-identical for any K); the
stepped shards are then all-gathered inside the group before the merge. The outer momentum is
sharded: each rank keeps only its slice. With K = 1 the shard is the whole fragment.

Where state lives: the fp32 global copy and the outer momentum buffers live on `state_device`
(CPU by default, so the accelerator holds only the model, its gradients and the inner optimizer);
pseudo-gradients are computed there too. In-flight deltas are kept until their apply for the
quantization-error metric (at most one fragment is in flight, since tau < H/F).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

from streamloco.outer_optim.codecs import Codec, make_codec
from streamloco.outer_optim.comm import GroupComm, SoloComm, shard_bounds, shard_size
from streamloco.outer_optim.fragments import FragmentPlan, partition
from streamloco.outer_optim.optimizer import OuterSGD, flatten, merge_
from streamloco.outer_optim.options import OuterOptions
from streamloco.outer_optim.reduce import (
    ReducedError,
    decode_contribution,
    encode_shards,
    envelope_size,
    reduce_shard,
    resolve_reduce,
    shard_slices,
    unpack_reduced,
)
from streamloco.outer_optim.schedule import Schedule
from streamloco.outer_optim.transport import CompletedHandle, Handle, Transport

STATE_VERSION = 1


@dataclass(frozen=True)
class SyncEvent:
    """What one send or apply did; the caller turns these into metrics."""

    kind: str  # "send" or "apply"
    fragment: int
    step: int
    payload_bytes: int = 0  # send: this rank's payload; apply: sum over all groups
    raw_bytes: int = 0  # apply: the same payloads without the zstd stage (exact; = payload_bytes
    # when zstd is off), so one run reports what the wire would carry with and without zstd
    delta_norm: float = 0.0  # send: ||global - local|| of this group (whole fragment)
    quant_rel_error: float = 0.0  # apply: ||decode(own) - delta|| / ||delta|| (own shard)
    mean_delta_norm: float = 0.0  # apply: ||mean decoded delta|| (own shard)
    blocked_s: float = 0.0  # apply: time spent waiting for the exchange
    groups: int = 0  # apply: payloads that took part
    excluded: tuple[tuple[int, str], ...] = ()  # apply: (group, why) left out of the mean
    adopted: bool = False  # apply: own payload not in the mean -> local fragment = global
    own_missing: bool = False  # apply: own payload not in the round at all (late or lost)
    received_bytes: int = 0  # apply: the other groups' payloads in the round
    abstained: bool = False  # send: own delta was not finite -> sent an empty payload
    sent_at: int = 0  # apply: the step the round's payloads were sent at
    sent_bytes: int = 0  # apply: what this group sent after the send step (two_phase: its
    # reduced shard); the round's bytes sent are the send event's payload_bytes plus this
    reduce_rel_error: float = 0.0  # apply, two_phase: the owner's re-encode error on its shard


ABSTAIN = b""  # the payload of a group that has nothing valid to contribute


@dataclass
class _TwoPhase:
    """What a two-phase round learned before its apply (plain numbers: saved in checkpoints)."""

    quant_rel_error: float = 0.0  # own shards' compression error, measured at the send
    reduce_rel_error: float = 0.0  # the owner's re-encode error (set by the reducer)
    raw_sent: int = 0  # phase-1 bytes sent without zstd (the shards sent to their owners)
    received: int = 0  # phase-1 bytes: the others' contributions to the owned shard
    raw_received: int = 0  # the same without zstd
    excluded: tuple[tuple[int, str], ...] = ()  # left out of the owned shard, and why


@dataclass
class _InFlight:
    send_step: int
    handle: Handle
    delta: torch.Tensor | None  # own unquantized delta (own shard), for the error metric
    two_phase: _TwoPhase | None = None  # None: an all-gather round


def _two_phase_info(saved: Mapping | None) -> _TwoPhase | None:
    if saved is None:
        return None
    excluded = tuple((int(g), str(why)) for g, why in saved["excluded"])
    return _TwoPhase(**{**saved, "excluded": excluded})


def _relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    denom = float(exact.norm())
    return float((approx - exact).norm()) / denom if denom > 0 else 0.0


class StreamingEngine:
    def __init__(
        self,
        model: nn.Module,
        options: OuterOptions,
        transport: Transport,
        comm: GroupComm | None = None,
        timeout_s: float = 600.0,
    ) -> None:
        """`timeout_s`: how long an apply waits for its round's payloads (transport.timeout_s)."""
        self.options, self.timeout_s = options, timeout_s
        self.transport = transport
        self.comm = comm or SoloComm()
        self.schedule = Schedule.of(options)
        self.codec: Codec = make_codec(
            options.codec, options.block_size, options.zstd_level, options.topk, options.rounding
        )
        self.outer = OuterSGD(options.lr, options.momentum, options.nesterov)
        named = dict(model.named_parameters())
        self.plan: FragmentPlan = partition(
            [(n, p.numel()) for n, p in named.items()],
            options.fragments,
            options.pattern,  # type: ignore[arg-type]
        )
        self.params = [[named[n] for n in names] for names in self.plan.names]
        model_device = next(model.parameters()).device
        self.state_device = torch.device("cpu" if options.state_device == "cpu" else model_device)
        # Every group starts from the same initialization, so local == global at step 0.
        self.global_params = [flatten(ps, self.state_device) for ps in self.params]
        k, block = self.comm.size, options.block_size
        self.shards = [shard_bounds(n, self.comm.rank, k, block) for n in self.plan.numels]
        self.shard_len = [shard_size(n, k, block) for n in self.plan.numels]
        self.momentum: list[torch.Tensor | None] = [None] * options.fragments  # own shard
        # error feedback (per group, own shard): what this group's payloads have not carried yet
        self.error: list[torch.Tensor | None] = [None] * options.fragments
        self.step_count = 0
        self.in_flight: dict[int, _InFlight] = {}
        self.reduce = resolve_reduce(options.reduce, transport.num_groups, options.codec)
        # two_phase: each owner's [lo, hi) within this rank's shard of each fragment
        m = transport.num_groups
        self.owned = [shard_slices(hi - lo, m, block) for lo, hi in self.shards]

    # ---- the per-step entry point -------------------------------------------------------------

    def step(self) -> list[SyncEvent]:
        """Advance one inner step; send and apply whatever the schedule says. Returns events."""
        self.step_count += 1
        events = [self._send(p) for p in self.schedule.sends(self.step_count)]
        # `in self.in_flight`: a run that ended early-applied its last exchange in finish();
        # continued with more steps, that fragment must not be applied a second time
        applies = [p for p in self.schedule.applies(self.step_count) if p in self.in_flight]
        events += [self._apply(p) for p in applies]
        return events

    def finish(self) -> list[SyncEvent]:
        """Apply every exchange still in flight (call once after the last inner step).

        With `final_sync`, every fragment not sent at this step is then sent and applied too.
        The schedule alone leaves each fragment's steps since its last send out of the global
        parameters (up to H - H/F steps: half the last 100 steps of one fragment at H=100, F=2),
        and the global parameters are the model a run delivers and is evaluated on.
        """
        events = [self._apply(p) for p in sorted(self.in_flight)]
        if self.options.final_sync:
            rest = [p for p in range(self.options.fragments) if p not in self._sent_now()]
            events += [self._send(p) for p in rest]
            events += [self._apply(p) for p in rest]
        return events

    def _sent_now(self) -> list[int]:
        return self.schedule.sends(self.step_count) if self.step_count else []

    @property
    def idle(self) -> bool:
        """True when no fragment is in flight (a round boundary: checkpoints are taken here)."""
        return not self.in_flight

    def _send(self, p: int) -> SyncEvent:
        assert p not in self.in_flight, f"fragment {p} sent again before its apply"
        local = flatten(self.params[p], self.state_device)
        delta = self.global_params[p] - local  # (n_p,) fp32
        lo, hi = self.shards[p]
        own = delta[lo:hi] if self.comm.size > 1 else delta
        norm = float(delta.norm())
        # A non-finite local model (diverged, or a faulty device) must not travel: abstain, so
        # the others need not wait, and adopt the global fragment at the apply.
        abstain = not math.isfinite(float(own.norm()))
        if self.reduce == "two_phase":
            return self._send_two_phase(p, own, norm, abstain)
        if abstain:
            payload, sent = ABSTAIN, own
            self.error[p] = None  # the group restarts from the global fragment: nothing owed
        elif self.options.error_feedback:
            payload, sent = self._send_with_error_feedback(p, own)
        else:
            payload, sent = self.codec.encode(own, seed=self._seed(p)), own
        handle = self.transport.exchange((p, self.step_count), payload)
        # keep the encoded values for the error metric; a view of delta would pin all of delta
        keep = sent.clone() if sent is own and own is not delta else sent
        self.in_flight[p] = _InFlight(self.step_count, handle, keep)
        return SyncEvent("send", p, self.step_count, len(payload), norm, abstained=abstain)

    def _send_two_phase(self, p: int, own: torch.Tensor, norm: float, abstain: bool) -> SyncEvent:
        """Encode one payload per owner's shard and start the two-phase round (reduce.py)."""
        me, m, slices = self.transport.group, self.transport.num_groups, self.owned[p]
        info = _TwoPhase()
        if abstain:
            shards = [ABSTAIN] * m
            self.error[p] = None  # the group restarts from the global fragment: nothing owed
        else:
            acc = own
            if self.options.error_feedback:
                acc = self.error[p]
                acc = own.clone() if acc is None else acc.mul_(self.options.error_decay).add_(own)
            shards = encode_shards(self.codec, acc, slices, self._seed(p))
            decoded = torch.cat(
                [
                    self.codec.decode(b, max_numel=hi - lo).to(self.state_device)
                    for b, (lo, hi) in zip(shards, slices, strict=True)
                ]
            )
            info.quant_rel_error = _relative_error(decoded, acc)
            if self.options.error_feedback:  # only the own compression error is carried
                self.error[p] = acc.sub_(decoded)
        n_own = slices[me][1] - slices[me][0]
        seed = self._seed(p)  # fixed now: the reducer runs later, in the transport's thread

        def reduce(contributions: dict[int, bytes]) -> bytes:
            r = reduce_shard(self.codec, contributions, n_own, m, seed, self.state_device)
            others = [b for g, b in contributions.items() if g != me]
            info.received = sum(len(b) for b in others)
            info.raw_received = sum(self._raw_len(len(b), n_own) for b in others if b)
            info.reduce_rel_error, info.excluded = r.reencode_rel_error, r.excluded
            return r.payload

        key = (p, self.step_count)
        handle = self.transport.two_phase(key, shards, reduce, self.timeout_s)
        self.in_flight[p] = _InFlight(self.step_count, handle, None, info)
        sent = sum(len(b) for j, b in enumerate(shards) if j != me)
        info.raw_sent = sum(
            self._raw_len(len(b), hi - lo)
            for j, (b, (lo, hi)) in enumerate(zip(shards, slices, strict=True))
            if j != me and b
        )
        return SyncEvent("send", p, self.step_count, sent, norm, abstained=abstain)

    def _raw_len(self, nbytes: int, n: int) -> int:
        """Bytes a non-empty codec payload of n elements (nbytes on the wire) would take without
        the zstd stage: the codec's exact size formula."""
        return nbytes if not self.options.zstd_level else self.codec.payload_size((n,))

    def _seed(self, p: int) -> int:
        """The stochastic-rounding seed of this send: a function of where it is in the run
        (step, fragment, group, rank), so a resumed run draws what the uninterrupted one did.
        Groups draw differently (their rounding errors average out); the globals stay
        bit-identical either way, since every group decodes the same bytes."""
        group, rank = self.transport.group, self.comm.rank
        return (((self.step_count * 4099 + p) * 65537 + group) * 257 + rank) % (1 << 63)

    def _send_with_error_feedback(self, p: int, own: torch.Tensor) -> tuple[bytes, torch.Tensor]:
        """acc = decay * error + delta; send codec(acc); error = acc - decode(payload).

        The residual is taken against the decoded payload, the very values every group adds
        into the mean, so what one round leaves out is exactly what the next one carries."""
        acc = self.error[p]
        if acc is None:
            acc = own.clone()
        else:
            acc.mul_(self.options.error_decay).add_(own)
        payload = self.codec.encode(acc, seed=self._seed(p))
        sent = acc.clone()  # for the quantization-error metric (what this payload encodes)
        acc.sub_(self.codec.decode(payload, max_numel=acc.numel()).to(self.state_device))
        self.error[p] = acc
        return payload, sent

    def _apply(self, p: int) -> SyncEvent:
        flight = self.in_flight.pop(p)
        t0 = time.perf_counter()
        payloads = flight.handle.wait(self.timeout_s)
        blocked = time.perf_counter() - t0
        if flight.two_phase is not None:
            return self._apply_two_phase(p, flight, payloads, blocked)
        lo, hi = self.shards[p]
        n = hi - lo
        total: torch.Tensor | None = None
        err, used = 0.0, 0
        excluded: list[tuple[int, str]] = []
        for group in sorted(payloads):  # fixed order -> identical sums on every group
            decoded, why = self._decode(payloads[group], n)
            if decoded is None:
                excluded.append((group, why))
                continue
            if group == self.transport.group and flight.delta is not None:
                err = _relative_error(decoded, flight.delta)
            # decode returns a fresh tensor: accumulate into the first one (no extra buffer)
            total = decoded if total is None else total.add_(decoded)
            used += 1
        own_used = self.transport.group in payloads and all(
            g != self.transport.group for g, _ in excluded
        )
        glob = self.global_params[p]
        mean_norm = 0.0
        if total is not None:  # no valid payload at all: the global fragment stays as it was
            mean_norm = float(total.div_(used).norm())  # total is now the mean delta
            self.momentum[p] = self.outer.step_(glob[lo:hi], total, self.momentum[p])
        own_used = self._merge(p, own_used)
        return SyncEvent(
            "apply",
            p,
            self.step_count,
            payload_bytes=sum(len(b) for b in payloads.values()),
            raw_bytes=self.codec.payload_size((n,)) * sum(1 for b in payloads.values() if b),
            quant_rel_error=err,
            mean_delta_norm=mean_norm,
            blocked_s=blocked,
            groups=used,
            excluded=tuple(excluded),
            adopted=not own_used,
            own_missing=self.transport.group not in payloads,
            received_bytes=sum(len(b) for g, b in payloads.items() if g != self.transport.group),
            sent_at=flight.send_step,
        )

    def _merge(self, p: int, own_used: bool) -> bool:
        """Assemble the stepped global fragment (K > 1) and merge it into the local one; returns
        whether every rank's own contribution was used (else the group adopted the global)."""
        glob = self.global_params[p]
        if self.comm.size > 1:  # assemble the stepped shards over the group's fast link
            lo, hi = self.shards[p]
            self.comm.all_gather(glob[lo:hi], glob, self.shard_len[p])
            own_used = self._all_ranks(own_used)
        merge_(self.params[p], glob, self.options.alpha if own_used else 0.0)
        if not own_used:  # local = global now: the residual belonged to a discarded trajectory
            self.error[p] = None
        return own_used

    def _apply_two_phase(
        self, p: int, flight: _InFlight, reduced: dict[int, bytes], blocked: float
    ) -> SyncEvent:
        """Decode the M reduced shards (the same bytes on every group), outer-step, merge."""
        info = flight.two_phase
        assert info is not None
        me, m = self.transport.group, self.transport.num_groups
        lo, hi = self.shards[p]
        mean = torch.zeros(hi - lo, device=self.state_device)  # (n,) the mean delta
        present: list[tuple[int, int]] = []
        left_out: dict[int, list[int]] = {}  # group -> shards it is missing from
        missing: list[tuple[int, str]] = []
        own_used = True
        counts: list[int] = []  # contributors of each shard that arrived
        for j, (a, b) in enumerate(self.owned[p]):
            used, why = self._reduced_shard(reduced.get(j, b""), mean[a:b])
            if used is None:
                missing.append((j, f"its reduced shard {j} {why}: shard {j} skipped this round"))
                own_used = False
                continue
            present.append((a, b))
            counts.append(len(used))
            own_used = own_used and me in used
            for g in range(m):
                if g not in used:
                    left_out.setdefault(g, []).append(j)
        mean_norm = float(mean.norm())  # before the step: it uses mean as scratch space
        glob = self.global_params[p][lo:hi]
        if len(present) == len(self.owned[p]):  # the common case: one step, as the all-gather
            self.momentum[p] = self.outer.step_(glob, mean, self.momentum[p])
        elif present:  # step only the shards that arrived; the others keep global and momentum
            if self.momentum[p] is None and self.options.momentum != 0:
                self.momentum[p] = torch.zeros_like(mean)  # 0*m + g == g: torch's first step
            buf = self.momentum[p]
            for a, b in present:
                self.outer.step_(glob[a:b], mean[a:b], None if buf is None else buf[a:b])
        own_used = self._merge(p, own_used)
        whys = dict(info.excluded)  # the owned shard's reasons are known here in full
        excluded = tuple(
            (g, whys.get(g, f"left out of shards {js} by their owners (abstained or invalid)"))
            for g, js in sorted(left_out.items())
        ) + tuple(missing)
        others = [b for j, b in reduced.items() if j != me]
        mine = reduced.get(me, b"")
        return SyncEvent(
            "apply",
            p,
            self.step_count,
            payload_bytes=sum(len(b) for b in reduced.values()),
            raw_bytes=info.raw_sent
            + info.raw_received
            + sum(self._raw_reduced(len(b), self._owned_len(p, j)) for j, b in reduced.items()),
            quant_rel_error=info.quant_rel_error,
            mean_delta_norm=mean_norm,
            blocked_s=blocked,
            groups=min(counts, default=0),  # the fewest contributions in any shard
            excluded=excluded,
            adopted=not own_used,
            own_missing=me not in reduced,
            received_bytes=info.received + sum(len(b) for b in others),
            sent_at=flight.send_step,
            sent_bytes=len(mine),
            reduce_rel_error=info.reduce_rel_error,
        )

    def _reduced_shard(self, payload: bytes, out: torch.Tensor) -> tuple[list[int] | None, str]:
        """Decode one reduced shard into `out`; (contributors, "") or (None, why not)."""
        if not payload:
            return None, "never arrived (its owner left, or missed the round)"
        try:
            used, body = unpack_reduced(payload, self.transport.num_groups)
        except ReducedError as e:
            return None, f"is invalid: {e}"
        if not used:
            return None, "holds no contribution (none was valid)"
        decoded, why = decode_contribution(self.codec, body, out.numel(), self.state_device)
        if decoded is None:
            return None, f"is invalid: {why}"
        out.copy_(decoded)
        return used, ""

    def _owned_len(self, p: int, j: int) -> int:
        a, b = self.owned[p][j]
        return b - a

    def _raw_reduced(self, nbytes: int, n: int) -> int:
        """A reduced shard's bytes without zstd: its envelope plus the bare codec payload."""
        envelope = envelope_size(self.transport.num_groups)
        if nbytes <= envelope:  # no body: nobody's contribution was valid
            return nbytes
        return envelope + self._raw_len(nbytes - envelope, n)

    def _decode(self, payload: bytes, n: int) -> tuple[torch.Tensor | None, str]:
        """The payload as an (n,) fp32 tensor, or None and why it cannot take part."""
        return decode_contribution(self.codec, payload, n, self.state_device)

    def _all_ranks(self, flag: bool) -> bool:
        """True only if every rank of the group says so (they must merge alike)."""
        flags = torch.empty(self.comm.size)
        self.comm.all_gather(torch.tensor([float(flag)]), flags, 1)
        return bool(flags.all())

    # ---- evaluation and checkpoints -----------------------------------------------------------

    def global_state(self) -> dict[str, torch.Tensor]:
        """The global (outer) parameters by name, fp32 on the state device: evaluate these."""
        out: dict[str, torch.Tensor] = {}
        for names, params, flat in zip(
            self.plan.names, self.params, self.global_params, strict=True
        ):
            offset = 0
            for name, t in zip(names, params, strict=True):
                out[name] = flat[offset : offset + t.numel()].view(t.shape).clone()
                offset += t.numel()
        return out

    def state_dict(self) -> dict:
        """Everything needed to continue bit-exactly; plain tensors and builtins only.

        In-flight exchanges are waited for here, so the checkpoint holds their received payloads
        and the restored engine applies them at the same step as an uninterrupted run would.
        With K > 1 ranks this is a collective (the momentum shards are gathered, so the state
        is the same whatever K) and must be taken when `idle` (no per-rank payloads to save).
        """
        if self.comm.size > 1 and self.in_flight:
            raise RuntimeError(
                f"engine state of a {self.comm.size}-rank group taken with fragments "
                f"{sorted(self.in_flight)} in flight: take it when `idle`"
            )
        in_flight = {}
        for p, flight in self.in_flight.items():
            payloads = flight.handle.wait(self.timeout_s)
            flight.handle = CompletedHandle(payloads)
            in_flight[p] = {
                "send_step": flight.send_step,
                "delta": flight.delta,
                # a two-phase round: its payloads are the reduced shards, by owner
                "two_phase": None if flight.two_phase is None else asdict(flight.two_phase),
                "payloads": {
                    g: torch.frombuffer(bytearray(b), dtype=torch.uint8)
                    for g, b in payloads.items()
                },
            }
        return {
            "version": STATE_VERSION,
            "plan": self.plan.fingerprint,
            "step": self.step_count,
            "global": [g.clone() for g in self.global_params],
            "momentum": [self._gather(self.momentum[p], p) for p in range(len(self.momentum))],
            "in_flight": in_flight,
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore the state every group shares (`state_dict`). Per-group state (error feedback)
        starts from zero: a checkpoint restores it with `load_group_state_dict` afterwards, a
        replacement group seeded from a healthy peer (live recovery) must not take the peer's."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"engine state: version {state.get('version')} != {STATE_VERSION}")
        if state.get("plan") != self.plan.fingerprint:
            raise ValueError(
                "engine state: fragment plan differs from this model's "
                f"({state.get('plan')} != {self.plan.fingerprint})"
            )
        glob = state["global"]
        for p, (have, new) in enumerate(zip(self.global_params, glob, strict=True)):
            if have.shape != new.shape:
                raise ValueError(
                    f"engine state: fragment {p} has {new.numel()} elements, "
                    f"expected {have.numel()}"
                )
        self.global_params = [g.to(self.state_device, torch.float32).clone() for g in glob]
        self.momentum = [
            None if m is None else m[lo:hi].to(self.state_device).clone()
            for m, (lo, hi) in zip(state["momentum"], self.shards, strict=True)
        ]
        self.step_count = int(state["step"])
        self.error = [None] * len(self.error)
        self.in_flight = {
            int(p): _InFlight(
                int(f["send_step"]),
                CompletedHandle(
                    {int(g): bytes(t.numpy().tobytes()) for g, t in f["payloads"].items()}
                ),
                f["delta"],
                _two_phase_info(f.get("two_phase")),
            )
            for p, f in state["in_flight"].items()
        }
        if self.comm.size > 1 and self.in_flight:
            raise ValueError("engine state: fragments in flight cannot be split over ranks")

    def group_state_dict(self) -> dict:
        """This group's own outer state (error feedback), for its part of a checkpoint.

        Unlike `state_dict` it differs between groups. A collective when K > 1 (the shards are
        gathered, so the state is the same whatever K)."""
        return {
            "version": STATE_VERSION,
            "error": [self._gather(self.error[p], p) for p in range(len(self.error))],
        }

    def load_group_state_dict(self, state: Mapping | None) -> None:
        """Restore `group_state_dict` (call after `load_state_dict`). None: a checkpoint from
        before error feedback existed, accepted only when it is off."""
        if state is None:
            if self.options.error_feedback:
                raise ValueError(
                    "engine group state: the checkpoint holds no error-feedback state but "
                    "outer.error_feedback is on"
                )
            return
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"engine group state: version {state.get('version')}")
        error = state["error"]
        if len(error) != len(self.error):
            raise ValueError(
                f"engine group state: {len(error)} fragments, expected {len(self.error)}"
            )
        for p, e in enumerate(error):
            if e is not None and e.shape != self.global_params[p].shape:
                raise ValueError(f"engine group state: fragment {p} error has shape {e.shape}")
        self.error = [
            None if e is None else e[lo:hi].to(self.state_device, torch.float32).clone()
            for e, (lo, hi) in zip(error, self.shards, strict=True)
        ]

    def _gather(self, buf: torch.Tensor | None, p: int) -> torch.Tensor | None:
        """The whole fragment's copy of a per-shard buffer (a collective when K > 1)."""
        if buf is None or self.comm.size == 1:
            return None if buf is None else buf.clone()
        full = torch.empty_like(self.global_params[p])
        self.comm.all_gather(buf, full, self.shard_len[p])
        return full


class NoOuterLoop:
    """`outer.enabled = false`: no outer loop at all, for plain data-parallel training of one
    group (DDP across its ranks), the baseline every DiLoCo result is measured against.

    It stands in for `StreamingEngine` with the same surface, so evaluation, checkpoints and
    the driver need no special case: the "global" parameters are the local model's own.
    """

    def __init__(self, model: nn.Module, options: OuterOptions) -> None:
        self.model, self.options = model, options
        # the driver still reads the schedule (chunk ends, progress); nothing is ever in flight
        self.schedule = Schedule.of(options)
        self.step_count = 0

    def step(self) -> list[SyncEvent]:
        self.step_count += 1
        return []

    def finish(self) -> list[SyncEvent]:
        return []

    @property
    def idle(self) -> bool:
        return True

    def global_state(self) -> dict[str, torch.Tensor]:
        return {
            n: p.detach().to("cpu", torch.float32).clone() for n, p in self.model.named_parameters()
        }

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "outer": False, "step": self.step_count}

    def group_state_dict(self) -> dict:
        return {"version": STATE_VERSION, "error": []}

    def load_group_state_dict(self, state: Mapping | None) -> None:
        pass

    def load_state_dict(self, state: Mapping) -> None:
        if state.get("version") != STATE_VERSION or state.get("outer", True):
            raise ValueError("engine state: not from a run without an outer loop")
        self.step_count = int(state["step"])

"""The engine's all-gather between worker groups, through Ray's object store.

Design. One small named coordinator actor (async, no CPU) runs the rounds; payload bytes never
pass through it. A group's `exchange` puts its payload into the object store (owned by the
sending worker), hands the coordinator the
*reference* wrapped in a list (Ray resolves ObjectRefs passed as top-level arguments, not nested
ones, so the coordinator never pulls the bytes), and asks to `collect` the round: a call that
returns once every group has submitted, with every group's reference. Neither call is waited for
in `exchange`, so it never blocks on the other groups; the handle holds the collect future.
`wait` gets it, then pulls the other groups' payloads straight from the senders' nodes with
`ray.get`.

A round is keyed by (rank, fragment, send step): with hierarchical sync, rank r of every group
exchanges its own 1/K shard of each fragment with rank r of the other groups, so the K ranks of a
group run K independent all-gathers. The coordinator forgets a round once all its groups have
collected it; `abort` fails every pending and future round with a reason (a group died: nobody
else should hang). The coordinator is owned by the process that creates it and dies with it.

Byte accounting is InProcessHub's, counted where the bytes move: `bytes_sent` is the own payload
once per exchange (one put, however many groups read it), `bytes_received` the M-1 other payloads
fetched in `wait`. References and round metadata sent to the coordinator are not counted (tens of
bytes per group and round).

Two-phase reduce (`outer.reduce = "two_phase"`, outer_optim/reduce.py): the same rounds in two
more *lanes* of the coordinator, keyed (rank, lane) instead of rank. Phase 1 (`scatter`): a group
puts each shard it addresses to another group as an object of its own (its own shard stays home)
and submits the list of references; owner j fetches only shard j of every participant. Nobody
else reduces shard j, so phase 1 needs no agreement on lost payloads (the owner's fetch decides);
it still confirms, which is how the coordinator forgets a round. Phase 2 (`exchange_reduced`) is
the all-gather above, of the owners' reduced shards: a reduced shard whose owner died before
everyone fetched it is left out by all (agreement), and every group then skips that shard alike.
Bytes: phase 1 counts the shards put for others (sent) and the shards fetched (received).

Simulated link: the same `LinkClock` as InProcessHub, one per transport, on wall time
(`time.time()`) because upload times stamped by different processes are compared (across hosts
this assumes synchronized clocks, which only matters when simulating).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayError

from streamloco.outer_optim.transport import (
    REDUCED,
    SCATTER,
    Handle,
    Key,
    LinkClock,
    LinkModel,
    ThreadedHandle,
    Transport,
    TransportError,
    sleep_until,
)

# Every rank of every group keeps one collect pending per fragment in flight; a coroutine waiting
# on an event costs next to nothing, so leave generous room.
MAX_CONCURRENCY = 4096

# lane: the rank for the all-gather; (rank, SCATTER | REDUCED) for the two phases of the reduce
Lane = int | tuple[int, int]
RoundKey = tuple[Lane, int, int]  # (lane, fragment, send step)
# ([payload ObjectRef], nbytes, upload done wall time); a scatter lists one ref per owner (None
# for the sender's own shard)
Entry = tuple[list[Any], int, float]


@dataclass
class _Round:
    entries: dict[int, Entry] = field(default_factory=dict)
    complete: asyncio.Event = field(default_factory=asyncio.Event)
    collected: set[int] = field(default_factory=set)
    closed: bool = False
    deadline_passed: bool = False
    must_collect: set[int] = field(default_factory=set)  # set when the round closes
    confirmed: dict[int, set[int]] = field(default_factory=dict)  # group -> payloads it lacks
    agreed: asyncio.Event = field(default_factory=asyncio.Event)
    left_out: list[int] = field(default_factory=list)  # set when agreed


class Coordinator:
    """The rounds of one run. Plain asyncio code; `create_coordinator` runs it as a Ray actor.

    `rank` is the round's lane: a rank, or (rank, phase) for the two-phase reduce.

    Membership: a round (rank, fragment, send step) waits for every *member* group, a group being
    a member of the rounds sent after the step it joined at. `leave(g)` (the driver saw group g
    die) stops rounds from waiting for it; `join(g, step)` (its replacement) makes rounds after
    `step` wait for it again. With a deadline, a round also closes `deadline_s` after its first
    payload if at least `min_groups` have handed theirs in: a straggler does not hold the others.

    A round's result (its participants' payloads) stays available until every member, late ones
    included, has collected it: a late group gets the same payloads, without its own, applies the
    same outer step and so keeps bit-identical global parameters (its engine adopts the global
    fragment since its own contribution is missing).

    Methods return statuses instead of raising, so the caller turns them into `TransportError`s
    with its own context.
    """

    def __init__(
        self, num_groups: int, deadline_s: float | None = None, min_groups: int = 1
    ) -> None:
        self.num_groups = num_groups
        self.deadline_s = deadline_s or None
        self.min_groups = max(1, min_groups)
        self.members: dict[int, int] = dict.fromkeys(range(num_groups), 0)  # group -> since
        self.late: dict[int, int] = {}  # group -> payloads that arrived after their round closed
        self._rounds: dict[RoundKey, _Round] = {}
        self._aborted: str | None = None

    def _round(self, rank: Lane, key: Key) -> _Round:
        # A collect may run before its own submit (an async actor does not order calls), so
        # whichever comes first opens the round.
        return self._rounds.setdefault((rank, *key), _Round())

    def _expected(self, key: Key) -> set[int]:
        return {g for g, since in self.members.items() if key[1] > since}

    def _maybe_close(self, rk: RoundKey, rnd: _Round) -> None:
        if rnd.closed or not rnd.entries:
            return
        expected = self._expected(rk[1:])
        everyone = expected <= set(rnd.entries)
        enough = rnd.deadline_passed and len(rnd.entries) >= self.min_groups
        if everyone or enough:
            rnd.closed = True
            rnd.must_collect = expected | set(rnd.entries)
            rnd.complete.set()

    async def _deadline(self, rk: RoundKey, rnd: _Round) -> None:
        await asyncio.sleep(self.deadline_s)
        rnd.deadline_passed = True
        self._maybe_close(rk, rnd)

    async def submit(
        self,
        group: int,
        rank: Lane,
        key: Key,
        payload_ref: list[Any],
        nbytes: int,
        upload_done: float,
    ) -> str | None:
        """Hand in `group`'s payload reference (inside a one-element list).

        None when accepted, "late" when the round had already closed (the payload is dropped;
        the group still collects the round's result), otherwise an error.
        """
        if self._aborted is not None:
            return f"coordinator aborted: {self._aborted}"
        rk = (rank, *key)
        rnd = self._round(rank, key)
        if group in rnd.entries:
            return f"group {group} sent twice for round {key} (rank {rank})"
        if rnd.closed:
            self.late[group] = self.late.get(group, 0) + 1
            rnd.must_collect.add(group)
            return "late"
        first = not rnd.entries
        rnd.entries[group] = (payload_ref, nbytes, upload_done)
        if first and self.deadline_s is not None:
            asyncio.get_running_loop().create_task(self._deadline(rk, rnd))
        self._maybe_close(rk, rnd)
        return None

    async def collect(
        self, group: int, rank: Lane, key: Key, timeout_s: float | None
    ) -> tuple[str, Any]:
        """Wait until the round closes: ("ok", {group: entry} of its participants, sorted),
        ("missing", [groups]) after `timeout_s`, or ("aborted", reason)."""
        if self._aborted is not None:
            return "aborted", self._aborted
        rk = (rank, *key)
        rnd = self._round(rank, key)
        try:
            await asyncio.wait_for(rnd.complete.wait(), timeout_s)
        except TimeoutError:
            return "missing", self._missing(rk, rnd)
        if self._aborted is not None:
            return "aborted", self._aborted
        return "ok", dict(sorted(rnd.entries.items()))

    async def confirm(
        self, group: int, rank: Lane, key: Key, lacking: list[int], timeout_s: float | None
    ) -> tuple[str, Any]:
        """After fetching: `group` reports the payloads it could not fetch (their sender died
        first). Returns ("ok", groups to leave out) once every participant still alive has
        reported, the union of what anyone lacks, so every group reduces the same payloads."""
        rk = (rank, *key)
        rnd = self._rounds.get(rk)
        if rnd is None:
            return "ok", sorted(lacking)  # already agreed and forgotten: only we lack these
        if not rnd.agreed.is_set():
            rnd.confirmed[group] = set(lacking)
            self._maybe_agree(rnd)
        try:
            await asyncio.wait_for(rnd.agreed.wait(), timeout_s)
        except TimeoutError:
            return "missing", sorted(self._unconfirmed(rnd))
        if self._aborted is not None:
            return "aborted", self._aborted
        rnd.collected.add(group)
        self._forget_if_done(rk, rnd)
        return "ok", rnd.left_out

    def _unconfirmed(self, rnd: _Round) -> set[int]:
        # participants that are still members and have not reported what they fetched
        return {g for g in rnd.entries if g in self.members} - set(rnd.confirmed)

    def _maybe_agree(self, rnd: _Round) -> None:
        if rnd.closed and not rnd.agreed.is_set() and not self._unconfirmed(rnd):
            rnd.left_out = sorted(set().union(*rnd.confirmed.values()))
            rnd.agreed.set()

    def _forget_if_done(self, rk: RoundKey, rnd: _Round) -> None:
        done = rnd.agreed.is_set() and rnd.must_collect <= rnd.collected
        if rnd.closed and done and self._rounds.get(rk) is rnd:
            del self._rounds[rk]

    async def leave(self, group: int) -> None:
        """Group `group` is gone: no round waits for it or for its collect any more."""
        self.members.pop(group, None)
        for rk, rnd in list(self._rounds.items()):
            rnd.must_collect.discard(group)
            self._maybe_close(rk, rnd)
            self._maybe_agree(rnd)
            self._forget_if_done(rk, rnd)

    async def join(self, group: int, since_step: int) -> None:
        """Group `group` takes part in every round sent after `since_step`."""
        self.members[group] = since_step

    async def missing(self, rank: Lane, key: Key) -> list[int] | None:
        """Member groups that have not submitted for the round; None if it is not open."""
        rk = (rank, *key)
        rnd = self._rounds.get(rk)
        return None if rnd is None else self._missing(rk, rnd)

    async def abort(self, reason: str) -> None:
        """Fail every pending and future collect with `reason`."""
        self._aborted = reason
        for rnd in self._rounds.values():
            rnd.complete.set()
            rnd.agreed.set()
        self._rounds.clear()  # drop the payload references with the rounds

    async def rounds_open(self) -> int:
        return len(self._rounds)

    async def status(self) -> dict[str, Any]:
        return {"members": dict(self.members), "late": dict(self.late), "rounds": len(self._rounds)}

    def _missing(self, rk: RoundKey, rnd: _Round) -> list[int]:
        return sorted(self._expected(rk[1:]) - set(rnd.entries))


_CoordinatorActor = ray.remote(num_cpus=0)(Coordinator)


def create_coordinator(
    name: str,
    num_groups: int,
    namespace: str | None = None,
    deadline_s: float | None = None,
    min_groups: int = 1,
    node_id: str | None = None,
):
    """Start the named coordinator actor for `num_groups` groups; returns its handle once it
    answers, so that the first round's timeouts do not include the actor's start.

    `node_id`: the node it must run on (the driver's). Left to itself, Ray may put this 0-CPU
    actor on any node, e.g. a remote island's: when that island's link fails, the whole run
    loses its coordinator (seen in the partition drill, docs/islands.md)."""
    if num_groups < 1:
        raise ValueError(f"coordinator: num_groups must be >= 1, got {num_groups}")
    opts: dict = {}
    if node_id is not None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=False)
    handle = _CoordinatorActor.options(
        name=name, namespace=namespace, max_concurrency=MAX_CONCURRENCY, **opts
    ).remote(num_groups, deadline_s, min_groups)
    ray.get(handle.rounds_open.remote())
    return handle


def get_coordinator(name: str, namespace: str | None = None):
    """The handle of a running coordinator (from a worker of any group)."""
    return ray.get_actor(name, namespace=namespace)


class RayHandle(ThreadedHandle):
    def __init__(
        self,
        transport: RayTransport,
        key: Key,
        payload: Any,
        submitted,
        collected,
        lane: Lane | None = None,
    ) -> None:
        self._transport, self._key, self._payload = transport, key, payload
        self._lane = transport.rank if lane is None else lane
        self._submitted, self._collected = submitted, collected
        self.ready_at: float | None = None  # wall time the simulated transfer completed
        # The round is received in the background as soon as it closes (collect, fetch the
        # others' payloads, agree on them with the coordinator) while training goes on; `wait`
        # only joins. Agreement then never waits for a peer's own apply step.
        self._start(f"round-{key}")

    def _produce(self) -> dict[int, bytes]:
        # unbounded here: the coordinator bounds the collect (collect_timeout_s), an abort
        # ends it, and the caller's wait(timeout) bounds how long training waits
        return self._complete(None)

    def _timeout_message(self, timeout: float | None) -> str:
        t = self._transport  # still receiving: a later wait can still succeed
        return (
            f"round {self._key} (rank {t.rank}, group {t.group}): timed out after "
            f"{timeout}s waiting for groups {self._missing(5.0)}"
        )

    def _missing(self, timeout: float) -> list[int] | str:
        t = self._transport
        try:
            missing = ray.get(t.coordinator.missing.remote(self._lane, self._key), timeout=timeout)
        except RayError as e:
            return f"(unknown: the coordinator did not answer: {type(e).__name__})"
        return "(unknown: the round is not open at the coordinator)" if missing is None else missing

    def _where(self) -> str:
        t = self._transport
        lane = "" if isinstance(self._lane, int) else f", lane {self._lane[1]}"
        return f"round {self._key} (rank {t.rank}, group {t.group}{lane})"

    def _closed_round(self, timeout: float | None) -> dict[int, Entry]:
        """Wait for our submit and for the round to close; its participants' entries."""
        t, where = self._transport, self._where()
        try:
            error = ray.get(self._submitted, timeout=timeout)
            if error == "late":  # the round closed without us: we still apply its result
                t.stats.late += 1
            elif error is not None:
                raise TransportError(f"{where}: {error}")
            status, value = ray.get(self._collected, timeout=timeout)
        except GetTimeoutError:
            # The collect stays pending at the coordinator: a later wait can still succeed.
            raise TransportError(
                f"{where}: timed out after {timeout}s waiting for groups {self._missing(timeout)}"
            ) from None
        except RayError as e:
            raise TransportError(f"{where}: coordinator failed: {e}") from e
        if status == "aborted":
            raise TransportError(f"{where}: coordinator aborted: {value}")
        if status == "missing":
            raise TransportError(
                f"{where}: the coordinator timed out after {t.collect_timeout_s}s "
                f"waiting for groups {value}"
            )
        return value

    def _confirm(self, lacking: list[int], timeout: float | None) -> list[int]:
        """Tell the coordinator what we could not fetch; the union of what anyone lacks."""
        t, where = self._transport, self._where()
        try:
            status, left_out = ray.get(
                t.coordinator.confirm.remote(t.group, self._lane, self._key, lacking, timeout),
                timeout=None if timeout is None else timeout + 5,
            )
        except RayError as e:
            raise TransportError(f"{where}: coordinator failed: {e}") from e
        if status != "ok":
            raise TransportError(f"{where}: no agreement on the round's payloads: {left_out}")
        return left_out

    def _landed(self, value: dict[int, Entry], received: int) -> None:
        """Wait out the simulated download and count it."""
        t = self._transport
        landed = max(upload_done for _, _, upload_done in value.values())
        self.ready_at = t.clock.download(landed, received)
        sleep_until(self.ready_at, time.time)
        t.stats.bytes_received += received
        t.pending.discard((self._lane, self._key))

    def _complete(self, timeout: float | None) -> dict[int, bytes]:
        t, where = self._transport, self._where()
        value = self._closed_round(timeout)
        others = [g for g in value if g != t.group]
        fetched = [self._fetch(value[g][0][0], g, timeout, where) for g in others]
        lacking = [g for g, b in zip(others, fetched, strict=True) if b is None]
        # Agree with the other participants on what goes into the mean: a payload whose sender
        # died before everyone fetched it is left out by all, not used by some.
        left_out = self._confirm(lacking, timeout)
        lost = [g for g in lacking if g not in left_out]
        if lost:  # only a late group can get here: the others used what it cannot fetch
            raise TransportError(
                f"{where}: the payloads of groups {lost} were used by the round but are gone; "
                "this group cannot follow it and must recover from a peer"
            )
        fetched = [b"" if g in left_out else b for g, b in zip(others, fetched, strict=True)]
        self._landed(value, sum(len(b) for b in fetched))
        result = dict(zip(others, fetched, strict=True))
        if t.group in value:  # not when the round closed before our payload arrived
            result[t.group] = self._payload
        return dict(sorted(result.items()))

    @staticmethod
    def _fetch(ref, group: int, timeout: float | None, where: str) -> bytes | None:
        """The payload, or None when its owner (that group's worker) died after handing it in:
        then it is gone for everyone who had not fetched it yet."""
        try:
            return bytes(ray.get(ref, timeout=timeout))
        except GetTimeoutError as e:
            raise TransportError(f"{where}: timed out fetching group {group}'s payload") from e
        except RayError:
            return None


class ScatterHandle(RayHandle):
    """Phase 1 of the two-phase reduce: fetch only the shards addressed to this group."""

    def _complete(self, timeout: float | None) -> dict[int, bytes]:
        t, where = self._transport, self._where()
        value = self._closed_round(timeout)
        others = [g for g in value if g != t.group]
        fetched = [self._fetch(value[g][0][t.group], g, timeout, where) for g in others]
        # The owner alone reduces its shard: what it could not fetch (the sender died first) is
        # left out by its own decision. Confirming only lets the coordinator forget the round.
        self._confirm([g for g, b in zip(others, fetched, strict=True) if b is None], timeout)
        fetched = [b or b"" for b in fetched]
        self._landed(value, sum(len(b) for b in fetched))
        result = dict(zip(others, fetched, strict=True))
        if t.group in value:  # not when the round closed before our shards arrived
            result[t.group] = self._payload[t.group]
        return dict(sorted(result.items()))


class RayTransport(Transport):
    """One rank of one group; `coordinator` is a handle from create/get_coordinator.

    `collect_timeout_s` bounds how long the coordinator keeps a collect pending (None: until the
    round completes or is aborted); `wait(timeout)` bounds the caller's wait independently.
    """

    def __init__(
        self,
        coordinator,
        group: int,
        num_groups: int,
        rank: int = 0,
        link: LinkModel | None = None,
        collect_timeout_s: float | None = None,
    ) -> None:
        if not 0 <= group < num_groups:
            raise ValueError(f"group {group} outside [0, {num_groups})")
        super().__init__(group, num_groups)
        self.coordinator = coordinator
        self.rank = rank
        self.link = link or LinkModel()
        self.clock = LinkClock(self.link)
        self.collect_timeout_s = collect_timeout_s
        # (lane, key) sent, not yet received: a second send is a bug
        self.pending: set[tuple[Lane, Key]] = set()

    def _submit(self, key: Key, lane: Lane, refs: list[Any], nbytes: int) -> tuple[Key, Any, Any]:
        key = (int(key[0]), int(key[1]))
        if (lane, key) in self.pending:
            raise TransportError(
                f"group {self.group} sent twice for round {key} (rank {self.rank}, lane {lane})"
            )
        upload_done = self.clock.upload(time.time(), nbytes)
        submitted = self.coordinator.submit.remote(self.group, lane, key, refs, nbytes, upload_done)
        collected = self.coordinator.collect.remote(self.group, lane, key, self.collect_timeout_s)
        self.pending.add((lane, key))
        self.stats.bytes_sent += nbytes
        return key, submitted, collected

    def exchange(self, key: Key, payload: bytes) -> Handle:
        key, submitted, collected = self._submit(key, self.rank, [ray.put(payload)], len(payload))
        self.stats.exchanges += 1
        return RayHandle(self, key, payload, submitted, collected)

    def scatter(self, key: Key, shards: Sequence[bytes]) -> Handle:
        if len(shards) != self.num_groups:
            raise TransportError(f"scatter: {len(shards)} shards for {self.num_groups} groups")
        shards = tuple(bytes(b) for b in shards)
        # one object per shard, so owner j pulls only its own; the own shard never leaves
        refs = [None if j == self.group else ray.put(b) for j, b in enumerate(shards)]
        nbytes = sum(len(b) for j, b in enumerate(shards) if j != self.group)
        lane = (self.rank, SCATTER)
        key, submitted, collected = self._submit(key, lane, refs, nbytes)
        self.stats.exchanges += 1  # one round, counted once (here, not in phase 2)
        return ScatterHandle(self, key, shards, submitted, collected, lane)

    def exchange_reduced(self, key: Key, payload: bytes) -> Handle:
        lane = (self.rank, REDUCED)
        key, submitted, collected = self._submit(key, lane, [ray.put(payload)], len(payload))
        return RayHandle(self, key, payload, submitted, collected, lane)

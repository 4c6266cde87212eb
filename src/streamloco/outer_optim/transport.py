"""The one narrow interface between the engine and the network.

An exchange is an all-gather of encoded payloads among the groups of a round: every group hands in
its payload for a key (fragment, send step) and gets back a handle; `handle.wait()` returns every
group's payload, ordered by group id. The engine keeps training while the handle is pending, so the
transport must not block in `exchange`.

Byte accounting (exact, counted where the bytes move): an all-gather through a broker (Ray's object
store in real runs, a dict here) costs each group its own payload once out and the M-1 other
payloads in. `bytes_sent` and `bytes_received` count exactly that.

The two-phase reduce (outer_optim/reduce.py) needs two more primitives: `scatter` (phase 1: shard
j of a group's payload goes to group j only) and `exchange_reduced` (phase 2: an all-gather of the
owners' reduced shards, in its own key space). `TwoPhaseHandle` chains them in a background thread
(scatter, reduce, publish, gather), so both hops run while training goes on and the apply only
waits for what has not landed yet. Bytes are counted in the same broker model: a shard or reduced
shard is counted once where it is uploaded and once where it is downloaded; a group's own shard
never travels.

`InProcessHub` serves M replicas running in threads of one process. It can simulate a slow link
(bandwidth per group and latency) so that one machine shows what overlapping communication with
computation buys: a group's upload starts when it calls `exchange` and takes latency + size /
bandwidth; its download of the other payloads starts when the last upload has landed and takes
latency + received / bandwidth. A group's link carries one transfer at a time. `LinkClock` holds
that timing so the Ray transport (launcher/ray_transport.py) models the same link.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Key = tuple[int, int]  # (fragment, send step)
# key spaces of the hub's rounds: the all-gather, the two-phase scatter, the reduced all-gather
ALLGATHER, SCATTER, REDUCED = 0, 1, 2


class TransportError(RuntimeError):
    """A round could not complete (timeout, or a group reported an inconsistent round)."""


@dataclass
class TransportStats:
    bytes_sent: int = 0
    bytes_received: int = 0
    exchanges: int = 0
    late: int = 0  # own payloads that arrived after their round had closed without them


class Handle(ABC):
    @abstractmethod
    def done(self) -> bool:
        """True once every group's payload has been handed in (a simulated link may still make
        `wait` sleep for the transfer time)."""

    @abstractmethod
    def wait(self, timeout: float | None = None) -> dict[int, bytes]:
        """Block until every payload of the round has arrived; {group id: payload}, sorted."""


class Transport(ABC):
    def __init__(self, group: int, num_groups: int) -> None:
        self.group = group
        self.num_groups = num_groups
        self.stats = TransportStats()

    @abstractmethod
    def exchange(self, key: Key, payload: bytes) -> Handle:
        """Start the all-gather of `payload` for `key`; never blocks on the other groups."""

    def scatter(self, key: Key, shards: Sequence[bytes]) -> Handle:
        """Phase 1 of the two-phase reduce: send `shards[j]` to group j (one per group; the own
        one stays here). `wait()` returns {sender: the shard it addressed to this group}, own
        included. Never blocks on the other groups."""
        raise TransportError(f"{type(self).__name__} has no two-phase reduce (outer.reduce)")

    def exchange_reduced(self, key: Key, payload: bytes) -> Handle:
        """Phase 2: the all-gather of this group's reduced shard for `key` (a key space of its
        own, so it never meets the phase-1 or all-gather rounds of the same key)."""
        raise TransportError(f"{type(self).__name__} has no two-phase reduce (outer.reduce)")

    def two_phase(
        self, key: Key, shards: Sequence[bytes], reduce: Reducer, timeout: float | None
    ) -> Handle:
        """Start the whole two-phase round; `reduce` turns the contributions to this group's
        shard into its reduced shard. `wait()` returns {owner: reduced shard}."""
        return TwoPhaseHandle(self, key, shards, reduce, timeout)


Reducer = Callable[[dict[int, bytes]], bytes]


class ThreadedHandle(Handle):
    """A round completed by a background thread from the send on: `_produce()` runs there, and
    `wait` only joins it. A failure in the thread is raised by `wait`; a join that times out
    raises `TransportError` with `_timeout_message` (a later wait can still succeed)."""

    def _start(self, name: str) -> None:
        self._result: dict[int, bytes] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @abstractmethod
    def _produce(self) -> dict[int, bytes]: ...

    @abstractmethod
    def _timeout_message(self, timeout: float | None) -> str: ...

    def _run(self) -> None:
        try:
            self._result = self._produce()
        except BaseException as e:  # handed to the caller of wait()
            self._error = e

    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> dict[int, bytes]:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TransportError(self._timeout_message(timeout))
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


class TwoPhaseHandle(ThreadedHandle):
    """Scatter, reduce, publish and gather in a background thread (see the module docstring).

    `timeout` bounds each of the two waits of the thread; `wait(timeout)` bounds the caller's.
    A failure in the thread (timeout, abort, a bad reducer) is raised by `wait`."""

    def __init__(
        self,
        transport: Transport,
        key: Key,
        shards: Sequence[bytes],
        reduce: Reducer,
        timeout: float | None,
    ) -> None:
        self._key, self._timeout = key, timeout
        self._transport, self._reduce = transport, reduce
        self._scatter = transport.scatter(key, shards)
        self._start(f"reduce-{key}")

    def _produce(self) -> dict[int, bytes]:
        contributions = self._scatter.wait(self._timeout)
        reduced = self._reduce(contributions)
        return self._transport.exchange_reduced(self._key, reduced).wait(self._timeout)

    def _timeout_message(self, timeout: float | None) -> str:
        return (
            f"two-phase round {self._key} (group {self._transport.group}): not complete "
            f"after {timeout}s"
        )


class DrillTransport(Transport):
    """Wraps a group's transport so a fault drill can damage what it sends: `corrupt_next()`
    flips a byte of the next non-empty payload (a bad link or a buggy peer). Everything else
    passes through; the counters are the wrapped transport's own."""

    def __init__(self, inner: Transport) -> None:
        super().__init__(inner.group, inner.num_groups)
        self.inner, self.stats = inner, inner.stats
        self._corrupt = False

    def corrupt_next(self) -> None:
        self._corrupt = True

    def _damage(self, payload: bytes) -> bytes:
        if self._corrupt and payload:
            self._corrupt = False
            payload = payload[:-1] + bytes([payload[-1] ^ 0xFF])
        return payload

    def exchange(self, key: Key, payload: bytes) -> Handle:
        return self.inner.exchange(key, self._damage(payload))

    def scatter(self, key: Key, shards: Sequence[bytes]) -> Handle:
        # damage the first shard that travels (the own one never crosses a link)
        out = list(shards)
        for j, shard in enumerate(out):
            if j != self.group and shard:
                out[j] = self._damage(shard)
                break
        return self.inner.scatter(key, out)

    def exchange_reduced(self, key: Key, payload: bytes) -> Handle:
        return self.inner.exchange_reduced(key, payload)


class CompletedHandle(Handle):
    """A round whose payloads are already here (restored from a checkpoint, or M=1)."""

    def __init__(self, payloads: dict[int, bytes]) -> None:
        self._payloads = dict(sorted(payloads.items()))

    def done(self) -> bool:
        return True

    def wait(self, timeout: float | None = None) -> dict[int, bytes]:
        return self._payloads


@dataclass(frozen=True)
class LinkModel:
    """A simulated link: bandwidth in bytes/s (0 = unlimited) and one-way latency in seconds."""

    bandwidth_bytes_per_s: float = 0.0
    latency_s: float = 0.0

    @classmethod
    def from_mbps(cls, mbps: float, latency_ms: float) -> LinkModel:
        return cls(mbps * 1e6 / 8, latency_ms / 1e3)

    def transfer_s(self, nbytes: int) -> float:
        wire = nbytes / self.bandwidth_bytes_per_s if self.bandwidth_bytes_per_s > 0 else 0.0
        return self.latency_s + wire


@dataclass
class LinkClock:
    """One group's simulated link: when it is next idle, given that it carries one transfer at a
    time. It only adds transfer times to the times it is handed, so it works on any clock
    (monotonic inside one process, wall time across processes)."""

    link: LinkModel
    free_at: float = 0.0

    def upload(self, now: float, nbytes: int) -> float:
        """Queue an upload handed in at `now`; returns when it has landed at the broker."""
        start = max(now, self.free_at)
        self.free_at = start + self.link.transfer_s(nbytes)
        return self.free_at

    def download(self, uploads_landed: float, nbytes: int) -> float:
        """Queue the download of the other payloads, which can start once the last upload of the
        round has landed; returns when they are here (at once if there is nothing to fetch)."""
        start = max(uploads_landed, self.free_at)
        self.free_at = start + (self.link.transfer_s(nbytes) if nbytes else 0.0)
        return self.free_at


def sleep_until(when: float, clock: Callable[[], float] = time.monotonic) -> None:
    """Sleep until `clock()` reaches `when` (a simulated transfer cannot finish early)."""
    delay = when - clock()
    if delay > 0:
        time.sleep(delay)


@dataclass
class _Round:
    # group -> its payload (all-gather lanes) or its tuple of shards, one per owner (SCATTER)
    payloads: dict[int, bytes | tuple[bytes, ...]] = field(default_factory=dict)
    upload_done: dict[int, float] = field(default_factory=dict)  # group -> monotonic time
    complete: threading.Event = field(default_factory=threading.Event)
    waiting: int = 0  # groups that have not collected their result yet


class InProcessHub:
    """Rendezvous for M in-process transports; one `_Round` per key while it is open."""

    def __init__(self, num_groups: int, link: LinkModel | None = None) -> None:
        if num_groups < 1:
            raise ValueError(f"InProcessHub: num_groups must be >= 1, got {num_groups}")
        self.num_groups = num_groups
        self.link = link or LinkModel()
        self._lock = threading.Lock()
        self._rounds: dict[tuple[int, Key], _Round] = {}  # (lane, key) -> round
        self._links = [LinkClock(self.link) for _ in range(num_groups)]
        self._aborted: str | None = None

    def abort(self, reason: str) -> None:
        """Fail every pending and future round (a replica died: nobody else should hang)."""
        with self._lock:
            self._aborted = reason
            for rnd in self._rounds.values():
                rnd.complete.set()

    def transport(self, group: int) -> InProcessTransport:
        if not 0 <= group < self.num_groups:
            raise ValueError(f"group {group} outside [0, {self.num_groups})")
        return InProcessTransport(self, group)

    def _submit(
        self, group: int, key: Key, payload: bytes | tuple[bytes, ...], lane: int = ALLGATHER
    ) -> _Round:
        now = time.monotonic()
        with self._lock:
            if self._aborted:
                raise TransportError(f"round {key}: hub aborted: {self._aborted}")
            rnd = self._rounds.setdefault((lane, key), _Round(waiting=self.num_groups))
            if group in rnd.payloads:
                raise TransportError(f"group {group} sent twice for round {key} (lane {lane})")
            rnd.payloads[group] = payload
            rnd.upload_done[group] = self._links[group].upload(now, _uploaded(group, payload))
            if len(rnd.payloads) == self.num_groups:
                rnd.complete.set()
            return rnd

    def _collect(
        self, group: int, key: Key, rnd: _Round, timeout: float | None, lane: int = ALLGATHER
    ) -> tuple[dict[int, bytes], float]:
        """Wait for the round, then for the simulated transfer; returns (payloads, ready time)."""
        if not rnd.complete.wait(timeout):
            missing = sorted(set(range(self.num_groups)) - set(rnd.payloads))
            raise TransportError(
                f"round {key}: timed out after {timeout}s waiting for groups {missing}"
            )
        with self._lock:
            if self._aborted:
                raise TransportError(f"round {key}: hub aborted: {self._aborted}")
            mine = {g: _addressed(p, group) for g, p in sorted(rnd.payloads.items())}
            received = sum(len(p) for g, p in mine.items() if g != group)
            ready = self._links[group].download(max(rnd.upload_done.values()), received)
            rnd.waiting -= 1
            if rnd.waiting == 0:
                del self._rounds[(lane, key)]
        sleep_until(ready)
        return mine, ready


def _addressed(payload: bytes | tuple[bytes, ...], group: int) -> bytes:
    """What `group` receives of a submission: the payload, or its shard of a scatter."""
    return payload[group] if isinstance(payload, tuple) else payload


def _uploaded(group: int, payload: bytes | tuple[bytes, ...]) -> int:
    """Bytes a submission puts on the sender's link: a scatter's own shard stays home."""
    if isinstance(payload, tuple):
        return sum(len(s) for j, s in enumerate(payload) if j != group)
    return len(payload)


class _HubHandle(Handle):
    def __init__(
        self, transport: InProcessTransport, key: Key, rnd: _Round, lane: int = ALLGATHER
    ) -> None:
        self._transport, self._key, self._round, self._lane = transport, key, rnd, lane
        self._result: dict[int, bytes] | None = None
        self.ready_at: float | None = None  # monotonic time the simulated transfer completed

    def done(self) -> bool:
        return self._result is not None or self._round.complete.is_set()

    def wait(self, timeout: float | None = None) -> dict[int, bytes]:
        if self._result is None:
            t = self._transport
            self._result, self.ready_at = t.hub._collect(
                t.group, self._key, self._round, timeout, self._lane
            )
            t.stats.bytes_received += sum(len(p) for g, p in self._result.items() if g != t.group)
        return self._result


class InProcessTransport(Transport):
    def __init__(self, hub: InProcessHub, group: int) -> None:
        super().__init__(group, hub.num_groups)
        self.hub = hub

    def exchange(self, key: Key, payload: bytes) -> Handle:
        rnd = self.hub._submit(self.group, key, payload)
        self.stats.bytes_sent += len(payload)
        self.stats.exchanges += 1
        return _HubHandle(self, key, rnd)

    def scatter(self, key: Key, shards: Sequence[bytes]) -> Handle:
        if len(shards) != self.num_groups:
            raise TransportError(f"scatter: {len(shards)} shards for {self.num_groups} groups")
        shards = tuple(bytes(s) for s in shards)
        rnd = self.hub._submit(self.group, key, shards, SCATTER)
        self.stats.bytes_sent += _uploaded(self.group, shards)
        self.stats.exchanges += 1  # one round, counted once (here, not in phase 2)
        return _HubHandle(self, key, rnd, SCATTER)

    def exchange_reduced(self, key: Key, payload: bytes) -> Handle:
        rnd = self.hub._submit(self.group, key, payload, REDUCED)
        self.stats.bytes_sent += len(payload)
        return _HubHandle(self, key, rnd, REDUCED)

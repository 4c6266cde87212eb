"""The one narrow interface between the engine and the network.

An exchange is an all-gather of encoded payloads among the groups of a round: every group hands in
its payload for a key (fragment, send step) and gets back a handle; `handle.wait()` returns every
group's payload, ordered by group id. The engine keeps training while the handle is pending, so the
transport must not block in `exchange`.

Byte accounting (exact, counted where the bytes move): an all-gather through a broker (Ray's object
store in real runs, a dict here) costs each group its own payload once out and the M-1 other
payloads in. `bytes_sent` and `bytes_received` count exactly that.

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
from collections.abc import Callable
from dataclasses import dataclass, field

Key = tuple[int, int]  # (fragment, send step)


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

    def exchange(self, key: Key, payload: bytes) -> Handle:
        if self._corrupt and payload:
            self._corrupt = False
            payload = payload[:-1] + bytes([payload[-1] ^ 0xFF])
        return self.inner.exchange(key, payload)


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
    payloads: dict[int, bytes] = field(default_factory=dict)
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
        self._rounds: dict[Key, _Round] = {}
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

    def _submit(self, group: int, key: Key, payload: bytes) -> _Round:
        now = time.monotonic()
        with self._lock:
            if self._aborted:
                raise TransportError(f"round {key}: hub aborted: {self._aborted}")
            rnd = self._rounds.setdefault(key, _Round(waiting=self.num_groups))
            if group in rnd.payloads:
                raise TransportError(f"group {group} sent twice for round {key}")
            rnd.payloads[group] = payload
            rnd.upload_done[group] = self._links[group].upload(now, len(payload))
            if len(rnd.payloads) == self.num_groups:
                rnd.complete.set()
            return rnd

    def _collect(
        self, group: int, key: Key, rnd: _Round, timeout: float | None
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
            received = sum(len(p) for g, p in rnd.payloads.items() if g != group)
            ready = self._links[group].download(max(rnd.upload_done.values()), received)
            rnd.waiting -= 1
            if rnd.waiting == 0:
                del self._rounds[key]
        sleep_until(ready)
        return dict(sorted(rnd.payloads.items())), ready


class _HubHandle(Handle):
    def __init__(self, transport: InProcessTransport, key: Key, rnd: _Round) -> None:
        self._transport, self._key, self._round = transport, key, rnd
        self._result: dict[int, bytes] | None = None
        self.ready_at: float | None = None  # monotonic time the simulated transfer completed

    def done(self) -> bool:
        return self._result is not None or self._round.complete.is_set()

    def wait(self, timeout: float | None = None) -> dict[int, bytes]:
        if self._result is None:
            t = self._transport
            self._result, self.ready_at = t.hub._collect(t.group, self._key, self._round, timeout)
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

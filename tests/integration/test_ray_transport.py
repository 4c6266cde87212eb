"""RayTransport on a real local Ray: all-gather semantics across actors, exact byte counters,
independent ranks, a StreamingEngine bit-identical to the in-process run, timeouts, abort, the
simulated link, and rounds forgotten once collected."""

from __future__ import annotations

import sys
import threading
import time
import uuid

import pytest
import torch

ray = pytest.importorskip("ray")

from streamloco.config import OuterConfig  # noqa: E402
from streamloco.launcher.ray_transport import (  # noqa: E402
    RayTransport,
    create_coordinator,
    get_coordinator,
)
from streamloco.outer_optim.engine import StreamingEngine  # noqa: E402
from streamloco.outer_optim.transport import (  # noqa: E402
    InProcessHub,
    LinkModel,
    Transport,
    TransportError,
)
from streamloco.workers.model import Transformer, model_args  # noqa: E402
from streamloco.workers.synthetic import MarkovLanguage, SyntheticStream  # noqa: E402

pytestmark = pytest.mark.ray

# Ray workers cannot import this test module (tests/ is not on their path): ship it by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

VOCAB, SEQ, BATCH = 32, 16, 4
ENGINE_OPTS = OuterConfig(
    sync_every=4,
    fragments=2,
    overlap=1,
    alpha=0.5,
    codec="e3m0",
    zstd_level=3,
)


class Group:
    """One group's model, inner optimizer, data and engine (as in test_engine.py)."""

    def __init__(self, transport: Transport, options: OuterConfig) -> None:
        torch.manual_seed(0)  # every group starts from the same initialization
        self.model = Transformer(model_args("tiny", VOCAB, SEQ))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=3e-3, foreach=False)
        self.engine = StreamingEngine(self.model, options, transport, timeout_s=30)
        language = MarkovLanguage(VOCAB, branching=2, seed=0)
        self.stream = SyntheticStream(language, BATCH, SEQ, seed=1, stream=transport.group)

    def train(self, steps: int) -> list[torch.Tensor]:
        """Train `steps` inner steps, apply what is in flight; returns the global parameters."""
        for _ in range(steps):
            batch = self.stream.next()
            loss = self.model.loss(batch[:, :-1], batch[:, 1:])
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            self.engine.step()
        self.engine.finish()
        return [g.clone() for g in self.engine.global_params]


@ray.remote(num_cpus=0)
class Peer:
    """A stand-in for a worker: owns RayTransports (one per coordinator and rank)."""

    def __init__(self) -> None:
        torch.set_num_threads(1)
        self.transports: dict[tuple[str, int], RayTransport] = {}
        self.handles: dict = {}

    def connect(
        self, name: str, group: int, num_groups: int, rank: int = 0, link: LinkModel | None = None
    ) -> None:
        coord = get_coordinator(name)
        self.transports[name, rank] = RayTransport(coord, group, num_groups, rank, link)

    def exchange(self, name: str, rank: int, key, payload: bytes) -> None:
        self.handles[name, rank, key] = (
            time.time(),
            self.transports[name, rank].exchange(key, payload),
        )

    def wait(self, name: str, rank: int, key, timeout: float = 20) -> tuple[dict, float, float]:
        """(payloads, seconds since the exchange, ready_at - exchange time)."""
        t0, handle = self.handles.pop((name, rank, key))
        result = handle.wait(timeout)
        assert handle.wait(timeout) is result  # cached, not fetched or counted again
        return result, time.time() - t0, handle.ready_at - t0

    def stats(self, name: str, rank: int = 0) -> tuple[int, int, int]:
        s = self.transports[name, rank].stats
        return s.bytes_sent, s.bytes_received, s.exchanges

    def train(self, name: str, group: int, num_groups: int, steps: int, options) -> list:
        transport = RayTransport(get_coordinator(name), group, num_groups)
        return Group(transport, options).train(steps)


@pytest.fixture(scope="module")
def peers(local_ray):
    actors = [Peer.remote() for _ in range(3)]
    yield actors
    for a in actors:
        ray.kill(a)


@pytest.fixture
def coordinator(local_ray):
    """A factory of fresh, uniquely named coordinators, killed after the test."""
    made = []

    def make(num_groups: int):
        name = f"coord-{uuid.uuid4().hex[:8]}"
        made.append(create_coordinator(name, num_groups))
        return name, made[-1]

    yield make
    for handle in made:
        ray.kill(handle)


def _round(peers, name, key, payloads, rank=0, timeout=20):
    """Every peer sends its payload for `key`, then every peer waits; returns the results."""
    ray.get([peer.exchange.remote(name, rank, key, payloads[g]) for g, peer in enumerate(peers)])
    return ray.get([peer.wait.remote(name, rank, key, timeout) for peer in peers])


@pytest.mark.parametrize("m", [2, 3])
def test_groups_exchange_every_payload_in_group_order_with_exact_counters(peers, coordinator, m):
    name, coord = coordinator(m)
    group_peers = peers[:m]
    ray.get([p.connect.remote(name, g, m) for g, p in enumerate(group_peers)])
    sizes = [10, 2000, 300_000][:m]  # the last one goes through the shared-memory store
    keys = [(0, 2), (1, 4)]
    for key in keys:
        payloads = {g: bytes([g + 1]) * sizes[g] + repr(key).encode() for g in range(m)}
        for result, _, _ in _round(group_peers, name, key, payloads):
            assert result == payloads and list(result) == list(range(m))
    extra = len(repr((0, 2)).encode())  # both keys' suffixes have the same length
    for g, p in enumerate(group_peers):
        sent, received, exchanges = ray.get(p.stats.remote(name))
        assert sent == len(keys) * (sizes[g] + extra)
        assert received == len(keys) * (sum(sizes) - sizes[g] + (m - 1) * extra)
        assert exchanges == len(keys)
    assert ray.get(coord.rounds_open.remote()) == 0  # every round forgotten once collected


def test_ranks_of_a_group_exchange_independently(peers, coordinator):
    name, coord = coordinator(2)
    a, b = peers[:2]
    ray.get([p.connect.remote(name, g, 2, rank) for rank in (0, 1) for g, p in enumerate((a, b))])
    key = (0, 3)  # the same fragment and step on both ranks
    payload = {(g, r): f"g{g}r{r}".encode() * (r + 1) for g in (0, 1) for r in (0, 1)}
    ray.get(
        [
            p.exchange.remote(name, rank, key, payload[g, rank])
            for rank in (0, 1)
            for g, p in enumerate((a, b))
        ]
    )
    for rank in (0, 1):
        results = ray.get([p.wait.remote(name, rank, key) for p in (a, b)])
        for result, _, _ in results:
            assert result == {0: payload[0, rank], 1: payload[1, rank]}
    for g, p in enumerate((a, b)):
        for rank in (0, 1):
            sent, received, _ = ray.get(p.stats.remote(name, rank))
            assert (sent, received) == (len(payload[g, rank]), len(payload[1 - g, rank]))
    assert ray.get(coord.rounds_open.remote()) == 0


def test_engine_over_ray_is_bit_identical_to_the_in_process_run(peers, coordinator):
    name, _ = coordinator(2)
    steps = 12
    futures = [p.train.remote(name, g, 2, steps, ENGINE_OPTS) for g, p in enumerate(peers[:2])]
    over_ray = ray.get(futures, timeout=120)

    hub = InProcessHub(2)
    # Built one after the other: torch's global RNG (the initialization) is shared by threads.
    groups = [Group(hub.transport(g), ENGINE_OPTS) for g in range(2)]
    in_process: list = [None, None]
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)  # the same kernels as in the single-threaded actors
    try:
        threads = [
            threading.Thread(
                target=lambda g: in_process.__setitem__(g, groups[g].train(steps)), args=(g,)
            )
            for g in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        torch.set_num_threads(threads_before)

    assert all(r is not None for r in in_process), "in-process replica failed"
    for got in [*over_ray, *in_process]:
        for frag, ref in zip(got, over_ray[0], strict=True):
            assert torch.equal(frag, ref)
    # The run really synchronized something: the globals moved away from the initialization.
    torch.manual_seed(0)
    init = Transformer(model_args("tiny", VOCAB, SEQ))
    start = StreamingEngine(init, ENGINE_OPTS, InProcessHub(1).transport(0)).global_params
    assert all(not torch.equal(a, b) for a, b in zip(start, over_ray[0], strict=True))


def test_wait_times_out_naming_the_missing_group_and_succeeds_once_it_sends(coordinator):
    name, coord = coordinator(2)
    t0 = RayTransport(get_coordinator(name), 0, 2)
    t1 = RayTransport(coord, 1, 2)
    handle = t0.exchange((0, 3), b"payload")  # returns at once
    assert not handle.done()
    with pytest.raises(TransportError, match=r"timed out after 0.3s waiting for groups \[1\]"):
        handle.wait(timeout=0.3)
    assert ray.get(coord.rounds_open.remote()) == 1
    with pytest.raises(TransportError, match="twice"):
        t0.exchange((0, 3), b"again")
    other = t1.exchange((0, 3), b"late")
    assert other.wait(timeout=10) == {0: b"payload", 1: b"late"}
    deadline = time.monotonic() + 10  # the round's answer reaches t0's future asynchronously
    while not handle.done():
        assert time.monotonic() < deadline, "round closed but the handle never became done"
        time.sleep(0.01)
    assert handle.wait(timeout=10) == {0: b"payload", 1: b"late"}
    assert (t0.stats.bytes_sent, t0.stats.bytes_received) == (7, 4)
    assert ray.get(coord.rounds_open.remote()) == 0


def test_coordinator_side_timeout_names_the_missing_groups(coordinator):
    _, coord = coordinator(3)
    t = RayTransport(coord, 1, 3, collect_timeout_s=0.2)
    with pytest.raises(TransportError, match=r"coordinator timed out.*groups \[0, 2\]"):
        t.exchange((2, 6), b"x").wait(timeout=10)


def test_abort_fails_pending_and_future_waits_with_the_reason(coordinator):
    _, coord = coordinator(2)
    t = RayTransport(coord, 0, 2)
    handle = t.exchange((0, 1), b"p")
    errors: list[BaseException] = []

    def waiter():
        try:
            handle.wait(timeout=20)
        except TransportError as e:
            errors.append(e)

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.2)  # the waiter is blocked on the pending round
    ray.get(coord.abort.remote("group 1 died"))
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(errors) == 1 and "group 1 died" in str(errors[0])
    assert ray.get(coord.rounds_open.remote()) == 0
    with pytest.raises(TransportError, match="group 1 died"):
        t.exchange((0, 2), b"q").wait(timeout=10)


def test_simulated_link_delays_by_bandwidth_and_latency(peers, coordinator):
    # 100 kB each way at 1 MB/s plus 20 ms latency: upload 0.12 s, then download 0.12 s.
    name, _ = coordinator(2)
    link = LinkModel(bandwidth_bytes_per_s=1e6, latency_s=0.02)
    ray.get([p.connect.remote(name, g, 2, 0, link) for g, p in enumerate(peers[:2])])
    payloads = {0: b"x" * 100_000, 1: b"y" * 100_000}
    for result, elapsed, ready_after in _round(peers[:2], name, (0, 1), payloads):
        assert result == payloads
        assert ready_after >= 0.24 - 1e-6  # the modelled transfer time...
        assert elapsed >= 0.24  # ...and wait did not return before it (lower bound only)

"""In-process transport: all-gather semantics, exact byte counters, simulated link, timeouts."""

import threading
import time

import pytest

from streamloco.outer_optim.transport import (
    DrillTransport,
    InProcessHub,
    LinkModel,
    TransportError,
)


def _run_groups(hub, payloads, key=(0, 1)):
    results, handles = {}, {}

    def worker(g):
        handles[g] = hub.transport(g).exchange(key, payloads[g])
        results[g] = handles[g].wait(timeout=10)

    threads = [threading.Thread(target=worker, args=(g,)) for g in range(hub.num_groups)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_all_groups_receive_every_payload_in_group_order():
    hub = InProcessHub(3)
    payloads = {0: b"a" * 10, 1: b"b" * 20, 2: b"c" * 30}
    results = _run_groups(hub, payloads)
    for g in range(3):
        assert results[g] == payloads and list(results[g]) == [0, 1, 2]


def test_byte_counters_are_exact():
    hub = InProcessHub(3)
    transports = [hub.transport(g) for g in range(3)]
    sizes = [10, 20, 30]
    handles = [t.exchange((1, 5), b"x" * n) for t, n in zip(transports, sizes, strict=True)]
    for h in handles:
        h.wait(timeout=5)
    for g, t in enumerate(transports):
        assert t.stats.bytes_sent == sizes[g]
        assert t.stats.bytes_received == sum(sizes) - sizes[g]


def test_exchange_does_not_block_and_wait_times_out_naming_missing_groups():
    hub = InProcessHub(2)
    handle = hub.transport(0).exchange((0, 3), b"payload")  # returns at once
    assert not handle.done()
    with pytest.raises(TransportError, match=r"groups \[1\]"):
        handle.wait(timeout=0.05)


def test_abort_frees_waiters():
    hub = InProcessHub(2)
    handle = hub.transport(0).exchange((0, 3), b"p")
    hub.abort("group 1 died")
    with pytest.raises(TransportError, match="group 1 died"):
        handle.wait(timeout=5)


def test_sending_twice_for_a_round_is_an_error():
    hub = InProcessHub(2)
    t = hub.transport(0)
    t.exchange((0, 1), b"p")
    with pytest.raises(TransportError, match="twice"):
        t.exchange((0, 1), b"p")


def test_simulated_link_delays_by_bandwidth_and_latency():
    # 2 groups, 100 kB payloads, 1 MB/s, 20 ms latency: upload 0.12 s, then download 0.12 s.
    link = LinkModel(bandwidth_bytes_per_s=1e6, latency_s=0.02)
    assert link.transfer_s(100_000) == pytest.approx(0.12)
    assert LinkModel.from_mbps(8.0, 20).bandwidth_bytes_per_s == 1e6
    hub = InProcessHub(2, link)
    t0 = time.monotonic()
    _run_groups(hub, {0: b"x" * 100_000, 1: b"y" * 100_000})
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.24  # a lower bound only: simulated time can't be skipped


def test_overlap_hides_transfer_time_behind_compute():
    link = LinkModel(bandwidth_bytes_per_s=1e6, latency_s=0.0)
    hub = InProcessHub(1, link)
    t = hub.transport(0)
    sent_at = time.monotonic()
    handle = t.exchange((0, 1), b"z" * 50_000)  # M=1: upload only, 0.05 s
    time.sleep(0.06)  # "training" meanwhile
    wait_started = time.monotonic()
    handle.wait(timeout=5)
    # The transfer completed (simulated clock) before we asked: the wait had nothing to sleep.
    assert sent_at + 0.05 <= handle.ready_at <= wait_started


def test_drill_transport_flips_one_byte_of_the_next_non_empty_payload_only():
    hub = InProcessHub(2)
    drill, other = DrillTransport(hub.transport(0)), hub.transport(1)
    assert drill.stats is drill.inner.stats
    drill.corrupt_next()
    seen = []
    for step, payload in enumerate([b"", b"abc", b"abc"], 1):  # an abstention is left alone
        handle = drill.exchange((0, step), payload)
        other.exchange((0, step), b"zz")
        seen.append(handle.wait(timeout=10)[0])
    assert seen == [b"", b"ab" + bytes([ord("c") ^ 0xFF]), b"abc"]
    assert drill.stats.bytes_sent == 6  # counted by the wrapped transport, as without a drill

"""The two-phase reduce (outer.reduce = "two_phase"): the owner's reduce and its envelope, and the
engine over the in-process hub: bit-identical globals, exact equality with the all-gather for a
lossless codec, byte counters against the formula, abstention, corrupted and missing shards,
error feedback, and save/restore. No Ray."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest
import torch
from test_engine import in_threads, make_replica

from streamloco.config import OuterConfig, load_config
from streamloco.outer_optim.codecs import make_codec
from streamloco.outer_optim.optimizer import flatten
from streamloco.outer_optim.reduce import (
    ReducedError,
    bytes_per_round,
    encode_shards,
    envelope_size,
    pack_reduced,
    reduce_shard,
    resolve_reduce,
    shard_slices,
    unpack_reduced,
)
from streamloco.outer_optim.transport import DrillTransport, InProcessHub

TWO = OuterConfig(sync_every=6, fragments=2, overlap=1, alpha=0.5, codec="e3m0", reduce="two_phase")


# ---- pure parts ---------------------------------------------------------------------------------


def test_auto_picks_two_phase_from_three_groups_where_it_moves_fewer_bytes():
    assert [resolve_reduce("auto", m) for m in (1, 2, 3, 8)] == [
        "allgather",
        "allgather",
        "two_phase",
        "two_phase",
    ]
    assert resolve_reduce("two_phase", 2) == "two_phase"
    assert resolve_reduce("auto", 8, "sparse") == "allgather"  # top-k re-encode loses too much
    assert resolve_reduce("two_phase", 8, "sparse") == "two_phase"  # asked for: granted
    for m in (2, 3, 4, 8):
        ag, tp = bytes_per_round("allgather", m, 1.0), bytes_per_round("two_phase", m, 1.0)
        # the formula auto is built on: equal at 2, two_phase strictly fewer from 3
        assert (sum(tp) < sum(ag)) == (m >= 3) and math.isclose(sum(tp), (3 * m - 2) / m)
    with pytest.raises(ValueError, match="reduce: 'ring'"):
        resolve_reduce("ring", 4)


def test_config_names_the_key_of_a_bad_reduce():
    with pytest.raises(ValueError, match=r"outer\.reduce"):
        load_config(None, ["--outer.reduce=ring"])


@pytest.mark.parametrize("n,m,block", [(1000, 4, 128), (100, 8, 32), (4096, 3, 128), (5, 4, 8)])
def test_shards_are_whole_blocks_that_tile_the_vector(n, m, block):
    slices = shard_slices(n, m, block)
    assert slices[0][0] == 0 and slices[-1][1] == n
    for (_, hi), (lo, _) in itertools.pairwise(slices):
        assert hi == lo  # contiguous, owners in order
    assert all(lo % block == 0 for lo, hi in slices if hi > lo)


def test_envelope_round_trips_and_rejects_every_damage():
    body = make_codec("e3m0", 128).encode(torch.randn(300))
    payload = pack_reduced(10, [0, 3, 9], body)
    assert len(payload) == envelope_size(10) + len(body)
    assert unpack_reduced(payload, 10) == ([0, 3, 9], body)
    assert unpack_reduced(pack_reduced(3, [], b""), 3) == ([], b"")
    bad = {
        "truncated": payload[:5],
        "magic": b"XXXX" + payload[4:],
        "checksum": payload[:7] + bytes([payload[7] ^ 1]) + payload[8:],
        "contributors but": pack_reduced(10, [1], b""),
        "past the number": pack_reduced(10, [12], body),
    }
    for why, damaged in bad.items():
        with pytest.raises(ReducedError, match=why):
            unpack_reduced(damaged, 10)
    with pytest.raises(ReducedError, match="made for 10 groups"):
        unpack_reduced(payload, 4)


def test_owner_means_valid_contributions_in_group_order_and_re_encodes():
    codec, n = make_codec("fp32", 128), 256
    xs = [torch.randn(n) for _ in range(4)]
    contributions = {g: codec.encode(x) for g, x in enumerate(xs)}
    contributions[1] = b""  # abstained
    contributions[2] = contributions[2][:-1] + bytes([contributions[2][-1] ^ 0xFF])
    r = reduce_shard(codec, contributions, n, 4, seed=0)
    used, body = unpack_reduced(r.payload, 4)
    assert used == [0, 3] and [g for g, _ in r.excluded] == [1, 2]
    assert "sent nothing" in r.excluded[0][1] and "invalid payload" in r.excluded[1][1]
    # fp32 is lossless: the reduced shard is exactly the all-gather's (x0 + x3) / 2
    assert torch.equal(codec.decode(body), (xs[0].clone().add_(xs[3])).div_(2))
    assert r.reencode_rel_error == 0.0
    lossy = make_codec("e3m0", 128)
    r4 = reduce_shard(lossy, {g: lossy.encode(x) for g, x in enumerate(xs)}, n, 4, seed=0)
    assert 0 < r4.reencode_rel_error < 0.5
    nobody = reduce_shard(codec, {0: b"", 1: b""}, n, 2, seed=0)
    assert unpack_reduced(nobody.payload, 2) == ([], b"")


def test_per_shard_payloads_quantize_exactly_like_the_whole_vector():
    codec, x = make_codec("e3m0", 64), torch.randn(1000)
    slices = shard_slices(1000, 3, 64)
    parts = [codec.decode(b) for b in encode_shards(codec, x, slices, seed=0)]
    assert torch.equal(torch.cat(parts), codec.decode(codec.encode(x)))


# ---- the engine over the in-process hub ---------------------------------------------------------


def _run(m: int, opts, steps: int, hook=None, wrap=None):
    hub = InProcessHub(m)
    reps = [make_replica(g, opts, hub) for g in range(m)]
    if wrap is not None:
        for r in reps:
            r.engine.transport = wrap(r.engine.transport)

    def body(g: int) -> None:
        reps[g].train(steps, hook)
        events = reps[g].engine.finish()
        if hook is not None:
            hook(reps[g], events)

    in_threads(body, m)
    return reps


def test_with_a_lossless_codec_two_phase_equals_the_allgather_bit_for_bit():
    """fp32 payloads and an fp32 re-encode lose nothing, and the owner sums its slice in the
    all-gather's order: the two exchanges must produce the very same globals and momentum."""
    fp32 = replace(TWO, codec="fp32")
    ag = _run(4, replace(fp32, reduce="allgather"), 13)
    tp = _run(4, fp32, 13)
    for a, b in zip(ag, tp, strict=True):
        for ga, gb in zip(a.engine.global_params, b.engine.global_params, strict=True):
            assert torch.equal(ga, gb)
        for ma, mb in zip(a.engine.momentum, b.engine.momentum, strict=True):
            assert torch.equal(ma, mb)
    assert tp[0].engine.reduce == "two_phase" and ag[0].engine.reduce == "allgather"


@pytest.mark.parametrize("m,codec,zstd", [(4, "e3m0", 0), (3, "sparse", 3), (5, "int4", 3)])
def test_every_group_holds_identical_globals_and_counts_both_phases(m, codec, zstd):
    opts = replace(TWO, codec=codec, zstd_level=zstd, error_feedback=codec == "sparse", topk=4)
    events: dict[int, list] = {g: [] for g in range(m)}

    def hook(rep, evs):
        if evs != "before_sync":
            events[rep.engine.transport.group] += evs

    reps = _run(m, opts, 13, hook)
    for r in reps[1:]:
        for a, b in zip(r.engine.global_params, reps[0].engine.global_params, strict=True):
            assert torch.equal(a, b)
    for g, r in enumerate(reps):
        sends = [e for e in events[g] if e.kind == "send"]
        applies = [e for e in events[g] if e.kind == "apply"]
        assert applies and all(e.groups == m and not e.adopted for e in applies)
        assert all(e.reduce_rel_error > 0 and e.quant_rel_error > 0 for e in applies)
        # the transport's counters are exactly the events' bytes, both phases
        stats = r.engine.transport.stats
        assert stats.bytes_sent == sum(e.payload_bytes for e in sends) + sum(
            e.sent_bytes for e in applies
        )
        assert stats.bytes_received == sum(e.received_bytes for e in applies)
        # and close to the formula: about P up and 2(M-1)/M P down per round
        p = sum(r.engine.codec.payload_size((len(x),)) for x in r.engine.global_params) / 2
        if zstd == 0 and codec != "sparse":
            up, down = bytes_per_round("two_phase", m, p)
            rounds = len(applies)
            assert stats.bytes_sent == pytest.approx(up * rounds, rel=0.05)
            assert stats.bytes_received == pytest.approx(down * rounds, rel=0.05)


def test_abstaining_and_corrupting_groups_are_left_out_alike_and_adopt():
    """Group 2 corrupts the first shard it sends at one step and goes NaN later: every shard's
    owner leaves it out, every group agrees, group 2 adopts the global fragment."""
    m = 3
    opts = replace(TWO, sync_every=2, fragments=1, overlap=0, codec="fp32")
    seen: dict = {}

    def hook(rep, evs):
        g = rep.engine.transport.group
        if evs == "before_sync":
            nxt = rep.engine.step_count + 1
            if g == 2 and nxt == 2:
                rep.engine.transport.corrupt_next()
            if g == 2 and nxt == 4:
                with torch.no_grad():
                    next(rep.model.parameters()).fill_(float("nan"))
            return
        for ev in evs:
            seen[(g, ev.step, ev.kind)] = ev
        seen[(g, rep.engine.step_count)] = rep.engine.global_params[0].clone()

    reps = _run(m, opts, 5, hook, wrap=DrillTransport)
    for step, why in ((2, "invalid payload"), (4, "sent nothing")):
        for g in range(m):
            ev = seen[(g, step, "apply")]
            assert [b for b, _ in ev.excluded] == [2], ev.excluded
            assert ev.adopted == (g == 2) and ev.groups == 2
            assert torch.equal(seen[(g, step)], seen[(0, step)])
        owner_view = seen[(0 if step == 2 else 2, step, "apply")].excluded[0][1]
        assert why in owner_view or "left out of shards" in owner_view
    assert torch.isfinite(flatten(list(reps[2].model.parameters()))).all()


class _BadReduced:
    """Corrupts this group's reduced shard: every group must skip that shard alike."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.group, self.num_groups, self.stats = inner.group, inner.num_groups, inner.stats

    def two_phase(self, key, shards, reduce, timeout):
        def bad(contributions):
            payload = reduce(contributions)
            return payload[:-1] + bytes([payload[-1] ^ 0xFF])

        return self.inner.two_phase(key, shards, bad, timeout)


def test_a_missing_or_invalid_reduced_shard_is_skipped_by_every_group_alike():
    m = 3
    opts = replace(TWO, sync_every=3, fragments=1, overlap=0)
    before: dict = {}

    def hook(rep, evs):
        if evs == "before_sync":
            before[rep.engine.transport.group] = rep.engine.global_params[0].clone()

    hub = InProcessHub(m)
    reps = [make_replica(g, opts, hub) for g in range(m)]
    reps[1].engine.transport = _BadReduced(reps[1].engine.transport)
    in_threads(lambda g: reps[g].train(3, hook), m)
    a, b = reps[0].engine.owned[0][1]
    for r in reps:
        glob = r.engine.global_params[0]
        assert torch.equal(glob, reps[0].engine.global_params[0])
        assert torch.equal(glob[a:b], before[0][a:b])  # shard 1 skipped: global unchanged
        assert not torch.equal(glob[:a], before[0][:a])  # the others stepped
        assert not r.engine.momentum[0][a:b].any()  # and its momentum stays (zero here)


def test_error_feedback_carries_only_the_senders_own_compression_error():
    opts = replace(TWO, codec="sparse", topk=2, error_feedback=True, fragments=1, overlap=0)
    sent: dict = {}

    def hook(rep, evs):
        e = rep.engine
        if e.transport.group != 0:
            return
        if evs == "before_sync" and e.step_count + 1 == 6:
            local = flatten(list(rep.model.parameters()))
            sent["acc"] = e.global_params[0] - local  # first send: acc = delta
        elif evs != "before_sync" and any(ev.kind == "send" for ev in evs) and "err" not in sent:
            sent["err"] = e.error[0].clone()

    _run(2, opts, 6, hook)
    codec = make_codec("sparse", 128, 0, 2)
    slices = shard_slices(sent["acc"].numel(), 2, 128)
    shards = encode_shards(codec, sent["acc"], slices, seed=0)
    decoded = torch.cat([codec.decode(s) for s in shards])
    # residual = acc - decode(own shards): the owner's re-encode never enters it
    torch.testing.assert_close(sent["err"], sent["acc"] - decoded, rtol=0, atol=1e-6)


def test_save_restore_with_a_two_phase_round_in_flight_is_bit_exact():
    opts = replace(TWO, overlap=2, sync_every=6, fragments=2)
    m = 3
    whole = _run(m, opts, 12)
    hub = InProcessHub(m)
    first = [make_replica(g, opts, hub) for g in range(m)]
    in_threads(lambda g: first[g].train(4), m)  # fragment 1 sent at step 3, applies at 5
    states = in_threads(lambda g: first[g].state(), m)
    assert all(1 in r.engine.in_flight for r in first)
    hub2 = InProcessHub(m)
    second = [make_replica(g, opts, hub2) for g in range(m)]
    for r, s in zip(second, states, strict=True):
        r.load(s)
    in_threads(lambda g: (second[g].train(8), second[g].engine.finish()), m)
    for a, b in zip(whole, second, strict=True):
        for ga, gb in zip(a.engine.global_params, b.engine.global_params, strict=True):
            assert torch.equal(ga, gb)


@pytest.mark.parametrize("codec", ["e3m0", "sparse"])
def test_k_ranks_per_group_give_the_one_rank_globals_bit_for_bit(codec):
    """Each rank runs its own two-phase round on its 1/K of the fragment; shards are whole
    blocks and every codec step is block-local, so the globals do not depend on K."""
    from streamloco.outer_optim.comm import ThreadHub
    from streamloco.outer_optim.engine import StreamingEngine

    m = 3
    opts = replace(TWO, codec=codec, block_size=64, topk=4, error_feedback=codec == "sparse")

    def run(ranks: int) -> list:
        hubs = [InProcessHub(m) for _ in range(ranks)]  # one exchange per rank index
        comms = [ThreadHub(ranks) for _ in range(m)]
        reps = []
        for g in range(m):
            for r in range(ranks):
                rep = make_replica(g, None, None)  # ranks of a group see the same data (DDP)
                rep.engine = StreamingEngine(
                    rep.model, opts, hubs[r].transport(g), comms[g].comm(r), timeout_s=30
                )
                reps.append(rep)
        in_threads(lambda i: reps[i].train(13), m * ranks)
        return reps

    one, two = run(1), run(2)
    for rep in two:
        for a, b in zip(rep.engine.global_params, one[0].engine.global_params, strict=True):
            assert torch.equal(a, b)


def test_the_simulated_link_carries_both_hops_one_after_the_other():
    """With a slow link, a group's link is busy for at least the four transfers of a round
    (scatter up, own shard down, reduced up, reduced shards down): model time, not wall time."""
    import time

    from streamloco.outer_optim.transport import LinkModel

    m, bw, latency = 3, 2e6, 0.001  # bytes/s, s
    hub = InProcessHub(m, LinkModel(bandwidth_bytes_per_s=bw, latency_s=latency))
    codec = make_codec("e3m0", 128)
    slices = shard_slices(3000, m, 128)
    shards = [encode_shards(codec, torch.randn(3000), slices, seed=g) for g in range(m)]

    def reducer(g):
        return lambda c: reduce_shard(codec, c, slices[g][1] - slices[g][0], m, 0).payload

    t0 = time.monotonic()
    handles = [hub.transport(g).two_phase((0, 1), shards[g], reducer(g), 30) for g in range(m)]
    results = [h.wait(30) for h in handles]
    assert all(r == results[0] for r in results) and sorted(results[0]) == list(range(m))
    up1 = sum(len(b) for b in shards[0][1:])  # group 0's shards for owners 1 and 2
    down1 = len(shards[1][0]) + len(shards[2][0])  # the others' shards for owner 0
    up2 = len(results[0][0])  # its reduced shard
    down2 = len(results[0][1]) + len(results[0][2])  # the others' reduced shards
    moved = up1 + down1 + up2 + down2
    assert hub._links[0].free_at - t0 >= moved / bw + 4 * latency

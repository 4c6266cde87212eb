"""The analytic utilization model: hand-computed timelines, monotonicity, inversion, calibration,
the paper ladder, and agreement with the engine's schedule and link semantics."""

from __future__ import annotations

import math

import pytest

from streamloco.bench.utilization import (
    PAPER_1B_GBPS,
    CommPattern,
    bandwidth_for,
    calibrate_step_s,
    even_split,
    extrapolate,
    ladder_fragments,
    paper_ladder,
    simulate,
    utilization_curve,
)
from streamloco.outer_optim.codecs import make_codec
from streamloco.outer_optim.schedule import Schedule
from streamloco.outer_optim.transport import LinkModel

MB_1S = LinkModel.from_mbps(8.0, 0.0)  # 1e6 bytes take exactly 1 s


def pattern(h: int, payloads: tuple[int, ...], tau: int = 0, name: str = "p") -> CommPattern:
    return CommPattern(name, h, len(payloads), tau, payloads)


@pytest.mark.parametrize("collective", ["allgather", "ring"])
@pytest.mark.parametrize("steady", [False, True])
def test_unlimited_link_without_latency_never_blocks(collective, steady):
    pat = pattern(12, (5_000_000, 1_000, 3_000_000), tau=1)
    tl = simulate(
        pat,
        groups=3,
        steps=40,
        step_s=0.5,
        link=LinkModel(0.0, 0.0),
        collective=collective,
        steady=steady,
    )
    assert tl.utilization == 1.0
    assert tl.blocked_s == 0.0
    assert tl.wall_s == tl.compute_s


def test_diloco_by_hand():
    # H=10, 20 steps of 1 s, 1e6 bytes each way at 8 Mbit/s: after step 10 (t=10) upload 10->11,
    # download 11->12, blocked 2; after step 20 (t=22) upload 22->23, download 23->24, blocked 2.
    tl = simulate(pattern(10, (1_000_000,)), groups=2, steps=20, step_s=1.0, link=MB_1S)
    assert tl.rounds == 2
    assert tl.blocked_s == pytest.approx(4.0)
    assert tl.wall_s == pytest.approx(24.0)
    assert tl.utilization == pytest.approx(20 / 24)
    assert tl.bytes_per_group == 2 * (1_000_000 + 1_000_000)


def test_overlap_hides_part_of_each_transfer_by_hand():
    # F=2, H=10, tau=2: fragment 1 sends after steps 5, 15, fragment 0 after 10, 20; applies 2
    # steps later. 2e6 bytes = 2 s each way, so a round needs 4 s of link, 2 s of it hidden by
    # the two steps of overlap:
    #   step 5 ends t=5: upload 5->7; step 7 ends t=7: download 7->9, blocked 2 (t=9)
    #   step 10 ends t=12: upload 12->14; step 12 ends 14: download 14->16, blocked 2 (t=16)
    #   step 15 ends t=19: upload 19->21; step 17 ends 21: download 21->23, blocked 2 (t=23)
    #   step 20 ends t=26: upload 26->28; finish(): download 28->30, blocked 4 (nothing hides it)
    # wall 30, blocked 10. Without overlap every round blocks 4: wall 36.
    payloads = (2_000_000, 2_000_000)
    kw = {"groups": 2, "steps": 20, "step_s": 1.0, "link": MB_1S, "final_sync": False}
    tl = simulate(pattern(10, payloads, tau=2), **kw)
    assert tl.rounds == 4
    assert tl.wall_s == pytest.approx(30.0)
    assert tl.blocked_s == pytest.approx(10.0)
    assert tl.utilization == pytest.approx(2 / 3)
    no_overlap = simulate(pattern(10, payloads), **kw)
    assert no_overlap.wall_s == pytest.approx(36.0)
    # The engine's final sync (its default): fragment 1, last sent at step 15, is sent again
    # after finish() has applied fragment 0: upload 30->32, download 32->34, blocked 4 more.
    final = simulate(pattern(10, payloads, tau=2), **(kw | {"final_sync": True}))
    assert (final.rounds, final.wall_s, final.blocked_s) == (5, pytest.approx(34.0), 4 * 3.5)
    assert final.bytes_per_group == tl.bytes_per_group + 2 * 2_000_000
    # Steady state: steps 11..20 (the second period), no flush. It holds the applies after steps
    # 12 and 17 (blocked 2 each) and the sends after 15 and 20: wall 14 for 10 s of compute.
    steady = simulate(
        pattern(10, payloads, tau=2), groups=2, steps=20, step_s=1.0, link=MB_1S, steady=True
    )
    assert steady.rounds == 2
    assert steady.blocked_s == pytest.approx(4.0)
    assert steady.utilization == pytest.approx(10 / 14)
    assert steady.bytes_per_group == 2 * (2_000_000 + 2_000_000)


def test_ring_with_backward_overlap_by_hand():
    # DP (H=1), M=2 ring: 2(M-1)/M x 1e6 = 1e6 bytes = 1 s on the link, started 0.5 s before the
    # end of each 1 s step -> blocked 0.5 per step: 4 steps take 6 s.
    dp = pattern(1, (1_000_000,))
    kw = {"groups": 2, "step_s": 1.0, "link": MB_1S, "hide_s": 0.5, "collective": "ring"}
    tl = simulate(dp, steps=4, **kw)
    assert tl.wall_s == pytest.approx(6.0)
    assert tl.rounds == 4
    assert tl.bytes_per_group == 4 * 2 * 1_000_000  # sends and receives 1e6 per step
    steady = simulate(dp, steps=4, steady=True, **kw)
    assert (steady.rounds, steady.compute_s) == (3, 3.0)
    assert steady.utilization == pytest.approx(2 / 3)


def test_matches_the_round_by_round_closed_form():
    # At most one fragment is in flight and every round ends (its apply) before the next send,
    # so each round is independent: blocked = max(0, link time - compute since the send), where
    # the compute since the send is tau steps, or what is left of the run for finish().
    h, tau, steps, step_s, m = 30, 2, 100, 0.25, 3
    payloads = (700_000, 200_000, 450_000)
    link = LinkModel.from_mbps(20.0, 15.0)
    pat = pattern(h, payloads, tau=tau)
    sched = Schedule(h, 3, tau)
    expected = 0.0
    for s in range(1, steps + 1):
        for p in sched.sends(s):
            need = link.transfer_s(payloads[p]) + link.transfer_s((m - 1) * payloads[p])
            expected += max(0.0, need - min(tau, steps - s) * step_s)
    tl = simulate(pat, groups=m, steps=steps, step_s=step_s, link=link, final_sync=False)
    assert tl.blocked_s == pytest.approx(expected)
    assert tl.wall_s == pytest.approx(steps * step_s + expected)


@pytest.mark.parametrize("kind", ["streaming", "torchft"])
def test_rounds_follow_the_engine_schedule(kind):
    h, f, tau, steps = 30, 3, 2, 101
    pat = CommPattern("s", h, f, tau, (1000, 1000, 1000), kind)
    sched = Schedule(h, f, tau, kind)
    sends = sum(len(sched.sends(s)) for s in range(1, steps + 1))
    tl = simulate(pat, groups=2, steps=steps, step_s=1.0, link=MB_1S, final_sync=False)
    assert tl.rounds == sends  # every send is applied: in its step or by finish()
    # the final sync adds one round for each fragment not sent at the last step
    synced = simulate(pat, groups=2, steps=steps, step_s=1.0, link=MB_1S)
    assert synced.rounds == sends + f - len(sched.sends(steps))
    steady = simulate(pat, groups=2, steps=steps, step_s=1.0, link=MB_1S, steady=True)
    assert steady.rounds == f * (steps // h - 1)  # F rounds per whole period after the first


def test_payload_bytes_come_from_the_codec():
    pat = CommPattern.from_numels("x", [1000, 999], 10, 1, "e3m0", block_size=128)
    codec = make_codec("e3m0", 128)
    assert pat.payload_bytes == (codec.payload_size((1000,)), codec.payload_size((999,)))
    assert pat.payload_bytes[0] == 33 + 4 * 8 + 500  # header, 8 block scales, 2 codes a byte
    dp = CommPattern.data_parallel(1000, "bf16")
    assert (dp.sync_every, dp.fragments, dp.overlap, dp.payload_bytes) == (1, 1, 0, (2033,))
    with pytest.raises(ValueError, match="overlap"):
        CommPattern.from_numels("x", [10, 10], 10, 5, "fp32")  # tau must be < H/F


def ladder_variants(numel: int = 3_000_000) -> dict[str, CommPattern]:
    parts = even_split(numel, 3)
    return {
        "diloco": CommPattern.from_numels("diloco", [numel], 30, 0, "fp32"),
        "streaming": CommPattern.from_numels("streaming", parts, 30, 0, "fp32"),
        "overlap": CommPattern.from_numels("overlap", parts, 30, 5, "fp32"),
        "4bit": CommPattern.from_numels("4bit", parts, 30, 5, "e3m0"),
    }


MBPS = [1.0, 5.0, 20.0, 50.0, 100.0, 400.0, 2000.0]


@pytest.mark.parametrize("steady", [False, True])
def test_overlap_4bit_and_bandwidth_never_lower_utilization(steady):
    v = ladder_variants()
    kw = {"groups": 2, "steps": 95, "step_s": 0.1, "latency_ms": 20.0, "steady": steady}
    kw["final_sync"] = False  # a short run's last round, which nothing can hide, would dominate
    util = {
        name: [t.utilization for t in utilization_curve(pat, MBPS, **kw)] for name, pat in v.items()
    }
    for name, curve in util.items():
        assert curve == sorted(curve), name  # monotone in bandwidth
        assert all(0 < u <= 1 for u in curve)
    for slow, fast in zip(util["streaming"], util["overlap"], strict=True):
        assert fast >= slow
    for full, quant in zip(util["overlap"], util["4bit"], strict=True):
        assert quant >= full
    # and they help where they should: 4 MB fp32 fragments take 1.6 s each way at 20 Mbit/s
    # against 0.5 s of overlap, their e3m0 payloads 0.2 s; at 100 Mbit/s overlap hides most
    assert util["4bit"][MBPS.index(20.0)] > util["overlap"][MBPS.index(20.0)] + 0.5
    assert util["overlap"][MBPS.index(100.0)] > util["streaming"][MBPS.index(100.0)] + 0.2


def test_utilization_curve_zero_means_unlimited():
    (tl,) = utilization_curve(
        ladder_variants()["diloco"], [0.0], groups=2, steps=60, step_s=0.1, latency_ms=0.0
    )
    assert tl.utilization == 1.0


@pytest.mark.parametrize("collective", ["allgather", "ring"])
@pytest.mark.parametrize("name", ["diloco", "overlap", "4bit"])
def test_bandwidth_for_inverts_simulate(name, collective):
    pat = ladder_variants()[name]
    kw = {"groups": 2, "step_s": 0.1, "hide_s": 0.05, "collective": collective}
    bps = bandwidth_for(pat, 0.9, latency_s=0.01, **kw)
    assert 0 < bps < math.inf

    def util(bits_per_s: float) -> float:
        link = LinkModel(bits_per_s / 8, 0.01)
        return simulate(pat, steps=90, link=link, steady=True, **kw).utilization

    assert util(bps) >= 0.9
    assert util(bps) == pytest.approx(0.9, abs=1e-6)
    assert util(bps * 0.999) < 0.9  # the least such bandwidth


def test_bandwidth_for_edge_cases():
    dp = pattern(1, (1_000_000,))
    # allgather pays the latency twice per round: 2 x 1 s against a 1 s step is 33% at best
    assert bandwidth_for(dp, 0.5, groups=2, step_s=1.0, latency_s=1.0) == math.inf
    assert bandwidth_for(pattern(1, (0,)), 0.95, groups=2, step_s=1.0, collective="ring") == 0.0


def test_calibrated_step_makes_dp_need_the_given_bandwidth():
    (dp, *_) = paper_ladder(1_000_000_000, 24)
    step = calibrate_step_s(dp, 222.0, 0.95, groups=2, hide_fraction=2 / 3, collective="ring")
    gbps = (
        bandwidth_for(dp, 0.95, groups=2, step_s=step, hide_s=2 / 3 * step, collective="ring") / 1e9
    )
    assert gbps == pytest.approx(222.0, rel=1e-6)
    # by hand: 2e9 bytes of bf16 = 16 Gbit, blocked = T - 2/3 step = step / 19 at 95%
    assert step == pytest.approx(16 / 222 / (2 / 3 + 1 / 19), rel=1e-4)


def test_ladder_fragments_divide_h():
    assert ladder_fragments(24, 100) == 10  # 8 does not divide 100; 10 is nearest
    assert ladder_fragments(24, 96) == 8
    assert ladder_fragments(6, 30) == 2
    ladder = paper_ladder(1_000_000_000, 24)
    assert [p.name for p in ladder] == list(PAPER_1B_GBPS)
    assert sum(ladder[3].payload_bytes) == pytest.approx(sum(ladder[1].payload_bytes), rel=1e-6)
    assert sum(ladder[4].payload_bytes) / sum(ladder[3].payload_bytes) == pytest.approx(
        4.25 / 16, rel=1e-4
    )


def test_extrapolation_to_1b_keeps_the_papers_order():
    rows, assumptions = extrapolate()
    gbps = {r["variant"]: r["gbps_model"] for r in rows}
    assert list(gbps) == list(PAPER_1B_GBPS)
    assert gbps["DP"] == pytest.approx(222.0, rel=1e-6)
    assert gbps["DP"] > gbps["DiLoCo"] >= gbps["Streaming"] > gbps["+ overlap"] > gbps["+ 4-bit"]
    for r in rows:
        assert r["gbps_paper"] == PAPER_1B_GBPS[r["variant"]]
        assert r["ratio"] == pytest.approx(r["gbps_model"] / r["gbps_paper"])
        assert 0.5 < r["ratio"] < 2  # the same order of magnitude as the paper
    for key in ("step_s", "H", "F", "tau", "collective", "groups (M)", "hide (backward overlap)"):
        assert key in assumptions
    assert (assumptions["F"], assumptions["collective"]) == (10, "ring")

"""An analytic model of compute utilization (time computing / wall time) against link bandwidth.

Pure Python: no Ray, no torch.distributed, no training. It walks the inner steps of one worker
group the way `StreamingEngine` does and times every exchange with the project's own `LinkClock`,
so the same code serves two purposes in `streamloco bench`:

- check our implementation: a finite run (`steady=False`) reproduces the engine step for step
  (send after the step, apply `tau` steps later, the apply waits for the round, `finish()` applies
  what is still in flight with nothing left to hide it), on the broker all-gather our transport
  does (`collective="allgather"`: upload the own payload, then download the M-1 others, one
  transfer at a time on the group's link);
- extrapolate to the Streaming DiLoCo paper (arXiv 2501.18512), whose Table reports the bandwidth
  each method needs for 95% compute utilization at 1B. There the model runs in steady state, with
  a ring all-reduce (the paper's accounting) that may start during the backward pass (`hide_s`).

Groups are symmetric: every group computes at the same speed and sends equal payloads, so all
uploads of a round land together and one group's timeline is every group's timeline. Encoding,
decoding and the outer step cost no time here (they are measured separately, see docs/engine.md);
a measured run blocks a little longer than the model by that much.

Against the paper's 1B table (`extrapolate()`), one calibration (DP's step time) is the only
fitted number; the other rows are predictions. How close they come, and why they differ where
they do (every round, each fragment's too, hides behind a backward pass, so the requirement
depends on F and on the hidden share; e3m0 carries its block scales), is measured and discussed
in docs/results.md, "At the paper's scale" (the numbers live there, not here, because they
change whenever the model does).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from streamloco.outer_optim.schedule import Schedule
from streamloco.outer_optim.transport import LinkClock, LinkModel

Collective = Literal["allgather", "ring"]

# Bandwidth (Gbit/s) for 95% compute utilization at 1B, Streaming DiLoCo paper (arXiv 2501.18512).
PAPER_1B_GBPS: dict[str, float] = {
    "DP": 222.0,
    "DiLoCo": 23.3,
    "Streaming": 16.0,
    "+ overlap": 9.1,
    "+ 4-bit": 2.0,
}


def even_split(total: int, fragments: int) -> tuple[int, ...]:
    """`total` elements in `fragments` parts differing by at most one (the ladder's fragments:
    the paper does not list its per-fragment sizes, and at 1B the embedding is a small share)."""
    if fragments < 1 or total < 0:
        raise ValueError(
            f"even_split: need total >= 0 and fragments >= 1, got {total}, {fragments}"
        )
    q, r = divmod(total, fragments)
    return tuple(q + (1 if i < r else 0) for i in range(fragments))


@dataclass(frozen=True)
class CommPattern:
    """What one group puts on the wire and when: the engine's schedule plus payload sizes.

    `payload_bytes[p]` is one group's own encoded payload for fragment p (what our transport
    uploads); the collective decides how many bytes that turns into on the link.
    """

    name: str
    sync_every: int  # H
    fragments: int  # F
    overlap: int  # tau
    payload_bytes: tuple[int, ...]
    kind: Literal["streaming", "torchft"] = "streaming"

    def __post_init__(self) -> None:
        if len(self.payload_bytes) != self.fragments:
            raise ValueError(
                f"{self.name}: {len(self.payload_bytes)} payload sizes for F={self.fragments}"
            )
        if any(b < 0 for b in self.payload_bytes):
            raise ValueError(f"{self.name}: negative payload size in {self.payload_bytes}")
        Schedule(self.sync_every, self.fragments, self.overlap, self.kind)  # engine's checks

    @property
    def schedule(self) -> Schedule:
        """The engine's own schedule, so the model sends and applies on the same steps."""
        return Schedule(self.sync_every, self.fragments, self.overlap, self.kind)

    @classmethod
    def from_numels(
        cls,
        name: str,
        numels_per_fragment: Sequence[int],
        sync_every: int,
        overlap: int,
        codec: str,
        block_size: int = 128,
        kind: Literal["streaming", "torchft"] = "streaming",
    ) -> CommPattern:
        """Payload sizes from the codec's own `payload_size` (exact without zstd, which only ever
        shrinks a payload), for fragments of these sizes (e.g. `FragmentPlan.numels`); F is their
        count."""
        # Imported here: codecs pulls in torch, which the timing model itself does not need.
        from streamloco.outer_optim.codecs import make_codec

        c = make_codec(codec, block_size, 0)
        sizes = tuple(c.payload_size((int(n),)) for n in numels_per_fragment)
        return cls(name, sync_every, len(sizes), overlap, sizes, kind)

    @classmethod
    def data_parallel(
        cls, numel: int, codec: str = "fp32", block_size: int = 128, name: str = "DP"
    ) -> CommPattern:
        """Data parallelism as the bench emulates it with our engine: every step, one fragment,
        no overlap (H=1, F=1, tau=0). fp32 by default (what our DP emulation sends); the paper's
        DP uses bf16."""
        return cls.from_numels(name, [numel], 1, 0, codec, block_size)


@dataclass(frozen=True)
class Timeline:
    """One group's time budget over a simulated run (or its steady-state window)."""

    wall_s: float
    compute_s: float
    blocked_s: float  # waiting in applies: wall_s - compute_s
    rounds: int  # applies (exchanges completed)
    bytes_per_group: int  # sent + received by one group

    @property
    def utilization(self) -> float:
        """compute_s / wall_s; 1.0 for an empty run."""
        return self.compute_s / self.wall_s if self.wall_s > 0 else 1.0


def _link_bytes(payload: int, groups: int, collective: Collective) -> tuple[int, int, int]:
    """(first transfer, second transfer, bytes sent + received) for one group and one round.

    allgather (our broker transport): upload the own payload, then download the M-1 others; the
    link carries them one after the other. ring (the paper's and design.md's accounting): one
    transfer of 2(M-1)/M x payload; a ring sends and receives that much at once (full duplex),
    so it occupies the link for that many bytes and moves twice as many.
    """
    if collective == "allgather":
        down = (groups - 1) * payload
        return payload, down, payload + down
    if collective == "ring":
        ring = round(2 * (groups - 1) * payload / groups)
        return ring, 0, 2 * ring
    raise ValueError(f"collective {collective!r} is not 'allgather' or 'ring'")


def simulate(
    pattern: CommPattern,
    *,
    groups: int,
    steps: int,
    step_s: float,
    link: LinkModel,
    hide_s: float = 0.0,
    collective: Collective = "allgather",
    steady: bool = False,
    final_sync: bool = True,
) -> Timeline:
    """Walk `steps` inner steps of one group and time every exchange on its link.

    Each step computes for `step_s`. After step s the engine sends `schedule.sends(s)` (the
    transfer starts at end-of-step - `hide_s`, never before the link is free: `hide_s` > 0 models
    a collective launched during the backward pass, as the paper assumes; our engine sends after
    the step, hide_s = 0), then applies `schedule.applies(s)`, each waiting until its round has
    arrived. With allgather the download is queued on the link at the apply, as our transport
    does (`LinkClock.download` when the handle is waited on).

    steady=False: the finite run exactly as the engine does it, `finish()` included (everything
    still in flight is applied after the last step, blocking for all of it): compare with measured
    runs; `final_sync` as the engine's option of that name. steady=True: only the whole
    H-periods after the first (steps H+1 .. kH, k = steps // H >= 2) and no final flush: the
    steady state, for extrapolation.
    """
    if groups < 1 or steps < 1:
        raise ValueError(f"simulate: need groups >= 1 and steps >= 1, got {groups}, {steps}")
    if not step_s > 0:
        raise ValueError(f"simulate: step_s must be > 0, got {step_s}")
    if not 0 <= hide_s <= step_s:
        raise ValueError(f"simulate: hide_s must be in [0, step_s={step_s}], got {hide_s}")
    h = pattern.sync_every
    if steady and steps < 2 * h:
        raise ValueError(f"simulate: steady state needs steps >= 2H = {2 * h}, got {steps}")
    window = (h, steps // h * h) if steady else (0, steps)  # (after step a, up to step b]
    sched = pattern.schedule
    clock = LinkClock(link)
    sizes = [_link_bytes(b, groups, collective) for b in pattern.payload_bytes]
    in_flight: dict[int, float] = {}  # fragment -> when its first transfer ends
    t = 0.0  # now: steps done x step_s + time blocked so far (no drift from adding step_s)
    blocked_all = 0.0
    blocked = 0.0  # inside the measured window
    rounds = 0
    moved = 0

    def apply(p: int, counted: bool) -> None:
        nonlocal t, blocked_all, blocked, rounds
        landed = in_flight.pop(p)
        # allgather: the download is queued when the apply waits, as in our transport; a ring
        # is done when its one transfer is.
        ready = clock.download(landed, sizes[p][1]) if collective == "allgather" else landed
        wait = max(0.0, ready - t)
        t += wait
        blocked_all += wait
        blocked += wait * counted
        rounds += counted

    def send(p: int, sent: float, counted: bool) -> None:
        nonlocal moved
        first, _, both = sizes[p]
        # A ring of zero bytes (M=1) waits for nothing; an upload to the broker pays latency
        # even then, as in the in-process hub.
        in_flight[p] = sent if collective == "ring" and not first else clock.upload(sent, first)
        moved += both * counted

    for s in range(1, window[1] + 1):
        t = s * step_s + blocked_all
        counted = s > window[0]
        for p in sched.sends(s):
            send(p, t - hide_s, counted)
        for p in sched.applies(s):
            if p in in_flight:
                apply(p, counted)
    if not steady:
        for p in sorted(in_flight):
            apply(p, True)
        if final_sync:  # the engine's finish(): the fragments not sent at the last step
            rest = [p for p in range(pattern.fragments) if p not in sched.sends(steps)]
            for p in rest:
                send(p, t, True)
            for p in rest:
                apply(p, True)
    compute = (window[1] - window[0]) * step_s
    return Timeline(compute + blocked, compute, blocked, rounds, moved)


def _default_steps(pattern: CommPattern, steps: int | None) -> int:
    return 3 * pattern.sync_every if steps is None else steps


def bandwidth_for(
    pattern: CommPattern,
    target_util: float,
    *,
    groups: int,
    step_s: float,
    latency_s: float = 0.0,
    hide_s: float = 0.0,
    collective: Collective = "allgather",
    steps: int | None = None,
    steady: bool = True,
    rel_tol: float = 1e-9,
) -> float:
    """The least link bandwidth (bits/s per group, per direction) at which `simulate` reaches
    `target_util`; `steps` defaults to 3H (two steady periods).

    Utilization only grows with bandwidth (every transfer ends no later), so this bisects on
    log-bandwidth and returns the upper end of the final bracket: simulating there meets the
    target. math.inf when even an unlimited link misses the target, i.e. latency alone (paid
    once per transfer, twice per all-gather round) blocks more than the target allows; 0.0 when
    the target is met whatever the bandwidth (nothing to send, or everything hidden).
    """
    if not 0 < target_util < 1:
        raise ValueError(f"bandwidth_for: target_util must be in (0, 1), got {target_util}")
    n = _default_steps(pattern, steps)

    def util(bytes_per_s: float) -> float:
        link = LinkModel(bytes_per_s, latency_s)
        return simulate(
            pattern,
            groups=groups,
            steps=n,
            step_s=step_s,
            link=link,
            hide_s=hide_s,
            collective=collective,
            steady=steady,
        ).utilization

    if util(0.0) < target_util:  # bandwidth 0 is LinkModel's "unlimited"
        return math.inf
    lo, hi = _bracket(lambda bw: util(bw) >= target_util, 1e6)
    if hi is None:
        return math.inf
    if lo is None:
        return 0.0
    return 8 * _bisect(lambda bw: util(bw) >= target_util, lo, hi, rel_tol)


def _bracket(ok: Callable[[float], bool], start: float) -> tuple[float | None, float | None]:
    """(lo, hi) with ok(hi) and not ok(lo), for a predicate that turns true as x grows; hi is
    None if no x up to 1e30 is ok, lo None if every x down to 1e-6 is."""
    hi = start
    while not ok(hi):
        hi *= 16
        if hi > 1e30:
            return start, None
    lo = hi / 16
    while ok(lo):
        lo /= 16
        if lo < 1e-6:
            return None, hi
    return lo, hi


def _bisect(ok: Callable[[float], bool], lo: float, hi: float, rel_tol: float) -> float:
    """Geometric bisection: the least x in (lo, hi] with ok(x), to relative tolerance."""
    while hi / lo > 1 + rel_tol:
        mid = math.sqrt(lo * hi)
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def calibrate_step_s(
    dp_pattern: CommPattern,
    gbps: float,
    target: float = 0.95,
    *,
    groups: int = 2,
    latency_s: float = 0.0,
    hide_fraction: float = 2 / 3,
    collective: Collective = "ring",
    steps: int | None = None,
) -> float:
    """The step time at which `dp_pattern` needs exactly `gbps` Gbit/s for `target` utilization.

    The paper gives no step time, so it is the model's one free parameter: fixing it with the DP
    row turns the other rows into predictions. A longer step hides more (hide_s = hide_fraction x
    step_s) and has more compute per round, so utilization grows with it; this bisects on log
    step time.
    """
    if not gbps > 0 or not 0 < target < 1 or not 0 <= hide_fraction <= 1:
        raise ValueError(f"calibrate_step_s: bad gbps={gbps}, target={target}, {hide_fraction=}")
    link = LinkModel(gbps * 1e9 / 8, latency_s)
    n = _default_steps(dp_pattern, steps)

    def ok(step_s: float) -> bool:
        tl = simulate(
            dp_pattern,
            groups=groups,
            steps=n,
            step_s=step_s,
            link=link,
            hide_s=hide_fraction * step_s,
            collective=collective,
            steady=True,
        )
        return tl.utilization >= target

    lo, hi = _bracket(ok, 1.0)
    if lo is None or hi is None:
        raise ValueError(f"calibrate_step_s: no step time gives {target:.0%} at {gbps} Gbit/s")
    return _bisect(ok, lo, hi, 1e-12)


def ladder_fragments(n_layers: int, sync_every: int, blocks_per_fragment: int = 3) -> int:
    """F for the paper's Streaming rows: about `blocks_per_fragment` layers per fragment
    (max(2, round(L / 3))), moved to the nearest divisor of H (our schedule needs H/F whole;
    ties go to the larger F) and capped at the layer count."""
    want = max(2, round(n_layers / blocks_per_fragment))
    divisors = [f for f in range(1, min(sync_every, n_layers) + 1) if sync_every % f == 0]
    return min(divisors, key=lambda f: (abs(f - want), -f))


def paper_ladder(
    params: int,
    n_layers: int,
    *,
    sync_every: int = 100,
    overlap: int = 1,
    blocks_per_fragment: int = 3,
    fragments: int | None = None,
    codec_4bit: str = "e3m0",
    block_size: int = 128,
) -> list[CommPattern]:
    """The paper's five rows as patterns: DP, DiLoCo, Streaming, + overlap, + 4-bit.

    DP exchanges bf16 every step; DiLoCo is F=1, tau=0; Streaming uses F fragments (default
    `ladder_fragments`), tau=0; + overlap adds tau; + 4-bit sends `codec_4bit`. All but the last
    send bf16 (16 bits), because the paper's baselines communicate in bf16. Parameters are split
    evenly across fragments (the paper's strided fragments of equal depth are near-equal at 1B).
    """
    f = fragments or ladder_fragments(n_layers, sync_every, blocks_per_fragment)
    parts = even_split(params, f)
    return [
        CommPattern.data_parallel(params, "bf16", block_size),
        CommPattern.from_numels("DiLoCo", [params], sync_every, 0, "bf16", block_size),
        CommPattern.from_numels("Streaming", parts, sync_every, 0, "bf16", block_size),
        CommPattern.from_numels("+ overlap", parts, sync_every, overlap, "bf16", block_size),
        CommPattern.from_numels("+ 4-bit", parts, sync_every, overlap, codec_4bit, block_size),
    ]


def extrapolate(
    params: int = 1_000_000_000,
    n_layers: int = 24,
    *,
    target: float = 0.95,
    groups: int = 2,
    sync_every: int = 100,
    overlap: int = 1,
    blocks_per_fragment: int = 3,
    fragments: int | None = None,
    hide_fraction: float = 2 / 3,
    hide_dp_only: bool = False,
    latency_s: float = 0.0,
    collective: Collective = "ring",
    codec_4bit: str = "e3m0",
    block_size: int = 128,
    calibrate_gbps: float = PAPER_1B_GBPS["DP"],
) -> tuple[list[dict[str, float | str]], dict[str, object]]:
    """The paper's bandwidth table from our model: calibrated on DP, the other four predicted.

    Returns (rows, assumptions). Rows: {variant, gbps_model, gbps_paper, ratio = model / paper}
    in ladder order; DP's ratio is 1 by construction. Assumptions: everything the numbers depend
    on, for the report to print beside them. `hide_dp_only` lets only DP's collective start in
    the backward pass (an alternative reading, to see what the hidden backward explains).
    """
    ladder = paper_ladder(
        params,
        n_layers,
        sync_every=sync_every,
        overlap=overlap,
        blocks_per_fragment=blocks_per_fragment,
        fragments=fragments,
        codec_4bit=codec_4bit,
        block_size=block_size,
    )
    step_s = calibrate_step_s(
        ladder[0],
        calibrate_gbps,
        target,
        groups=groups,
        latency_s=latency_s,
        hide_fraction=hide_fraction,
        collective=collective,
    )
    rows: list[dict[str, float | str]] = []
    for pat in ladder:
        frac = hide_fraction if pat.sync_every == 1 or not hide_dp_only else 0.0
        bps = bandwidth_for(
            pat,
            target,
            groups=groups,
            step_s=step_s,
            latency_s=latency_s,
            hide_s=frac * step_s,
            collective=collective,
        )
        gbps = bps / 1e9
        paper = PAPER_1B_GBPS.get(pat.name, math.nan)
        rows.append(
            {"variant": pat.name, "gbps_model": gbps, "gbps_paper": paper, "ratio": gbps / paper}
        )
    assumptions: dict[str, object] = {
        "params": params,
        "n_layers": n_layers,
        "target_utilization": target,
        "groups (M)": groups,
        "H": sync_every,
        "F": ladder[2].fragments,
        "tau": overlap,
        "collective": collective,
        "hide (backward overlap)": (
            f"{hide_fraction:.3g} of a step" + (" (DP only)" if hide_dp_only else "")
        ),
        "latency_s": latency_s,
        "codecs": f"bf16; + 4-bit: {codec_4bit} (block {block_size})",
        "fragments": "params split evenly",
        "calibrated on": f"DP = {calibrate_gbps} Gbit/s",
        "step_s": step_s,
        "measured": "steady state (whole H-periods after the first, no final flush)",
    }
    return rows, assumptions


def utilization_curve(
    pattern: CommPattern,
    bandwidths_mbps: Sequence[float],
    *,
    groups: int,
    steps: int,
    step_s: float,
    latency_ms: float,
    hide_s: float = 0.0,
    collective: Collective = "allgather",
    steady: bool = False,
    final_sync: bool = True,
) -> list[Timeline]:
    """One Timeline per bandwidth (Mbit/s per group; 0 = unlimited, as in `LinkModel`), by
    default the finite run as our engine does it: the model column of a measured-vs-model
    table."""
    return [
        simulate(
            pattern,
            groups=groups,
            steps=steps,
            step_s=step_s,
            link=LinkModel.from_mbps(mbps, latency_ms),
            hide_s=hide_s,
            collective=collective,
            steady=steady,
            final_sync=final_sync,
        )
        for mbps in bandwidths_mbps
    ]

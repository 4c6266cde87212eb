"""Equal wall-clock on a slow link: which method gives the better model in the same time?

The bench's quality runs compare methods at equal tokens. A user with a 25 Mbit/s link and an
hour asks a different question (the Languini Kitchen's: equal compute time). This module answers
it from a results.json alone, so a saved bench output gains the view without new training:

1. each run's compute time per inner step (`step_time`): the user's own number
   (`bench.wallclock_step_s` > 0), else the run's measured `step_s` (median chunk time without
   evaluation, recorded by the bench runner), else the utilization ladder's unlimited-link step
   time of the method's rung, else wall_s / steps (which includes evaluation and start-up);
2. its time per step on the link = step time / utilization, from `utilization.simulate` over the
   run's whole length with the run's own schedule (H, F, tau) and exact codec payload sizes
   (`payloads`). DDP is M islands all-reducing bf16 gradients every step (the ladder's DP rung)
   with a ring, as torch DDP does, in two rows: sent after the step (as the ladder's DP rung and
   our engine do) and overlapped with 2/3 of the step (the backward pass: torch DDP's buckets,
   the paper's assumption); our methods use our transport's all-gather through the broker;
3. each eval point moves to wall-clock step x (time per step on the link), and losses are
   compared at the same times (`loss_at`): interpolated linearly between eval points, never
   extrapolated (None before a run's first eval point and after its last).

Comparison times (`comparison_times`), per M and bandwidth: when the fastest run of that M
finishes its tokens (every run still has a loss there unless it has not reached its first eval
point), and the largest round duration (1 s, 2 s, 5 s, ... 1 min, 2 min, ... 1 h, 2 h, ...) not
beyond 90% of it: the "one hour" question scaled to the run.

Pure: no Ray, no torch.distributed, no training. Exact payload sizes need the codecs'
`payload_size` (imported lazily, as `utilization.CommPattern.from_numels` does) unless the bench
recorded them per run.
"""

from __future__ import annotations

import bisect
import copy
from collections.abc import Sequence
from dataclasses import dataclass

from streamloco.bench.schema import baseline, group_counts, is_number, runs_for
from streamloco.bench.utilization import Collective, CommPattern, even_split, simulate
from streamloco.outer_optim.transport import LinkModel

# The bandwidths (Mbit/s) the view always shows, with the bench's own `bandwidths_mbps`: the
# issue's question is asked at 25 and 100 Mbit/s.
ALWAYS_MBPS = (25.0, 100.0)
DEFAULT_LATENCY_MS = 20.0  # BenchConfig.latency_ms, for a results.json that does not record it
DEFAULT_BLOCK_SIZE = 128  # config.OuterConfig.block_size: the e3m0 runs' quantization block
TARGET_MBPS = 25.0  # the target: Streaming 4-bit beats DDP at equal wall-clock at this link
DDP_COLLECTIVE: Collective = "ring"  # torch DDP's all-reduce
# DDP's twin row: its all-reduce overlapped with this share of a step (the backward pass; the
# Streaming DiLoCo paper's assumption, `utilization.extrapolate`'s hide_fraction)
DDP_HIDE_FRACTION = 2 / 3
OVERLAP_SUFFIX = "+overlap"
OVERLAP_LABEL = ", all-reduce overlapped"
OURS_COLLECTIVE: Collective = "allgather"  # our transport: upload own, download the M-1 others

# Round durations (s) for the "one hour"-like budget: the largest one not beyond 90% of the
# fastest run's finish is the second comparison time.
ROUND_S = (
    *(1, 2, 5, 10, 15, 20, 30),
    *(60 * m for m in (1, 2, 5, 10, 15, 20, 30)),
    *(3600 * h for h in (1, 2, 3, 4, 6, 8, 12, 24, 48)),
)
BUDGET_SHARE = 0.9
# Measured step times of one M that differ more than this (max / min) are mostly the shared
# machine's load, not the methods: the report says so and how to compare at one step time.
SPREAD_WARNING = 1.2
# A results.json without per-run step times: the utilization ladder rung whose unlimited-link
# run computes what the method computes (closest rung for sparse, which has none of its own).
_RUNG = {"ddp": "DP", "diloco": "DiLoCo"}


def _rung(run: dict) -> str:
    if run["method"] in _RUNG:
        return _RUNG[run["method"]]
    if not run.get("tau"):
        return "Streaming"
    return "+ overlap" if run.get("codec") in ("bf16", "fp32") else "+ 4-bit"


# ---- the pure pieces ------------------------------------------------------------------------


def loss_at(points: Sequence[Sequence[float]], t: float) -> float | None:
    """Loss at time `t` from (time, loss, ...) points sorted by time, linearly interpolated.

    Never extrapolated: None before the first point and after the last (a relative 1e-9 slack
    absorbs rounding, so the finish time itself has the final loss).
    """
    if not points:
        return None
    times = [p[0] for p in points]
    slack = 1e-9 * max(1.0, abs(times[-1]))
    if t < times[0] - slack or t > times[-1] + slack:
        return None
    t = min(max(t, times[0]), times[-1])
    i = bisect.bisect_left(times, t)
    if times[i] == t or i == 0:
        return float(points[i][1])
    (t0, y0), (t1, y1) = (points[i - 1][0], points[i - 1][1]), (times[i], points[i][1])
    return float(y0 + (y1 - y0) * (t - t0) / (t1 - t0))


def round_budget(t: float) -> float | None:
    """The largest round duration in ROUND_S that is <= t (None below 1 s)."""
    fits = [r for r in ROUND_S if r <= t * (1 + 1e-9)]
    return float(fits[-1]) if fits else None


def comparison_times(finish_s: Sequence[float]) -> list[tuple[str, float]]:
    """(name, seconds) to compare at: the fastest finish, then the round budget at most 90% of
    it (a distinct, earlier point: 2m00s beside a finish at 2m01s would repeat the column)."""
    first = min(finish_s)
    out = [("fastest run finishes", first)]
    budget = round_budget(BUDGET_SHARE * first)
    if budget is not None:
        out.append(("round budget", budget))
    return out


@dataclass(frozen=True)
class LinkTime:
    """One run on one link: its compute step time and what the link makes of it."""

    step_s: float  # compute per inner step
    utilization: float  # compute / wall over the whole run (finish included)
    wall_s: float  # the whole run on this link

    @property
    def s_per_step(self) -> float:
        """Mean wall-clock per inner step on the link: step_s / utilization."""
        return self.step_s / self.utilization


def link_time(
    pattern: CommPattern,
    *,
    islands: int,
    steps: int,
    step_s: float,
    mbps: float,
    latency_ms: float,
    collective: Collective,
    hide_s: float = 0.0,
) -> LinkTime:
    """Simulate the whole run (the engine's finish included) on a link of `mbps` Mbit/s; each
    exchange may start `hide_s` before the end of its step (overlapped with the backward)."""
    tl = simulate(
        pattern,
        groups=islands,
        steps=steps,
        step_s=step_s,
        link=LinkModel.from_mbps(mbps, latency_ms),
        collective=collective,
        hide_s=hide_s,
    )
    return LinkTime(step_s, tl.utilization, tl.wall_s)


def median_step_s(
    chunks: Sequence[tuple[int, float]],
    tokens_per_step: int,
    eval_steps: Sequence[int],
    last_step: int,
) -> float | None:
    """Compute seconds per inner step of one group from its chunk throughputs.

    `chunks`: (the step a chunk ended at, its tokens/s) in step order, a chunk covering the steps
    after the previous one's end; `tokens_per_step`: the group's tokens per step. A chunk that
    holds an evaluation (`eval_steps`) or the run's end (the engine's finish, the final
    evaluation) is left out; the median of the rest also leaves out the first chunk's start-up
    and the odd chunk slowed by a neighbour on a shared machine. None when no chunk is left.
    """
    kept, prev = [], 0
    for end, tokens_per_s in sorted(chunks):
        clean = end < last_step and not any(prev < e <= end for e in eval_steps)
        if clean and tokens_per_s > 0:
            kept.append(tokens_per_step / tokens_per_s)
        prev = end
    if not kept:
        return None
    kept.sort()
    mid = len(kept) // 2
    return kept[mid] if len(kept) % 2 else (kept[mid - 1] + kept[mid]) / 2


# ---- from results.json ----------------------------------------------------------------------


def step_time(run: dict, results: dict, override_s: float = 0.0) -> tuple[float, str]:
    """(compute seconds per inner step, where the number comes from) for one run."""
    if override_s > 0:
        return override_s, "bench.wallclock_step_s"
    if is_number(run.get("step_s")) and run["step_s"] > 0:
        return float(run["step_s"]), str(run.get("step_s_source") or "measured")
    rung = _rung(run)
    for row in (results.get("utilization") or {}).get("rows") or []:
        if row["variant"] == rung and is_number(row.get("step_s")) and row["step_s"] > 0:
            groups = results["utilization"].get("groups", 2)
            return float(row["step_s"]), f"utilization run {rung!r} (M={groups}, unlimited link)"
    steps = results["meta"]["steps"]
    return run["wall_s"] / steps, "wall_s / steps (includes evaluation and start-up)"


def payloads(run: dict, results: dict) -> tuple[tuple[int, ...], str]:
    """One group's payload bytes per fragment, before zstd, and where they come from: recorded
    by the bench (exact fragments of the real model), else the codec's exact `payload_size` on
    the parameters split evenly over F (as the utilization ladder's extrapolation does)."""
    if run.get("payload_bytes"):
        return tuple(int(b) for b in run["payload_bytes"]), "recorded"
    from streamloco.outer_optim.codecs import make_codec  # pulls in torch: only when needed

    bench = results["meta"].get("bench") or {}
    params = int(results["meta"]["model"]["params"])
    if run["method"] == "ddp":
        codec, fragments = make_codec("bf16", DEFAULT_BLOCK_SIZE), 1
    elif run["codec"] == "sparse":
        block = int(bench.get("sparse_block_size", 4096))
        codec = make_codec("sparse", block, 0, int(bench.get("sparse_topk", 0)))
        fragments = run["F"]
    else:
        codec, fragments = make_codec(run["codec"], DEFAULT_BLOCK_SIZE), run["F"]
    sizes = tuple(codec.payload_size((n,)) for n in even_split(params, fragments))
    return sizes, "codec size, parameters split evenly"


def zstd_scale(run: dict, results: dict) -> float:
    """A zstd run's bytes over its plain twin's (measured, <= 1): the codec sizes are before
    zstd. 1 for a run without zstd or without a twin to compare with."""
    if not run.get("zstd") or not run.get("bytes_per_group"):
        return 1.0
    for twin in results["runs"]:
        if twin.get("derived_from") == run["id"] and twin.get("bytes_per_group"):
            return min(1.0, run["bytes_per_group"] / twin["bytes_per_group"])
    return 1.0


def pattern_for(run: dict, results: dict) -> tuple[CommPattern, Collective, str]:
    """The run's communication on the user's link: (pattern, collective, payload source)."""
    sizes, source = payloads(run, results)
    if run["method"] == "ddp":
        return CommPattern("DDP", 1, 1, 0, sizes[:1]), DDP_COLLECTIVE, source
    scale = zstd_scale(run, results)
    if scale < 1:
        sizes = tuple(round(b * scale) for b in sizes)
        source += f", x {scale:.3f} (measured zstd)"
    pattern = CommPattern(run["label"], run["H"], run["F"], run["tau"], sizes)
    return pattern, OURS_COLLECTIVE, source


def bandwidths(results: dict) -> list[float]:
    bench = results["meta"].get("bench") or {}
    return sorted({*ALWAYS_MBPS, *(float(b) for b in bench.get("bandwidths_mbps") or [])})


def _latency_ms(results: dict) -> float:
    bench = results["meta"].get("bench") or {}
    for v in (bench.get("latency_ms"), (results.get("utilization") or {}).get("latency_ms")):
        if is_number(v):
            return float(v)
    return DEFAULT_LATENCY_MS


def _variants(run: dict) -> list[tuple[str, str, float]]:
    """(row key, label, hidden share of a step) for each row a run gets: DDP twice, without and
    with its all-reduce overlapped with the backward pass (torch DDP's buckets; the paper's 2/3
    of a step, as `utilization.extrapolate` assumes), the other runs once, not overlapped (our
    engine sends after the step)."""
    rows = [(run["id"], run["label"], 0.0)]
    if run["method"] == "ddp":
        rows.append((run["id"] + OVERLAP_SUFFIX, run["label"] + OVERLAP_LABEL, DDP_HIDE_FRACTION))
    return rows


def view(results: dict, override_s: float | None = None) -> dict:
    """The `wallclock` section of results.json, from a validated results dict.

    `override_s`: compute seconds per step for every run; None = `meta.bench.wallclock_step_s`
    (0 or absent: measured). Rows and comparisons are keyed by row key: the run id, and the DDP
    run's id + OVERLAP_SUFFIX for its overlapped twin.
    """
    meta = results["meta"]
    if override_s is None:
        override_s = float((meta.get("bench") or {}).get("wallclock_step_s") or 0.0)
    steps = int(meta["steps"])
    tokens_per_step = meta["tokens_per_run"] / steps
    latency = _latency_ms(results)
    rows: list[dict] = []
    comparisons: list[dict] = []
    for m in group_counts(results):
        ddp = baseline(results, m)
        runs = ([ddp] if ddp else []) + runs_for(results, m)
        for mbps in bandwidths(results):
            mine = []
            for r in runs:
                step_s, step_source = step_time(r, results, override_s)
                pattern, collective, pay_source = pattern_for(r, results)
                for key, label, hide in _variants(r):
                    lt = link_time(
                        pattern,
                        islands=m,
                        steps=steps,
                        step_s=step_s,
                        mbps=mbps,
                        latency_ms=latency,
                        collective=collective,
                        hide_s=hide * step_s,
                    )
                    mine.append(
                        {
                            "mbps": mbps,
                            "groups": m,
                            "key": key,
                            "run_id": r["id"],
                            "label": label,
                            "method": r["method"],
                            "derived": bool(r.get("derived_from")),
                            "step_s": step_s,
                            "step_s_source": step_source,
                            "collective": collective,
                            "hide_s": hide * step_s,
                            "payload_bytes": list(pattern.payload_bytes),
                            "payload_source": pay_source,
                            "utilization": lt.utilization,
                            "s_per_step": lt.s_per_step,
                            "finish_s": lt.wall_s,
                            # (wall-clock s, loss, tokens) per eval point
                            "points": [
                                [p[0] * lt.s_per_step, p[3], p[1]] for p in r["eval_history"]
                            ],
                        }
                    )
            rows += mine
            for name, t in comparison_times([x["finish_s"] for x in mine]):
                comparisons.append(
                    {
                        "mbps": mbps,
                        "groups": m,
                        "name": name,
                        "t_s": t,
                        "loss": {x["key"]: loss_at(x["points"], t) for x in mine},
                        "tokens": {
                            x["key"]: min(t / x["s_per_step"], steps) * tokens_per_step
                            for x in mine
                        },
                    }
                )
    return {
        "latency_ms": latency,
        "steps": steps,
        "step_s_override": override_s,
        "ddp_hide_fraction": DDP_HIDE_FRACTION,
        "rows": rows,
        "comparisons": comparisons,
    }


def targets(wc: dict, results: dict) -> list[dict]:
    """Issue 16: each Streaming 4-bit run (its loss curve once: derived rows left out) beats DDP
    at equal wall-clock on 25 Mbit/s, at the time the fastest run of its M finishes; against
    DDP without and with its all-reduce overlapped (two targets). value = its loss - DDP's loss
    there (< 0 = beats); met None when either has no loss at that time."""
    out = []
    for m in group_counts(results):
        ddp = baseline(results, m)
        cmp = next(
            (
                c
                for c in wc["comparisons"]
                if c["groups"] == m and c["mbps"] == TARGET_MBPS and c["name"].startswith("fast")
            ),
            None,
        )
        if ddp is None or cmp is None:
            continue
        for r in runs_for(results, m):
            if r["method"] != "streaming" or r.get("codec") != "e3m0" or r.get("derived_from"):
                continue
            for key, label, _ in _variants(ddp):
                mine, theirs = cmp["loss"].get(r["id"]), cmp["loss"].get(key)
                value = None if mine is None or theirs is None else mine - theirs
                missing = [x for x, v in ((r["label"], mine), (label, theirs)) if v is None]
                why = f" (not evaluated: no eval point of {' or '.join(missing)} by then)"
                out.append(
                    {
                        "what": f"{r['label']} at M={m}: lower eval loss than {label} at equal "
                        f"wall-clock on {TARGET_MBPS:g} Mbit/s (at {cmp['t_s']:.0f} s, when the "
                        f"fastest run finishes){why if missing else ''}",
                        "value": value,
                        "target": 0.0,
                        "met": None if value is None else value < 0,
                        "kind": "wallclock",
                    }
                )
    return out


def with_step_s(results: dict, step_s: float) -> dict:
    """A copy of `results` whose view (and its targets) is computed with `step_s` compute seconds
    per inner step for every run (0 = measured): the user's own hardware, asked of a saved bench
    output (`streamloco bench --report-only DIR --bench.wallclock_step_s=S`)."""
    out = copy.deepcopy(results)
    out["meta"].setdefault("bench", {})["wallclock_step_s"] = step_s
    return augment(out)


def augment(results: dict) -> dict:
    """A copy of `results` with the `wallclock` section and its targets computed from the runs.

    Always computed again (it is derived data, cheap, and deterministic): a results.json from
    before the view gains it, and one from an older version of it shows the current one. Other
    targets are kept; the input is not modified.
    """
    out = copy.deepcopy(results)
    out["wallclock"] = view(out)
    kept = [t for t in out.get("targets") or [] if t.get("kind") != "wallclock"]
    out["targets"] = [*kept, *targets(out["wallclock"], out)]
    return out

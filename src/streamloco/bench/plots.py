"""The report's plots as PNG bytes: loss vs tokens, loss vs bytes, utilization vs bandwidth.

matplotlib is imported lazily, inside the functions, and only its object-oriented API is used
(`matplotlib.figure.Figure`, rendered by Agg when saved as PNG): no display, no pyplot state,
nothing changed for a caller that uses pyplot itself.
"""

from __future__ import annotations

import io
from typing import Any

from streamloco.bench.formatting import DERIVED_MARK, num
from streamloco.bench.schema import baseline, ddp_step_bytes, group_counts, runs_for

DPI = 120


def _figure(ncols: int, height: float = 4.2, width: float = 5.6):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, ncols, sharey=True, squeeze=False)[0]
    return fig, list(axes)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _colours(results: dict) -> dict[str, Any]:
    """One colour per run id, stable across the subplots and the two loss plots; DDP in black."""
    from matplotlib import colormaps

    palette = colormaps["tab10"].colors
    colours: dict[str, Any] = {}
    k = 0
    for r in results["runs"]:
        if r["method"] == "ddp":
            colours[r["id"]] = "black"
        else:
            colours[r["id"]] = palette[k % len(palette)]
            k += 1
    return colours


def _style(r: dict) -> dict:
    return {"linestyle": "--" if r.get("derived_from") else "-", "marker": ".", "linewidth": 1.5}


def plot_loss_vs_tokens(results: dict) -> bytes:
    """PNG: one subplot per M, eval loss vs tokens (all groups) for DDP and that M's runs.

    Derived rows are left out: their loss curve is the one of the run they derive from.
    """
    from matplotlib.ticker import EngFormatter

    ms = group_counts(results)
    colours = _colours(results)
    fig, axes = _figure(len(ms))
    for ax, m in zip(axes, ms, strict=True):
        ddp = baseline(results, m)
        for r in ([ddp] if ddp else []) + runs_for(results, m):
            if r.get("derived_from"):
                continue
            pts = r["eval_history"]
            ax.plot(
                [p[1] for p in pts],
                [p[3] for p in pts],
                color=colours[r["id"]],
                label=r["label"],
                **_style(r),
            )
        ax.set_title(f"M = {m} worker groups")
        ax.set_xlabel("tokens trained (all groups together)")
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    axes[0].set_ylabel("eval loss (nats/token)")
    fig.suptitle(f"Eval loss at equal tokens ({results['meta']['preset']} preset)")
    return _png(fig)


def plot_loss_vs_bytes(results: dict) -> bytes:
    """PNG: one subplot per M, eval loss vs cumulative bytes sent + received per group (log x).

    DDP's curve is step x its per-step bf16 ring all-reduce bytes for that M. Derived rows are
    drawn (dashed): the same losses at their own bytes.
    """
    from matplotlib.ticker import EngFormatter

    ms = group_counts(results)
    colours = _colours(results)
    fig, axes = _figure(len(ms))
    for ax, m in zip(axes, ms, strict=True):
        ddp = baseline(results, m)
        if ddp is not None:
            per_step = ddp_step_bytes(ddp, m, "bf16")
            pts = [(p[0] * per_step, p[3]) for p in ddp["eval_history"] if p[0] * per_step > 0]
            ax.plot(
                [x for x, _ in pts],
                [y for _, y in pts],
                color=colours[ddp["id"]],
                label="DDP (bf16 all-reduce)",
                **_style(ddp),
            )
        for r in runs_for(results, m):
            pts = [(p[2], p[3]) for p in r["eval_history"] if p[2] is not None and p[2] > 0]
            ax.plot(
                [x for x, _ in pts],
                [y for _, y in pts],
                color=colours[r["id"]],
                label=r["label"] + (f" {DERIVED_MARK}" if r.get("derived_from") else ""),
                **_style(r),
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(EngFormatter(unit="B"))
        ax.set_title(f"M = {m} worker groups")
        ax.set_xlabel("bytes sent + received per group (cumulative, log scale)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    axes[0].set_ylabel("eval loss (nats/token)")
    fig.suptitle(
        f"Eval loss vs communication ({results['meta']['preset']} preset; "
        f"{DERIVED_MARK} dashed = loss of a lossless-equivalent run)"
    )
    return _png(fig)


def plot_loss_vs_wallclock(results: dict) -> bytes:
    """PNG: eval loss vs wall-clock on the modelled link, one column per bandwidth, one row per
    M; dotted vertical lines at the comparison times. Derived rows are drawn dashed."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    from streamloco.bench.formatting import duration
    from streamloco.bench.wallclock import ROUND_S

    wc = results["wallclock"]
    rows, cmps = wc["rows"], wc["comparisons"]
    bws = sorted({r["mbps"] for r in rows})
    ms = sorted({r["groups"] for r in rows})
    colours = _colours(results)
    fig = Figure(figsize=(5.6 * len(bws), 4.2 * len(ms)), dpi=DPI, layout="constrained")
    grid = fig.subplots(len(ms), len(bws), sharey=True, squeeze=False)
    for i, m in enumerate(ms):
        for j, mbps in enumerate(bws):
            ax = grid[i][j]
            for r in rows:
                if (r["mbps"], r["groups"]) != (mbps, m):
                    continue
                ax.plot(
                    [p[0] for p in r["points"]],
                    [p[1] for p in r["points"]],
                    color=colours.get(r.get("key", r["run_id"]), "grey"),
                    label=r["label"] + (f" {DERIVED_MARK}" if r.get("derived") else ""),
                    # dashed: a derived row; dotted: DDP overlapped with its backward pass
                    linestyle="--"
                    if r.get("derived")
                    else ":"
                    if r.get("key", r["run_id"]) != r["run_id"]
                    else "-",
                    marker=".",
                    linewidth=1.5,
                )
            for c in cmps:
                if (c["mbps"], c["groups"]) == (mbps, m):
                    ax.axvline(c["t_s"], color="grey", linestyle=":", linewidth=1)
            ax.set_xlim(left=0)
            # ticks at round durations (30 s, 2 min, 1 h, ...), about five per panel
            tick = next((t for t in ROUND_S if t >= ax.get_xlim()[1] / 6), ROUND_S[-1])
            ax.xaxis.set_major_locator(MultipleLocator(tick))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: duration(x)))
            ax.set_title(f"{num(mbps)} Mbit/s, M = {m} worker groups")
            ax.set_xlabel("wall-clock on the link (modelled)")
            ax.grid(True, alpha=0.3)
        grid[i][0].set_ylabel("eval loss (nats/token)")
    # one legend under the panels (colours are per run, the same in every panel): inside a
    # panel it would hide the curves, which cross every corner
    legend: dict[str, Any] = {}
    for ax in (a for row in grid for a in row):
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    fig.legend(
        list(legend.values()),
        list(legend),
        loc="outside lower center",
        ncols=min(3, len(legend)),
        fontsize="small",
    )
    fig.suptitle(
        f"Eval loss at equal wall-clock ({results['meta']['preset']} preset; dotted = "
        "comparison times)"
    )
    return _png(fig)


def plot_utilization(results: dict) -> bytes:
    """PNG: compute utilization vs bandwidth (log x); model as lines, measured as markers."""
    from matplotlib import colormaps
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, PercentFormatter

    util = results["utilization"]
    rows = util["rows"]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    palette = colormaps["tab10"].colors
    fig, (ax,) = _figure(1, height=4.5, width=7.0)
    for k, v in enumerate(variants):
        colour = palette[k % len(palette)]
        mine = sorted((r for r in rows if r["variant"] == v), key=lambda r: r["mbps"])
        model = [(r["mbps"], r["model"] * 100) for r in mine if r["model"] is not None]
        measured = [(r["mbps"], r["measured"] * 100) for r in mine if r["measured"] is not None]
        ax.plot([x for x, _ in model], [y for _, y in model], "-", color=colour, label=v)
        ax.plot(
            [x for x, _ in measured],
            [y for _, y in measured],
            "o",
            color=colour,
            markersize=7,
            markeredgecolor="black",
            markeredgewidth=0.6,
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.set_ylim(0, 105)
    ax.yaxis.set_major_formatter(PercentFormatter())
    ax.set_xlabel("bandwidth between groups (Mbit/s, log scale)")
    ax.set_ylabel("compute utilization (compute time / wall time)")
    title = f"Compute utilization vs bandwidth, {util['groups']} groups"
    if util.get("latency_ms") is not None:
        title += f", {num(util['latency_ms'])} ms latency"
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    handles = ax.get_legend_handles_labels()[0]
    handles += [
        Line2D([], [], color="grey", linestyle="-", label="model"),
        Line2D([], [], color="grey", marker="o", linestyle="", label="measured"),
    ]
    ax.legend(handles=handles, fontsize="small", loc="best")
    return _png(fig)


def plot_sweep(results: dict) -> bytes:
    """PNG: the size sweep's gap (Streaming vs DDP eval loss, %) against parameters, log x."""
    sweep = results["sweep"]
    points = sorted(sweep["points"], key=lambda p: p["params"])
    fig, (ax,) = _figure(1)
    xs = [p["params"] for p in points]
    ax.plot(xs, [100 * p["gap"] for p in points], marker="o", color="tab:blue")
    for p in points:
        ax.annotate(
            p["size"],
            (p["params"], 100 * p["gap"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("eval loss gap vs DDP (%)")
    ax.set_title(f"{points[0]['streaming_label']}, M = {sweep['groups']}, equal tokens")
    ax.grid(True, alpha=0.3)
    return _png(fig)

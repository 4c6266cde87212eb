"""The bench report as markdown: a header, one table per M, targets, equal wall-clock,
utilization, extrapolation.

Reads a validated results dict (`streamloco.bench.schema`) and returns text; the plots it links
to are made by `streamloco.bench.plots` and written by `streamloco.bench.report.write_report`.
"""

from __future__ import annotations

from streamloco.bench.formatting import (
    DASH,
    DERIVED_MARK,
    duration,
    human_bytes,
    loss_str,
    num,
    pct,
    signed_pct,
    times,
)
from streamloco.bench.schema import (
    baseline,
    ddp_step_bytes,
    group_counts,
    is_number,
    runs_for,
    validate,
)
from streamloco.bench.wallclock import SPREAD_WARNING, augment


def _table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> list[str]:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(header), "| " + " | ".join(rule) + " |", *(line(r) for r in rows)]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _kv(d: dict) -> str:
    parts = []
    for k, v in d.items():
        if k == "params" and is_number(v):
            v = f"{v:,.0f}"
        parts.append(f"{k} {v}")
    return ", ".join(parts)


def markdown(results: dict, images: dict[str, str] | None = None) -> str:
    """The report as markdown; `images` maps a plot name (see PLOT_FILES) to a relative path.
    The equal-wall-clock view is derived from the runs where results.json lacks it."""
    validate(results)
    results = augment(results)
    images = dict(images or {})
    out: list[str] = []
    out += _header(results)
    out += _run_tables(results)
    for name, title in (
        ("loss_vs_tokens", "Eval loss vs tokens"),
        ("loss_vs_bytes", "Eval loss vs bytes exchanged per group"),
    ):
        if name in images:
            out += [f"![{title}]({images.pop(name)})", ""]
    out += _targets(results)
    out += _sweep(results, images.pop("sweep", None))
    out += _wallclock(results, images.pop("loss_vs_wallclock", None))
    out += _utilization(results, images.pop("utilization", None))
    out += _extrapolation(results)
    if images:  # plots this report has no section for
        out += ["## Other plots", ""]
        for name, rel in images.items():
            out += [f"![{name}]({rel})", ""]
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"


def _header(results: dict) -> list[str]:
    meta = results["meta"]
    started = f", started {meta['started_at']}" if meta.get("started_at") else ""
    lines = [
        f"# streamloco bench: `{meta['preset']}` preset",
        "",
        f"`{meta['command']}`{started}; the whole bench took {duration(meta['wall_s'])}.",
        "",
        f"- machine: {_kv(meta['machine'])}",
        f"- model: {_kv(meta['model'])}",
        f"- every run: {meta['steps']:,} steps x {meta['global_batch']:,} sequences per step "
        f"(all groups together) = {meta['tokens_per_run']:,} tokens",
        f"- languages: {', '.join(meta['languages'])}",
    ]
    for key in ("inner", "outer"):
        if meta.get(key):
            lines.append(f"- {key} optimizer: {_kv(meta[key])}")
    return [*lines, ""]


_RUN_COLUMNS = (
    "bytes/group",
    "x fewer vs DDP bf16",
    "x fewer vs DDP fp32",
    "peak bytes/sync",
    "wall clock",
    "tokens/s",
)


def _run_tables(results: dict) -> list[str]:
    langs = list(results["meta"]["languages"])
    header = ["run", "eval loss", "vs DDP", *langs, *_RUN_COLUMNS]
    out = ["## Eval loss and bytes at equal tokens", ""]
    for m in group_counts(results):
        ddp = baseline(results, m)
        runs = runs_for(results, m)
        rows = [] if ddp is None else [_ddp_row(ddp, m, langs, results["meta"]["steps"])]
        rows += [_run_row(r, langs) for r in runs]
        out += [f"### M = {m} worker groups", "", *_table(header, rows), ""]
        out += _table_notes(results, m, ddp, runs)
    return out


def _ddp_row(ddp: dict, m: int, langs: list[str], steps: int) -> list[str]:
    """DDP's loss, with the bytes a bf16 ring all-reduce across M groups would move."""
    bf16 = ddp_step_bytes(ddp, m, "bf16")
    fp32 = ddp_step_bytes(ddp, m, "fp32")
    return [
        f"**{ddp['label']}**",
        loss_str(ddp["final_eval_loss"]),
        "baseline",
        *(_lang_cell(ddp, lang) for lang in langs),
        human_bytes(bf16 * steps),
        times(1.0),
        times(fp32 / bf16 if bf16 else None),
        human_bytes(bf16),
        duration(ddp["wall_s"]),
        num(ddp["tokens_per_s"]),
    ]


def _lang_cell(r: dict, lang: str) -> str:
    """Nats per token, and bits per byte after a slash where the run measured it (results
    written before bits per byte existed have none)."""
    bpb = r.get("eval_bpb_by_lang", {}).get(lang)
    loss = loss_str(r["eval_by_lang"].get(lang), 3)
    return loss if bpb is None else f"{loss} / {bpb:.3f}"


def _run_row(r: dict, langs: list[str]) -> list[str]:
    return [
        r["label"] + (DERIVED_MARK if r.get("derived_from") else ""),
        loss_str(r["final_eval_loss"]),
        signed_pct(r["loss_gap_vs_ddp"]),
        *(_lang_cell(r, lang) for lang in langs),
        human_bytes(r["bytes_per_group"]),
        times(r["ratio_vs_ddp_bf16"]),
        times(r["ratio_vs_ddp_fp32"]),
        human_bytes(r["peak_sync_bytes"]),
        duration(r["wall_s"]),
        num(r["tokens_per_s"]),
    ]


def _table_notes(results: dict, m: int, ddp: dict | None, runs: list[dict]) -> list[str]:
    """What the DDP row is, which rows are derived and from what, and how the columns are made."""
    steps = results["meta"]["steps"]
    if ddp is not None:
        out = [
            f"DDP row: loss from the run `{ddp['id']}` ({_plural(ddp['groups'], 'group')}, "
            f"the same tokens); its bytes are what a ring all-reduce of bf16 gradients "
            f"across {m} groups would move per group over {steps:,} steps (peak = one step).",
            "",
        ]
    else:
        out = [f"No DDP baseline for M = {m}: the vs-DDP columns come from the runs alone.", ""]
    labels = {r["id"]: r["label"] for r in results["runs"]}
    for r in runs:
        if r.get("derived_from"):
            out += [
                f"{DERIVED_MARK} {r['label']}: the loss columns are those of "
                f"{labels[r['derived_from']]} (`{r['derived_from']}`), a lossless-equivalent "
                "run; the bytes are this variant's own.",
                "",
            ]
    return [
        *out,
        "vs DDP = (loss - DDP loss) / DDP loss; a language's cell is its eval loss in nats per "
        "token / in bits per byte (the one to compare across languages); bytes/group = sent + "
        "received, mean over groups; peak = the most one group sent + received in one sync "
        "round.",
        "",
    ]


def _targets(results: dict) -> list[str]:
    targets = results.get("targets") or []
    if not targets:
        return []
    out = ["## Targets", ""]
    for t in targets:
        mark = {True: "✅ met", False: "❌ missed", None: "… not evaluated"}[t["met"]]
        out.append(f"- {mark}: {t['what']} (value {num(t['value'])}, target {num(t['target'])})")
    return [*out, ""]


def _sweep(results: dict, image: str | None) -> list[str]:
    """DDP vs Streaming at M groups, per model size, same tokens: does the gap shrink?"""
    sweep = results.get("sweep") or {}
    points = sweep.get("points") or []
    if not points:
        return []
    out = [
        "## The gap against model size",
        "",
        f"DDP against {points[0]['streaming_label']} at M = {sweep['groups']}, every size on the "
        f"same {sweep['tokens']:,} tokens (so tokens per parameter fall as the model grows).",
        "",
    ]
    body = [
        [
            p["size"],
            f"{p['params']:,}",
            f"{p['tokens_per_param']:.1f}",
            loss_str(p["ddp_loss"]),
            loss_str(p["streaming_loss"]),
            signed_pct(p["gap"]),
        ]
        for p in points
    ]
    out += _table(
        ["size", "parameters", "tokens/param", "DDP", "Streaming", "gap"],
        body,
        ["l", "r", "r", "r", "r", "r"],
    )
    out.append("")
    if image:
        out += [f"![The gap against model size]({image})", ""]
    return out


def _wallclock(results: dict, image: str | None) -> list[str]:
    """The equal-wall-clock view (`streamloco.bench.wallclock`): one table per link and M."""
    wc = results.get("wallclock") or {}
    rows = wc.get("rows") or []
    if not rows:
        return []
    override = wc["step_s_override"]
    step = (
        f"{num(override)} s per inner step for every run (bench.wallclock_step_s)"
        if override
        else "each run's measured compute time per inner step (source below the tables)"
    )
    out = [
        "## Equal wall-clock on a slow link",
        "",
        f"The same runs, timed as if each of M islands computed at {step} and exchanged over a "
        f"link of the given bandwidth ({num(wc['latency_ms'])} ms latency): time per step on "
        "the link = compute time / utilization, the utilization from the analytic model "
        "(`bench/utilization.py`) over the whole run with the run's own H, F, tau and payload "
        "sizes. DDP = M islands all-reducing bf16 gradients every step with a ring (torch DDP), "
        "sent after the step, and (second DDP row) overlapped with "
        f"{wc.get('ddp_hide_fraction', 0):.0%} of the step (the backward pass); the other "
        "methods use our transport's all-gather after the step. Eval losses are compared at equal "
        "wall-clock: when the fastest run of that M finishes its tokens, and at the largest "
        "round duration (1, 2, 5 ... s, min, h) within 90% of that; interpolated between eval "
        f"points, never extrapolated ({DASH} = no eval point yet at that time).",
        "",
    ]
    cmps = wc["comparisons"]
    for key in dict.fromkeys((r["mbps"], r["groups"]) for r in rows):
        mbps, m = key
        mine = [r for r in rows if (r["mbps"], r["groups"]) == key]
        at = [c for c in cmps if (c["mbps"], c["groups"]) == key]
        header = ["run", "compute s/step", "s/step on link", "utilization", "all tokens in"]
        for c in at:
            header += [f"tokens at {duration(c['t_s'])}", f"loss at {duration(c['t_s'])}"]
        body = []
        for r in mine:
            line = [
                r["label"] + (DERIVED_MARK if r.get("derived") else ""),
                num(r["step_s"]),
                num(r["s_per_step"]),
                pct(r["utilization"]),
                duration(r["finish_s"]),
            ]
            for c in at:
                line += [num(c["tokens"].get(r["key"])), loss_str(c["loss"].get(r["key"]))]
            body.append(line)
        out += [f"### {num(mbps)} Mbit/s, M = {m} worker groups", "", *_table(header, body), ""]
        names = "; ".join(f"{duration(c['t_s'])} = {c['name']}" for c in at)
        out += [f"Comparison times: {names}.", ""]
    out += _step_sources(rows, override)
    if image:
        out += [f"![Eval loss vs wall-clock per bandwidth]({image})", ""]
    return out


def _step_sources(rows: list[dict], override: float) -> list[str]:
    """Where each compute time per step comes from, and a warning where the measured ones of
    one M differ widely (on a shared machine that is mostly load, not the method)."""
    sources = dict.fromkeys((r["label"], r["step_s_source"]) for r in rows)
    if len({src for _, src in sources}) == 1:
        out = [f"Compute time per step: {next(iter(sources))[1]}, every run.", ""]
    else:
        out = ["Compute time per step from:", "", *(f"- {lb}: {src}" for lb, src in sources), ""]
    if override:
        return out
    for m in dict.fromkeys(r["groups"] for r in rows):
        steps = {r["label"]: r["step_s"] for r in rows if r["groups"] == m}
        spread = max(steps.values()) / min(steps.values())
        if spread > SPREAD_WARNING:
            out += [
                f"At M = {m} the step times differ {spread:.2f}x ({num(min(steps.values()))} to "
                f"{num(max(steps.values()))} s). Every island computes the same inner steps "
                "whatever the method, so on a shared machine most of that is load: to compare at "
                "one step time, rebuild the report with `streamloco bench --report-only DIR "
                "--bench.wallclock_step_s=S`.",
                "",
            ]
    return out


def _utilization(results: dict, image: str | None) -> list[str]:
    util = results.get("utilization") or {}
    rows = util.get("rows") or []
    if not rows:
        return []
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    bandwidths = sorted({r["mbps"] for r in rows})
    cell = {(r["variant"], r["mbps"]): r for r in rows}
    out = ["## Compute utilization vs bandwidth", ""]
    facts = [f"{util['groups']} worker groups"]
    if util.get("latency_ms") is not None:
        facts.append(f"{num(util['latency_ms'])} ms latency")
    if util.get("step_s") is not None:
        facts.append(f"{num(util['step_s'])} s per inner step")
    if util.get("steps"):
        facts.append(
            "steps per variant: " + ", ".join(f"{k} {v}" for k, v in util["steps"].items())
        )
    out += [
        "; ".join(facts) + ". Utilization = compute time / wall time; *measured* on emulated links "
        "(" + DASH + " = not measured), *model* from the analytical model.",
        "",
    ]
    # each variant's compute time per step, from its own unlimited-link run (the model's input)
    per_step = {r["variant"]: r.get("step_s") for r in rows}
    header = ["variant", "s/step"]
    for b in bandwidths:
        header += [f"{num(b)} Mbit/s measured", f"{num(b)} Mbit/s model"]
    body = []
    for v in variants:
        line = [v, num(per_step[v]) if per_step[v] is not None else DASH]
        for b in bandwidths:
            r = cell.get((v, b))
            line += [pct(r["measured"]) if r else "", pct(r["model"]) if r else ""]
        body.append(line)
    out += _table(header, body)
    out.append("")
    if image:
        out += [f"![Compute utilization vs bandwidth]({image})", ""]
    return out


def _extrapolation(results: dict) -> list[str]:
    extra = results.get("extrapolation") or {}
    rows = extra.get("rows") or []
    assumptions = extra.get("assumptions") or {}
    if not rows and not assumptions:
        return []
    out = ["## Extrapolation to larger models", ""]
    if assumptions:
        out.append("Assumptions:")
        out += [f"- {k}: {v}" for k, v in assumptions.items()]
        out.append("")
    if rows:
        body = []
        for r in rows:
            paper = r["gbps_paper"]
            ratio = f"{r['gbps_model'] / paper:.2f}" if paper else DASH
            body.append([r["size"], r["variant"], num(r["gbps_model"]), num(paper), ratio])
        out += _table(
            ["size", "variant", "model Gbit/s", "paper Gbit/s", "model / paper"],
            body,
            ["l", "l", "r", "r", "r"],
        )
        out.append("")
    return out

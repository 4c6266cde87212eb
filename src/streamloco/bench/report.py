"""Turn a `streamloco bench` results dict (results.json, version 1) into results.md and plots.

Pure: the input is the dict as loaded from JSON, the output is files in one directory, each
written atomically (`streamloco.atomic`), plots first and results.md last, so a results.md that
exists belongs to a complete report. matplotlib is imported lazily, inside the plot functions,
and only its object-oriented API is used (`matplotlib.figure.Figure`, rendered by Agg when saved
as PNG): no display, no pyplot state, nothing changed for a caller that uses pyplot itself.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamloco.atomic import atomic_write_bytes

VERSION = 1
REPORT_MD = "results.md"
PLOT_FILES = {
    "loss_vs_tokens": "loss_vs_tokens.png",
    "loss_vs_bytes": "loss_vs_bytes.png",
    "utilization": "utilization.png",
}
METHODS = ("ddp", "diloco", "streaming")
DPI = 120
DASH = "—"  # a cell with no value
DERIVED_MARK = "†"

# ---------------------------------------------------------------------------------------------
# validation


class _Checker:
    """Collects every problem as ``path: what is wrong`` so one error names them all."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def fail(self, path: str, problem: str) -> None:
        self.errors.append(f"{path}: {problem}")

    def get(self, obj: dict, key: str, path: str, kind: str, *, nullable: bool = False) -> Any:
        """`obj[key]` if present and of `kind`; records a problem and returns None otherwise."""
        where = f"{path}.{key}" if path else key
        if key not in obj:
            self.fail(where, "missing")
            return None
        value = obj[key]
        if value is None:
            if not nullable:
                self.fail(where, f"expected {_KIND_NAMES[kind]}, got null")
            return None
        if not _KINDS[kind](value):
            self.fail(where, f"expected {_KIND_NAMES[kind]}, got {_show(value)}")
            return None
        return value

    def opt(self, obj: dict, key: str, path: str, kind: str) -> Any:
        """Like `get` for a key that may be absent or null."""
        return self.get(obj, key, path, kind, nullable=True) if key in obj else None


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_KINDS: dict[str, Callable[[Any], bool]] = {
    "number": _is_number,
    "int": _is_int,
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "dict": lambda v: isinstance(v, dict),
    "list": lambda v: isinstance(v, list),
}
_KIND_NAMES = {
    "number": "a number",
    "int": "an integer",
    "str": "a string",
    "bool": "true or false",
    "dict": "an object",
    "list": "a list",
}


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def validate(results: dict) -> None:
    """Raise ValueError naming every missing or invalid key path (e.g. ``runs[3].final_eval_loss``).

    Checks what the report reads (not every key the bench writes): types, nulls only where the
    schema allows them, run ids unique, `derived_from` naming a run, and each DDP baseline's
    per-step bytes for every M it is the baseline of.
    """
    if not isinstance(results, dict):
        raise ValueError(f"results: expected an object, got {type(results).__name__}")
    c = _Checker()
    if "version" not in results:
        raise ValueError(f"version: missing (this report reads results.json version {VERSION})")
    if results["version"] != VERSION:
        raise ValueError(
            f"version: expected {VERSION}, got {_show(results['version'])} "
            "(this report reads results.json version 1)"
        )
    meta = c.get(results, "meta", "", "dict")
    if meta is not None:
        _check_meta(c, meta)
    runs = c.get(results, "runs", "", "list")
    if runs is not None:
        _check_runs(c, runs)
    targets = c.opt(results, "targets", "", "list")
    for i, t in enumerate(targets or []):
        p = f"targets[{i}]"
        if not isinstance(t, dict):
            c.fail(p, f"expected an object, got {_show(t)}")
            continue
        c.get(t, "what", p, "str")
        c.get(t, "value", p, "number", nullable=True)
        c.get(t, "target", p, "number", nullable=True)
        c.get(t, "met", p, "bool", nullable=True)
    util = c.opt(results, "utilization", "", "dict")
    if util is not None:
        _check_utilization(c, util)
    extra = c.opt(results, "extrapolation", "", "dict")
    if extra is not None:
        _check_extrapolation(c, extra)
    if c.errors:
        shown = c.errors[:20]
        more = len(c.errors) - len(shown)
        raise ValueError(
            "invalid bench results: "
            + "; ".join(shown)
            + (f"; and {more} more problem(s)" if more else "")
        )


def _check_meta(c: _Checker, meta: dict) -> None:
    for key in ("preset", "command"):
        c.get(meta, key, "meta", "str")
    c.opt(meta, "started_at", "meta", "str")
    for key in ("machine", "model"):
        c.get(meta, key, "meta", "dict")
    for key in ("steps", "global_batch", "tokens_per_run"):
        v = c.get(meta, key, "meta", "int")
        if v is not None and v <= 0:
            c.fail(f"meta.{key}", f"expected a positive integer, got {v}")
    c.get(meta, "wall_s", "meta", "number")
    langs = c.get(meta, "languages", "meta", "list")
    for i, lang in enumerate(langs or []):
        if not isinstance(lang, str):
            c.fail(f"meta.languages[{i}]", f"expected a string, got {_show(lang)}")
    for key in ("inner", "outer"):
        c.opt(meta, key, "meta", "dict")


def _check_runs(c: _Checker, runs: list) -> None:
    if not runs:
        c.fail("runs", "empty (no run to report)")
    ids: dict[str, int] = {}
    baselines: dict[int, int] = {}  # M -> index of the DDP run that is its baseline
    derived: list[tuple[str, str]] = []
    for i, run in enumerate(runs):
        p = f"runs[{i}]"
        if not isinstance(run, dict):
            c.fail(p, f"expected an object, got {_show(run)}")
            continue
        rid = c.get(run, "id", p, "str")
        if rid is not None:
            if rid in ids:
                c.fail(f"{p}.id", f"duplicate id {rid!r} (also runs[{ids[rid]}])")
            ids.setdefault(rid, i)
        c.get(run, "label", p, "str")
        method = c.get(run, "method", p, "str")
        if method is not None and method not in METHODS:
            c.fail(f"{p}.method", f"expected one of {', '.join(METHODS)}, got {method!r}")
        ddp = method == "ddp"
        groups = c.get(run, "groups", p, "int")
        if groups is not None and groups < 1:
            c.fail(f"{p}.groups", f"expected at least 1, got {groups}")
        c.get(run, "final_eval_loss", p, "number")
        by_lang = c.get(run, "eval_by_lang", p, "dict")
        for lang, loss in (by_lang or {}).items():
            if not _is_number(loss):
                c.fail(f"{p}.eval_by_lang.{lang}", f"expected a number, got {_show(loss)}")
        history = c.get(run, "eval_history", p, "list")
        for j, point in enumerate(history or []):
            _check_point(c, f"{p}.eval_history[{j}]", point)
        for key in (
            "bytes_per_group",
            "peak_sync_bytes",
            "ratio_vs_ddp_bf16",
            "ratio_vs_ddp_fp32",
            "loss_gap_vs_ddp",
        ):
            c.get(run, key, p, "number", nullable=True)
        c.get(run, "wall_s", p, "number")
        c.get(run, "tokens_per_s", p, "number")
        source = c.opt(run, "derived_from", p, "str")
        if source is not None:
            derived.append((f"{p}.derived_from", source))
        if ddp:
            _check_ddp_baseline(c, run, p, i, baselines)
    if (
        runs
        and not baselines
        and all(isinstance(r, dict) and r.get("method") == "ddp" for r in runs)
    ):
        c.fail("runs", "nothing to compare: no DiLoCo or Streaming run and no DDP baseline_for")
    for where, source in derived:
        if source not in ids:
            c.fail(where, f"names no run in runs ({source!r})")


def _check_point(c: _Checker, p: str, point: Any) -> None:
    if not isinstance(point, list) or len(point) != 4:
        c.fail(p, f"expected [step, tokens, bytes_per_group or null, loss], got {_show(point)}")
        return
    step, tokens, nbytes, loss = point
    for name, v, ok in (
        ("step", step, _is_number(step)),
        ("tokens", tokens, _is_number(tokens)),
        ("bytes_per_group", nbytes, nbytes is None or _is_number(nbytes)),
        ("loss", loss, _is_number(loss)),
    ):
        if not ok:
            c.fail(p, f"{name} is {_show(v)}, expected a number")


def _check_ddp_baseline(c: _Checker, run: dict, p: str, i: int, baselines: dict) -> None:
    ms = c.get(run, "baseline_for", p, "list") or []
    per_step = c.get(run, "ddp_bytes_per_step", p, "dict") if ms else None
    for k, m in enumerate(ms):
        if not _is_int(m) or m < 2:
            c.fail(f"{p}.baseline_for[{k}]", f"expected a group count >= 2, got {_show(m)}")
            continue
        if m in baselines:
            c.fail(f"{p}.baseline_for[{k}]", f"M={m} already has a baseline (runs[{baselines[m]}])")
        baselines.setdefault(m, i)
        if per_step is None:
            continue
        entry = per_step.get(str(m), per_step.get(m))
        where = f'{p}.ddp_bytes_per_step["{m}"]'
        if not isinstance(entry, dict):
            c.fail(where, "missing" if entry is None else f"expected an object, got {_show(entry)}")
            continue
        for bits in ("bf16", "fp32"):
            c.get(entry, bits, where, "number")


def _check_utilization(c: _Checker, util: dict) -> None:
    rows = c.opt(util, "rows", "utilization", "list")
    if not rows:
        return
    c.get(util, "groups", "utilization", "int")
    c.opt(util, "latency_ms", "utilization", "number")
    c.opt(util, "step_s", "utilization", "number")
    c.opt(util, "steps", "utilization", "dict")
    for i, row in enumerate(rows):
        p = f"utilization.rows[{i}]"
        if not isinstance(row, dict):
            c.fail(p, f"expected an object, got {_show(row)}")
            continue
        c.get(row, "variant", p, "str")
        mbps = c.get(row, "mbps", p, "number")
        if mbps is not None and mbps <= 0:
            c.fail(f"{p}.mbps", f"expected a positive bandwidth, got {mbps}")
        c.get(row, "measured", p, "number", nullable=True)
        c.get(row, "model", p, "number", nullable=True)


def _check_extrapolation(c: _Checker, extra: dict) -> None:
    assumptions = c.opt(extra, "assumptions", "extrapolation", "dict")
    for key, v in (assumptions or {}).items():
        if not (isinstance(v, str) or _is_number(v)):
            c.fail(
                f"extrapolation.assumptions.{key}", f"expected a string or number, got {_show(v)}"
            )
    rows = c.opt(extra, "rows", "extrapolation", "list")
    for i, row in enumerate(rows or []):
        p = f"extrapolation.rows[{i}]"
        if not isinstance(row, dict):
            c.fail(p, f"expected an object, got {_show(row)}")
            continue
        c.get(row, "size", p, "str")
        c.get(row, "variant", p, "str")
        c.get(row, "gbps_model", p, "number")
        c.get(row, "gbps_paper", p, "number", nullable=True)


def read_results(path: Path) -> dict:
    """Load and validate a saved results.json; ValueError (naming the file) if it is unusable."""
    path = Path(path)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path}: not valid JSON (truncated or hand-edited?): {e.msg} at line {e.lineno} "
            f"column {e.colno}"
        ) from None
    try:
        validate(results)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return results


# ---------------------------------------------------------------------------------------------
# formatting


def human_bytes(n: float | None) -> str:
    """Decimal units, three significant digits: 512 B, 858 KB, 13.2 MB, 3.43 GB."""
    if n is None:
        return DASH
    if not math.isfinite(n):
        return str(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            if unit == "B":
                return f"{n:.0f} B"
            digits = 2 if abs(n) < 10 else 1 if abs(n) < 100 else 0
            return f"{n:.{digits}f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def num(v: float | None) -> str:
    """A magnitude-aware number: 1,234 / 222 / 12.3 / 0.43."""
    if v is None:
        return DASH
    if not math.isfinite(v):
        return str(v)
    if abs(v) >= 100 or (float(v).is_integer() and abs(v) < 1e15):
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def times(ratio: float | None) -> str:
    """How many times fewer bytes: 400x, 12.3x, 2x."""
    return DASH if ratio is None else f"{num(ratio)}x"


def signed_pct(frac: float | None) -> str:
    """A relative gap as a signed percentage: +0.80%, -0.31%."""
    if frac is None:
        return DASH
    if not math.isfinite(frac):
        return str(frac)
    return f"{frac * 100:+.2f}%"


def pct(frac: float | None) -> str:
    return DASH if frac is None else f"{frac * 100:.1f}%"


def duration(seconds: float | None) -> str:
    """12.3s, 5m30s, 1h02m."""
    if seconds is None:
        return DASH
    if not math.isfinite(seconds):
        return str(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = round(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def loss_str(v: float | None, digits: int = 4) -> str:
    if v is None:
        return DASH
    return f"{v:.{digits}f}" if math.isfinite(v) else str(v)


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
        if k == "params" and _is_number(v):
            v = f"{v:,.0f}"
        parts.append(f"{k} {v}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# structure shared by the tables and the plots


def _ms(results: dict) -> list[int]:
    """Every M with a table: the group counts of the non-DDP runs and the DDP baselines' Ms."""
    ms = {r["groups"] for r in results["runs"] if r["method"] != "ddp"}
    for r in results["runs"]:
        if r["method"] == "ddp":
            ms.update(r.get("baseline_for") or [])
    return sorted(ms)


def _baseline(results: dict, m: int) -> dict | None:
    for r in results["runs"]:
        if r["method"] == "ddp" and m in (r.get("baseline_for") or []):
            return r
    return None


def _runs_for(results: dict, m: int) -> list[dict]:
    return [r for r in results["runs"] if r["method"] != "ddp" and r["groups"] == m]


def _ddp_step_bytes(ddp: dict, m: int, bits: str) -> float:
    per_step = ddp["ddp_bytes_per_step"]
    return float(per_step.get(str(m), per_step.get(m))[bits])


def _labels(results: dict) -> dict[str, str]:
    return {r["id"]: r["label"] for r in results["runs"]}


# ---------------------------------------------------------------------------------------------
# markdown


def markdown(results: dict, images: dict[str, str] | None = None) -> str:
    """The report as markdown; `images` maps a plot name (see PLOT_FILES) to a relative path."""
    validate(results)
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


def _run_tables(results: dict) -> list[str]:
    meta = results["meta"]
    langs = list(meta["languages"])
    labels = _labels(results)
    steps = meta["steps"]
    header = [
        "run",
        "eval loss",
        "vs DDP",
        *langs,
        "bytes/group",
        "x fewer vs DDP bf16",
        "x fewer vs DDP fp32",
        "peak bytes/sync",
        "wall clock",
        "tokens/s",
    ]
    out = ["## Eval loss and bytes at equal tokens", ""]
    for m in _ms(results):
        ddp = _baseline(results, m)
        runs = _runs_for(results, m)
        out += [f"### M = {m} worker groups", ""]
        rows = []
        if ddp is not None:
            bf16 = _ddp_step_bytes(ddp, m, "bf16")
            fp32 = _ddp_step_bytes(ddp, m, "fp32")
            rows.append(
                [
                    f"**{ddp['label']}**",
                    loss_str(ddp["final_eval_loss"]),
                    "baseline",
                    *(loss_str(ddp["eval_by_lang"].get(lang), 3) for lang in langs),
                    human_bytes(bf16 * steps),
                    times(1.0),
                    times(fp32 / bf16 if bf16 else None),
                    human_bytes(bf16),
                    duration(ddp["wall_s"]),
                    num(ddp["tokens_per_s"]),
                ]
            )
        derived = []
        for r in runs:
            label = r["label"]
            if r.get("derived_from"):
                label += DERIVED_MARK
                derived.append(r)
            rows.append(
                [
                    label,
                    loss_str(r["final_eval_loss"]),
                    signed_pct(r["loss_gap_vs_ddp"]),
                    *(loss_str(r["eval_by_lang"].get(lang), 3) for lang in langs),
                    human_bytes(r["bytes_per_group"]),
                    times(r["ratio_vs_ddp_bf16"]),
                    times(r["ratio_vs_ddp_fp32"]),
                    human_bytes(r["peak_sync_bytes"]),
                    duration(r["wall_s"]),
                    num(r["tokens_per_s"]),
                ]
            )
        out += _table(header, rows)
        out.append("")
        if ddp is not None:
            out.append(
                f"DDP row: loss from the run `{ddp['id']}` ({_plural(ddp['groups'], 'group')}, "
                f"the same tokens); its bytes are what a ring all-reduce of bf16 gradients "
                f"across {m} groups would move per group over {steps:,} steps (peak = one step)."
            )
            out.append("")
        else:
            out += [
                f"No DDP baseline for M = {m}: the vs-DDP columns come from the runs alone.",
                "",
            ]
        for r in derived:
            out.append(
                f"{DERIVED_MARK} {r['label']}: the loss columns are those of "
                f"{labels[r['derived_from']]} (`{r['derived_from']}`), a lossless-equivalent run; "
                "the bytes are this variant's own."
            )
            out.append("")
        out += [
            "vs DDP = (loss - DDP loss) / DDP loss; bytes/group = sent + received, mean over "
            "groups; peak = the most one group sent + received in one sync round.",
            "",
        ]
    return out


def _targets(results: dict) -> list[str]:
    targets = results.get("targets") or []
    if not targets:
        return []
    out = ["## Targets", ""]
    for t in targets:
        mark = {True: "✅ met", False: "❌ missed", None: "… not evaluated"}[t["met"]]
        out.append(f"- {mark}: {t['what']} (value {num(t['value'])}, target {num(t['target'])})")
    return [*out, ""]


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


# ---------------------------------------------------------------------------------------------
# plots


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

    ms = _ms(results)
    colours = _colours(results)
    fig, axes = _figure(len(ms))
    for ax, m in zip(axes, ms, strict=True):
        ddp = _baseline(results, m)
        for r in ([ddp] if ddp else []) + _runs_for(results, m):
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

    ms = _ms(results)
    colours = _colours(results)
    fig, axes = _figure(len(ms))
    for ax, m in zip(axes, ms, strict=True):
        ddp = _baseline(results, m)
        if ddp is not None:
            per_step = _ddp_step_bytes(ddp, m, "bf16")
            pts = [(p[0] * per_step, p[3]) for p in ddp["eval_history"] if p[0] * per_step > 0]
            ax.plot(
                [x for x, _ in pts],
                [y for _, y in pts],
                color=colours[ddp["id"]],
                label="DDP (bf16 all-reduce)",
                **_style(ddp),
            )
        for r in _runs_for(results, m):
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


# ---------------------------------------------------------------------------------------------
# the report


def write_report(results: dict, out_dir: Path) -> list[Path]:
    """Write results.md and the plots into `out_dir`; return the written paths (results.md first).

    Validates first (ValueError, nothing written). Plots are written before results.md, every file
    atomically. Without utilization rows, a utilization.png left by an earlier report is removed so
    the directory never shows a plot the report does not describe.
    """
    validate(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Callable[[dict], bytes]] = {
        "loss_vs_tokens": plot_loss_vs_tokens,
        "loss_vs_bytes": plot_loss_vs_bytes,
    }
    if (results.get("utilization") or {}).get("rows"):
        plots["utilization"] = plot_utilization
    else:
        (out_dir / PLOT_FILES["utilization"]).unlink(missing_ok=True)
    written: list[Path] = []
    for name, plot in plots.items():
        path = out_dir / PLOT_FILES[name]
        atomic_write_bytes(path, plot(results))
        written.append(path)
    md = markdown(results, {name: PLOT_FILES[name] for name in plots})
    report = out_dir / REPORT_MD
    atomic_write_bytes(report, md.encode("utf-8"))
    return [report, *written]

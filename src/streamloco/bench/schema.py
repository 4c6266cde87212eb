"""results.json (version 1): the checks the report runs before it writes anything, and the reads.

The schema is a set of field tables, one per kind of object, checked in table order so that one
error names every problem, each by its key path (``runs[3].final_eval_loss: missing``). It checks
what the report reads, not every key the bench writes. The few checks that span objects (run ids
unique, `derived_from` naming a run, one DDP baseline per M) are written out in `_check_runs`.
The readers at the end (`group_counts`, `baseline`, ...) assume a validated dict.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

VERSION = 1
METHODS = ("ddp", "diloco", "streaming", "sparse")


def is_number(v: Any) -> bool:
    # bool is an int subclass, but a loss of `true` is a bug in the writer, not a number
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "number": (is_number, "a number"),
    "int": (_is_int, "an integer"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "dict": (lambda v: isinstance(v, dict), "an object"),
    "list": (lambda v: isinstance(v, list), "a list"),
    "scalar": (lambda v: isinstance(v, str) or is_number(v), "a string or number"),
}


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# What a field may be: REQUIRED present and of its kind; NULLABLE also null; OPTIONAL also absent.
REQUIRED, NULLABLE, OPTIONAL = "required", "nullable", "optional"
Check = Callable[["_Checker", str, Any], None]  # (checker, key path, a value of the right kind)


class Field(NamedTuple):
    key: str
    kind: str
    presence: str = REQUIRED
    then: Check | None = None  # further checks on a present value of the right kind


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
        ok, name = _KINDS[kind]
        if value is None:
            if not nullable:
                self.fail(where, f"expected {name}, got null")
            return None
        if not ok(value):
            self.fail(where, f"expected {name}, got {_show(value)}")
            return None
        return value

    def fields(self, obj: dict, path: str, table: tuple[Field, ...]) -> dict[str, Any]:
        """Check `obj` against `table`, in order; each key's valid value, or None."""
        got = {}
        for f in table:
            if f.presence == OPTIONAL and f.key not in obj:
                value = None
            else:
                value = self.get(obj, f.key, path, f.kind, nullable=f.presence != REQUIRED)
            if value is not None and f.then is not None:
                f.then(self, f"{path}.{f.key}" if path else f.key, value)
            got[f.key] = value
        return got

    def objects(self, items: list, path: str) -> Iterator[tuple[int, str, dict]]:
        """(index, key path, item) for each item of `items` that is an object; fails the rest."""
        for i, item in enumerate(items):
            where = f"{path}[{i}]"
            if isinstance(item, dict):
                yield i, where, item
            else:
                self.fail(where, f"expected an object, got {_show(item)}")


def _bound(ok: Callable[[Any], bool], problem: str) -> Check:
    """Fails with `problem` (``{}`` filled with the value) unless `ok(value)`."""

    def check(c: _Checker, where: str, value: Any) -> None:
        if not ok(value):
            c.fail(where, problem.format(value))

    return check


def _each(kind: str) -> Check:
    """Every item of a list (``where[i]``) or value of an object (``where.key``) is of `kind`."""
    ok, name = _KINDS[kind]

    def check(c: _Checker, where: str, value: list | dict) -> None:
        listed = isinstance(value, list)
        for k, item in enumerate(value) if listed else value.items():
            if not ok(item):
                c.fail(
                    f"{where}[{k}]" if listed else f"{where}.{k}",
                    f"expected {name}, got {_show(item)}",
                )

    return check


def _object_of(table: tuple[Field, ...]) -> Check:
    """The value is an object that matches `table`."""
    return lambda c, where, value: c.fields(value, where, table)


def _objects_of(table: tuple[Field, ...]) -> Check:
    """Every item of the list is an object that matches `table`."""

    def check(c: _Checker, where: str, items: list) -> None:
        for _, p, item in c.objects(items, where):
            c.fields(item, p, table)

    return check


def _points(c: _Checker, where: str, history: list) -> None:
    for j, point in enumerate(history):
        p = f"{where}[{j}]"
        if not isinstance(point, list) or len(point) != 4:
            c.fail(p, f"expected [step, tokens, bytes_per_group or null, loss], got {_show(point)}")
            continue
        step, tokens, nbytes, loss = point
        for name, v, ok in (
            ("step", step, is_number(step)),
            ("tokens", tokens, is_number(tokens)),
            ("bytes_per_group", nbytes, nbytes is None or is_number(nbytes)),
            ("loss", loss, is_number(loss)),
        ):
            if not ok:
                c.fail(p, f"{name} is {_show(v)}, expected a number")


_POSITIVE = _bound(lambda v: v > 0, "expected a positive integer, got {}")
_META = (
    Field("preset", "str"),
    Field("command", "str"),
    Field("started_at", "str", OPTIONAL),
    Field("machine", "dict"),
    Field("model", "dict"),
    Field("steps", "int", then=_POSITIVE),
    Field("global_batch", "int", then=_POSITIVE),
    Field("tokens_per_run", "int", then=_POSITIVE),
    Field("wall_s", "number"),
    Field("languages", "list", then=_each("str")),
    Field("inner", "dict", OPTIONAL),
    Field("outer", "dict", OPTIONAL),
)
# a run's fields after its id (the id is checked by hand: its uniqueness spans the runs)
_RUN = (
    Field("label", "str"),
    Field(
        "method",
        "str",
        then=_bound(METHODS.__contains__, f"expected one of {', '.join(METHODS)}, got {{!r}}"),
    ),
    Field("groups", "int", then=_bound(lambda v: v >= 1, "expected at least 1, got {}")),
    Field("final_eval_loss", "number"),
    Field("eval_by_lang", "dict", then=_each("number")),
    Field("eval_bpb_by_lang", "dict", OPTIONAL, then=_each("number")),
    Field("eval_history", "list", then=_points),
    Field("bytes_per_group", "number", NULLABLE),
    Field("peak_sync_bytes", "number", NULLABLE),
    Field("ratio_vs_ddp_bf16", "number", NULLABLE),
    Field("ratio_vs_ddp_fp32", "number", NULLABLE),
    Field("loss_gap_vs_ddp", "number", NULLABLE),
    Field("wall_s", "number"),
    Field("tokens_per_s", "number"),
    Field("derived_from", "str", OPTIONAL),
)
_TARGET = (
    Field("what", "str"),
    Field("value", "number", NULLABLE),
    Field("target", "number", NULLABLE),
    Field("met", "bool", NULLABLE),
)
# read only when there are rows: without them the report has no utilization section
_UTILIZATION = (
    Field("groups", "int"),
    Field("latency_ms", "number", OPTIONAL),
    Field("step_s", "number", OPTIONAL),
    Field("steps", "dict", OPTIONAL),
)
_UTILIZATION_ROW = (
    Field("variant", "str"),
    Field("mbps", "number", then=_bound(lambda v: v > 0, "expected a positive bandwidth, got {}")),
    Field("measured", "number", NULLABLE),
    Field("model", "number", NULLABLE),
)
_EXTRAPOLATION_ROW = (
    Field("size", "str"),
    Field("variant", "str"),
    Field("gbps_model", "number"),
    Field("gbps_paper", "number", NULLABLE),
)
_EXTRAPOLATION = (
    Field("assumptions", "dict", OPTIONAL, then=_each("scalar")),
    Field("rows", "list", OPTIONAL, then=_objects_of(_EXTRAPOLATION_ROW)),
)
_NONNEG = _bound(lambda v: v >= 0, "expected a number >= 0, got {}")
_POSITIVE_NUMBER = _bound(lambda v: v > 0, "expected a positive number, got {}")


def _wallclock_points(c: _Checker, where: str, points: list) -> None:
    for j, point in enumerate(points):
        if not (isinstance(point, list) and len(point) == 3 and all(map(is_number, point))):
            c.fail(f"{where}[{j}]", f"expected [seconds, loss, tokens], got {_show(point)}")


def _losses(c: _Checker, where: str, value: dict) -> None:
    for k, v in value.items():
        if v is not None and not is_number(v):
            c.fail(f"{where}.{k}", f"expected a number or null, got {_show(v)}")


# the equal-wall-clock view (issue 16, `streamloco.bench.wallclock`): derived from the runs, so
# a results.json without it still validates and the report computes it
_WALLCLOCK_ROW = (
    Field("mbps", "number", then=_POSITIVE_NUMBER),
    Field("groups", "int", then=_POSITIVE),
    Field("key", "str", OPTIONAL),  # the row's key in the comparisons (run id, or a twin's)
    Field("run_id", "str"),
    Field("label", "str"),
    Field("method", "str"),
    Field("derived", "bool", OPTIONAL),
    Field("step_s", "number", then=_POSITIVE_NUMBER),
    Field("step_s_source", "str"),
    Field("utilization", "number", then=_POSITIVE_NUMBER),
    Field("s_per_step", "number", then=_POSITIVE_NUMBER),
    Field("finish_s", "number", then=_NONNEG),
    Field("points", "list", then=_wallclock_points),
)
_WALLCLOCK_COMPARISON = (
    Field("mbps", "number", then=_POSITIVE_NUMBER),
    Field("groups", "int", then=_POSITIVE),
    Field("name", "str"),
    Field("t_s", "number", then=_NONNEG),
    Field("loss", "dict", then=_losses),
    Field("tokens", "dict", then=_each("number")),
)
_WALLCLOCK = (
    Field("latency_ms", "number", then=_NONNEG),
    Field("steps", "int", then=_POSITIVE),
    Field("step_s_override", "number", then=_NONNEG),
    Field("rows", "list", then=_objects_of(_WALLCLOCK_ROW)),
    Field("comparisons", "list", then=_objects_of(_WALLCLOCK_COMPARISON)),
)

_SWEEP_POINT = (
    Field("size", "str"),
    Field("params", "number", then=_bound(lambda v: v > 0, "expected a positive count, got {}")),
    Field("tokens_per_param", "number"),
    Field("ddp_loss", "number"),
    Field("streaming_loss", "number"),
    Field("gap", "number"),
    Field("streaming_label", "str"),
)
_SWEEP = (
    Field("groups", "number"),
    Field("H", "number"),
    Field("tokens", "number"),
    Field("points", "list", then=_objects_of(_SWEEP_POINT)),
)


def _check_utilization(c: _Checker, where: str, util: dict) -> None:
    rows = c.fields(util, where, (Field("rows", "list", OPTIONAL),))["rows"]
    if rows:
        c.fields(util, where, _UTILIZATION)
        _objects_of(_UTILIZATION_ROW)(c, f"{where}.rows", rows)


def _check_runs(c: _Checker, where: str, runs: list) -> None:
    if not runs:
        c.fail(where, "empty (no run to report)")
    ids: dict[str, int] = {}
    baselines: dict[int, int] = {}  # M -> index of the DDP run that is its baseline
    derived: list[tuple[str, str]] = []
    for i, p, run in c.objects(runs, where):
        rid = c.get(run, "id", p, "str")
        if rid is not None:
            if rid in ids:
                c.fail(f"{p}.id", f"duplicate id {rid!r} (also runs[{ids[rid]}])")
            ids.setdefault(rid, i)
        got = c.fields(run, p, _RUN)
        if got["derived_from"] is not None:
            derived.append((f"{p}.derived_from", got["derived_from"]))
        if got["method"] == "ddp":
            _check_ddp_baseline(c, run, p, i, baselines)
    if (
        runs
        and not baselines
        and all(isinstance(r, dict) and r.get("method") == "ddp" for r in runs)
    ):
        c.fail(where, "nothing to compare: no DiLoCo or Streaming run and no DDP baseline_for")
    for at, source in derived:
        if source not in ids:
            c.fail(at, f"names no run in runs ({source!r})")


def _check_ddp_baseline(c: _Checker, run: dict, p: str, i: int, baselines: dict) -> None:
    ms = c.get(run, "baseline_for", p, "list") or []
    per_step = c.get(run, "ddp_bytes_per_step", p, "dict") if ms else None
    for k, m in enumerate(ms):
        if not _is_int(m) or m < 1:  # M=1: the one-group DiLoCo run's baseline
            c.fail(f"{p}.baseline_for[{k}]", f"expected a group count >= 1, got {_show(m)}")
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
        c.fields(entry, where, (Field("bf16", "number"), Field("fp32", "number")))


_RESULTS = (
    Field("meta", "dict", then=_object_of(_META)),
    Field("runs", "list", then=_check_runs),
    Field("targets", "list", OPTIONAL, then=_objects_of(_TARGET)),
    Field("utilization", "dict", OPTIONAL, then=_check_utilization),
    Field("extrapolation", "dict", OPTIONAL, then=_object_of(_EXTRAPOLATION)),
    Field("sweep", "dict", OPTIONAL, then=_object_of(_SWEEP)),
    Field("wallclock", "dict", OPTIONAL, then=_object_of(_WALLCLOCK)),
)


def _check_wallclock_ids(c: _Checker, results: dict) -> None:
    """Every wall-clock row names a run (checked after both sections' own tables)."""
    wc, runs = results.get("wallclock"), results.get("runs")
    rows = wc.get("rows") if isinstance(wc, dict) else None
    if not isinstance(rows, list) or not isinstance(runs, list):
        return
    ids = {r.get("id") for r in runs if isinstance(r, dict)}
    for i, row in enumerate(rows):
        rid = row.get("run_id") if isinstance(row, dict) else None
        if isinstance(rid, str) and rid not in ids:
            c.fail(f"wallclock.rows[{i}].run_id", f"names no run in runs ({rid!r})")


def validate(results: dict) -> None:
    """Raise ValueError naming every missing or invalid key path (e.g. ``runs[3].final_eval_loss``).

    Checks what the report reads (not every key the bench writes): types, nulls only where the
    schema allows them, run ids unique, `derived_from` naming a run, and each DDP baseline's
    per-step bytes for every M it is the baseline of.
    """
    if not isinstance(results, dict):
        raise ValueError(f"results: expected an object, got {type(results).__name__}")
    if "version" not in results:
        raise ValueError(f"version: missing (this report reads results.json version {VERSION})")
    if results["version"] != VERSION:
        raise ValueError(
            f"version: expected {VERSION}, got {_show(results['version'])} "
            "(this report reads results.json version 1)"
        )
    c = _Checker()
    c.fields(results, "", _RESULTS)
    _check_wallclock_ids(c, results)
    if c.errors:
        shown = c.errors[:20]
        more = len(c.errors) - len(shown)
        raise ValueError(
            "invalid bench results: "
            + "; ".join(shown)
            + (f"; and {more} more problem(s)" if more else "")
        )


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
# reading a validated results dict: the structure the tables and the plots share


def group_counts(results: dict) -> list[int]:
    """Every M with a table: the group counts of the non-DDP runs and the DDP baselines' Ms."""
    ms = {r["groups"] for r in results["runs"] if r["method"] != "ddp"}
    for r in results["runs"]:
        if r["method"] == "ddp":
            ms.update(r.get("baseline_for") or [])
    return sorted(ms)


def baseline(results: dict, m: int) -> dict | None:
    """The DDP run that is the baseline for M groups, if any."""
    for r in results["runs"]:
        if r["method"] == "ddp" and m in (r.get("baseline_for") or []):
            return r
    return None


def runs_for(results: dict, m: int) -> list[dict]:
    """The DiLoCo and Streaming runs with M groups, in results order."""
    return [r for r in results["runs"] if r["method"] != "ddp" and r["groups"] == m]


def ddp_step_bytes(ddp: dict, m: int, bits: str) -> float:
    """Bytes one group sends + receives in one DDP step at M groups (`bits`: bf16 or fp32)."""
    per_step = ddp["ddp_bytes_per_step"]
    return float(per_step.get(str(m), per_step.get(m))[bits])

"""Turn a `streamloco bench` results dict (results.json, version 1) into results.md and plots.

Pure: the input is the dict as loaded from JSON, the output is files in one directory, each
written atomically (`streamloco.atomic`), plots first and results.md last, so a results.md that
exists belongs to a complete report.

The work is split by concern: `schema` checks and reads results.json, `formatting` writes
numbers, `markdown` writes the text and `plots` the PNGs. This module only puts them in one
directory; `markdown` and `read_results` are re-exported here for the CLI and the bench runner.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from streamloco.atomic import atomic_write_bytes
from streamloco.bench.markdown import markdown
from streamloco.bench.plots import (
    plot_loss_vs_bytes,
    plot_loss_vs_tokens,
    plot_loss_vs_wallclock,
    plot_sweep,
    plot_utilization,
)
from streamloco.bench.schema import read_results, validate
from streamloco.bench.wallclock import augment

__all__ = ["PLOT_FILES", "REPORT_MD", "markdown", "read_results", "write_report"]

REPORT_MD = "results.md"
PLOT_FILES = {
    "loss_vs_tokens": "loss_vs_tokens.png",
    "loss_vs_bytes": "loss_vs_bytes.png",
    "utilization": "utilization.png",
    "sweep": "sweep.png",
    "loss_vs_wallclock": "loss_vs_wallclock.png",
}


def write_report(results: dict, out_dir: Path) -> list[Path]:
    """Write results.md and the plots into `out_dir`; return the written paths (results.md first).

    Validates first (ValueError, nothing written). Plots are written before results.md, every file
    atomically. Without utilization rows (or sweep points), a utilization.png (sweep.png) left by an
    earlier report is removed so the directory never shows a plot the report does not describe.
    The equal-wall-clock view is derived from the runs, here
    (`streamloco.bench.wallclock.augment`), so a results.json written before it existed gains
    it; the file itself is not changed.
    """
    validate(results)
    results = augment(results)
    validate(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Callable[[dict], bytes]] = {
        "loss_vs_tokens": plot_loss_vs_tokens,
        "loss_vs_bytes": plot_loss_vs_bytes,
    }
    # an optional section's plot: drawn when it has rows, else an old one is removed
    for name, plot, section, key in (
        ("loss_vs_wallclock", plot_loss_vs_wallclock, "wallclock", "rows"),
        ("utilization", plot_utilization, "utilization", "rows"),
        ("sweep", plot_sweep, "sweep", "points"),
    ):
        if (results.get(section) or {}).get(key):
            plots[name] = plot
        else:
            (out_dir / PLOT_FILES[name]).unlink(missing_ok=True)
    written: list[Path] = []
    for name, plot in plots.items():
        path = out_dir / PLOT_FILES[name]
        atomic_write_bytes(path, plot(results))
        written.append(path)
    md = markdown(results, {name: PLOT_FILES[name] for name in plots})
    report = out_dir / REPORT_MD
    atomic_write_bytes(report, md.encode("utf-8"))
    return [report, *written]

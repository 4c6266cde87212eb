"""How the report writes a number: bytes, ratios, gaps, percentages, durations, losses.

Shared by the markdown tables and the plots; `None` (a value the bench did not measure) is
written as `DASH` everywhere, and a non-finite number as itself (``nan``, ``inf``), never hidden.
"""

from __future__ import annotations

import math

DASH = "—"  # a cell with no value
DERIVED_MARK = "†"  # a row whose loss is that of another, lossless-equivalent run


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

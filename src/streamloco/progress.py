"""Console progress bars that stay readable in logs (Ray jobs, CI) as well as in a terminal."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(
    total: int | None = None, *, desc: str, unit: str, disable: bool = False, initial: int = 0
) -> tqdm:
    # In a log a bar that redraws 10x a second floods it with carriage returns: every 10 s there.
    interactive = sys.stderr.isatty()
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        dynamic_ncols=True,
        disable=disable,
        initial=initial,
        mininterval=0.1 if interactive else 10.0,
    )

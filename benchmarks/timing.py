"""Shared timing helper for the benchmark scripts (run them from the repo root)."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall-clock seconds of `repeats` calls of fn (noisy machines: the median, not min)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process, its threads and its reaped child processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def wall_and_cpu(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds per `cpu_seconds`) of one call of fn.

    CPU time is what a shared machine cannot steal: on busy cores the wall clock of a parallel
    run stretches, the CPU seconds it needs do not. Child processes count once they are reaped
    (a process pool that shuts down inside fn is)."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, cpu_seconds() - c0


def medians(runs: list[tuple[float, ...]]) -> tuple[float, ...]:
    """Column-wise medians of per-run tuples (e.g. `wall_and_cpu` results)."""
    return tuple(statistics.median(col) for col in zip(*runs, strict=True))

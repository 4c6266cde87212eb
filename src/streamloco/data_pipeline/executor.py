"""Who runs the encode function over chunks: the `Executor` seam and its local implementation.

The pipeline only needs "map `fn` over items, in input order, a bounded number in flight". An
executor is handed in by the caller, so data_pipeline never imports Ray: the Ray implementation
lives in `streamloco.launcher.ray_executor` and the CLI picks one (`data.executor`).

Contract of ``map_ordered(fn, shared, items)``:

- yields ``fn(shared, item)`` for each item, in input order, whatever order workers finish in;
- reads `items` lazily, with at most ``window`` items submitted and not yet yielded (memory stays
  bounded on a corpus of any size);
- ships `shared` (the tokenizer) to each worker once, not once per item;
- on an error, or when the caller closes the iterator early, cancels the queued work.

`fn` must be a module-level function (it is pickled by reference).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Protocol, TypeVar

S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")
H = TypeVar("H")  # a handle on submitted work: a Future, a Ray ObjectRef


class Executor(Protocol):
    """Maps a function over items in input order with a bounded window (module doc)."""

    def map_ordered(self, fn: Callable[[S, T], R], shared: S, items: Iterable[T]) -> Iterator[R]:
        """``fn(shared, item)`` for each item, in input order."""
        ...


def ordered_window(
    submit: Callable[[T], H],
    result: Callable[[H], R],
    cancel: Callable[[H], object],
    items: Iterable[T],
    window: int,
) -> Iterator[R]:
    """The ordered, bounded loop every executor shares: submit, then yield the oldest result.

    `Pool.imap` would read the whole input ahead (unbounded memory on a big corpus), hence the
    explicit window of at most `window` submitted items.
    """
    pending: deque[H] = deque()
    try:
        for item in items:
            pending.append(submit(item))
            if len(pending) >= window:
                yield result(pending.popleft())
        while pending:
            yield result(pending.popleft())
    finally:
        for handle in pending:  # on an error (or a crash) do not wait for queued work
            cancel(handle)


def default_workers(workers: int | None) -> int:
    """`workers`, or every core of this machine when None."""
    return (os.cpu_count() or 1) if workers is None else workers


# ---- worker side: `shared` set once per process by the pool initializer ----------------------

_WORKER_SHARED: Any = None


def _init_worker(shared: Any) -> None:
    global _WORKER_SHARED
    _WORKER_SHARED = shared


def _call_in_worker(fn: Callable[[Any, T], R], item: T) -> R:
    return fn(_WORKER_SHARED, item)


class LocalExecutor:
    """`workers` processes on this machine (default: all cores); <= 1 runs in this process.

    'spawn': the parent may have started torch threads, forking them is unsafe.
    ProcessPoolExecutor rather than Pool: a worker killed by the OS raises BrokenProcessPool
    instead of hanging the run. At most 2 * workers items are in flight.
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = default_workers(workers)

    def map_ordered(self, fn: Callable[[S, T], R], shared: S, items: Iterable[T]) -> Iterator[R]:
        if self.workers <= 1:
            for item in items:
                yield fn(shared, item)
            return
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(
            self.workers, ctx, initializer=_init_worker, initargs=(shared,)
        ) as pool:

            def submit(item: T) -> Future[R]:
                return pool.submit(_call_in_worker, fn, item)

            yield from ordered_window(submit, Future.result, Future.cancel, items, 2 * self.workers)

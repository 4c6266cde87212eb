"""Tokenization on a Ray cluster: the data pipeline's `Executor` with Ray tasks.

Same contract as `LocalExecutor` (streamloco.data_pipeline.executor): results in input order, at
most 2 * workers tasks in flight, queued tasks cancelled on an error. `shared` (the tokenizer)
goes to the object store once; each task is `ray.remote(num_cpus=1)`, named after `fn`, so
`ray.util.state.list_tasks` shows what ran. The shards are byte-identical to a local run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import ray

from streamloco.data_pipeline.executor import default_workers, ordered_window
from streamloco.launcher.cluster import connect

S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")


class RayExecutor:
    """Ray tasks on whatever cluster `connect()` joins; `workers` (default: the cores of this
    machine) bounds the tasks in flight to 2 * workers."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = default_workers(workers)

    def map_ordered(self, fn: Callable[[S, T], R], shared: S, items: Iterable[T]) -> Iterator[R]:
        connect()  # stays connected after the map: the driver process may use Ray again
        task = ray.remote(num_cpus=1)(fn)
        shared_ref = ray.put(shared)

        def submit(item: T) -> ray.ObjectRef:
            return task.remote(shared_ref, item)

        yield from ordered_window(submit, ray.get, ray.cancel, items, 2 * self.workers)

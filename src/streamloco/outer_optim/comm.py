"""Communication inside one worker group (the fast link), as seen by the engine.

The outer sync is hierarchical: each of a group's K ranks owns 1/K of every fragment. A rank
sends and reduces only its own shard across groups (so the slow link's traffic is spread over the
group's ranks), runs the outer step on that shard, and the new global fragment is then assembled
inside the group with one all-gather over the fast link. `GroupComm` is that all-gather and
nothing else, so the engine stays free of process groups: `SoloComm` for K = 1, `ThreadComm` for
ranks in threads of one process (tests), and the torch.distributed one in workers/dist.py.

Shard bounds are whole codec blocks (see `shard_bounds`), so the quantized values, and therefore
the global parameters, are bit-identical whatever K is.
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod

import torch


def shard_size(numel: int, size: int, block: int) -> int:
    """Elements per rank's shard (whole blocks); the last shards may be shorter or empty."""
    return math.ceil(math.ceil(numel / block) / size) * block


def shard_bounds(numel: int, rank: int, size: int, block: int) -> tuple[int, int]:
    """[lo, hi) of rank's shard of a numel-long fragment: whole blocks, ranks in order."""
    per_rank = shard_size(numel, size, block)
    return min(rank * per_rank, numel), min((rank + 1) * per_rank, numel)


class GroupComm(ABC):
    def __init__(self, rank: int, size: int) -> None:
        if not 0 <= rank < size:
            raise ValueError(f"rank {rank} outside [0, {size})")
        self.rank, self.size = rank, size

    @abstractmethod
    def all_gather(self, shard: torch.Tensor, out: torch.Tensor, shard_len: int) -> None:
        """Write every rank's shard into `out` (1-D) at rank * shard_len.

        `shard` may be shorter than shard_len (the last ranks of a fragment); `out` is exactly as
        long as the fragment, so writes past its end are dropped.
        """


class SoloComm(GroupComm):
    """A group of one rank: its shard is the whole fragment."""

    def __init__(self) -> None:
        super().__init__(0, 1)

    def all_gather(self, shard: torch.Tensor, out: torch.Tensor, shard_len: int) -> None:
        if shard.data_ptr() != out.data_ptr():
            out[: shard.numel()].copy_(shard)


class ThreadHub:
    """Rendezvous for the K `ThreadComm`s of one group (ranks in threads of one process)."""

    def __init__(self, size: int, timeout_s: float = 60.0) -> None:
        self.size, self.timeout_s = size, timeout_s
        self._slots: list[torch.Tensor | None] = [None] * size
        self._barrier = threading.Barrier(size)

    def comm(self, rank: int) -> ThreadComm:
        return ThreadComm(self, rank)


class ThreadComm(GroupComm):
    def __init__(self, hub: ThreadHub, rank: int) -> None:
        super().__init__(rank, hub.size)
        self.hub = hub

    def all_gather(self, shard: torch.Tensor, out: torch.Tensor, shard_len: int) -> None:
        hub = self.hub
        hub._slots[self.rank] = shard.clone()
        hub._barrier.wait(hub.timeout_s)  # every shard is in
        for r, s in enumerate(hub._slots):
            assert s is not None
            lo = min(r * shard_len, out.numel())
            out[lo : lo + s.numel()].copy_(s)
        hub._barrier.wait(hub.timeout_s)  # every rank has read before anyone writes again

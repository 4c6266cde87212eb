"""torch.distributed inside one worker group: rendezvous, backend choice, the engine's GroupComm.

No Ray here: the launcher only tells each rank where rank 0's TCPStore listens. Rank 0 opens the
store on port 0 (the OS picks a free port, so two runs on one node cannot collide) and reports the
port; the other ranks connect to it.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

from streamloco.outer_optim.comm import GroupComm


def choose_backend(requested: str, device: torch.device) -> str:
    """nccl for CUDA tensors, gloo for CPU ones (auto), or what the config asks for."""
    if requested != "auto":
        return requested
    return "nccl" if device.type == "cuda" else "gloo"


def open_store(host: str, rank: int, world: int, port: int, timeout_s: float) -> dist.TCPStore:
    """Rank 0 listens (port 0 = any free port, read back from `store.port`); others connect."""
    return dist.TCPStore(
        host,
        port if rank else 0,
        world,
        is_master=rank == 0,
        timeout=timedelta(seconds=timeout_s),
        wait_for_workers=False,
    )


def init_group(store: dist.Store, rank: int, world: int, backend: str, timeout_s: float) -> None:
    dist.init_process_group(
        backend, store=store, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)
    )


class TorchComm(GroupComm):
    """The engine's all-gather over the group's process group (equal-sized, padded shards)."""

    def __init__(self, device: torch.device) -> None:
        super().__init__(dist.get_rank(), dist.get_world_size())
        self.device = device  # nccl needs CUDA tensors; gloo takes CPU ones

    def all_gather(self, shard: torch.Tensor, out: torch.Tensor, shard_len: int) -> None:
        mine = torch.zeros(shard_len, dtype=out.dtype, device=self.device)
        mine[: shard.numel()].copy_(shard)
        parts = [torch.empty_like(mine) for _ in range(self.size)]
        dist.all_gather(parts, mine)
        out.copy_(torch.cat(parts)[: out.numel()].to(out.device))


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few floats over the group's ranks (one small collective)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()

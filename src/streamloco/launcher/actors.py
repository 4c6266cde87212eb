"""The Ray actor of one rank: a thin shell that builds a `Trainer` and forwards calls to it.

Everything that decides anything lives in workers/ (no Ray there); this file only knows where
the rank runs: its threads, its device, its group's rendezvous and its Ray transport.
"""

from __future__ import annotations

import os
from typing import Any

import ray
import torch

from streamloco.config import Config, from_dict


class RankActor:
    def __init__(self, cfg: dict[str, Any], group: int, rank: int, coordinator) -> None:
        self.cfg: Config = from_dict(cfg)
        cl = self.cfg.cluster
        # Ray reserved cpus_per_rank cores for this actor: use exactly those (two actors on two
        # cores each starting one thread per core would halve each other's speed).
        threads = max(1, int(cl.cpus_per_rank))
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        self.group, self.rank, self.ranks = group, rank, cl.ranks_per_group
        self.coordinator = coordinator
        self.store = None
        self.trainer = None
        from streamloco.workers.trainer import resolve_device

        device = self.cfg.train.device
        if device == "auto":
            device = "cuda" if cl.gpus_per_rank > 0 and torch.cuda.is_available() else "cpu"
        self.device = resolve_device(device)
        if self.device.type == "cuda":  # Ray sets CUDA_VISIBLE_DEVICES: our GPU is index 0
            self.device = torch.device("cuda", 0)
            torch.cuda.set_device(self.device)

    def where(self) -> dict[str, Any]:
        ctx = ray.get_runtime_context()
        return {
            "node": ray.util.get_node_ip_address(),
            "node_id": ctx.get_node_id(),
            "labels": {str(k): str(v) for k, v in ctx.get_node_labels().items()},
            "pid": os.getpid(),
            "device": str(self.device),
            "threads": torch.get_num_threads(),
        }

    def open_store(self) -> int:
        """Rank 0: listen for the group's rendezvous on a free port; returns the port."""
        from streamloco.workers.dist import open_store

        host = ray.util.get_node_ip_address()
        self.store = open_store(host, 0, self.ranks, 0, self.cfg.cluster.start_timeout_s)
        return self.store.port

    def setup(self, host: str | None, port: int | None) -> None:
        """Join the group's process group (K > 1) and build the trainer."""
        from streamloco.launcher.ray_transport import RayTransport
        from streamloco.outer_optim.transport import LinkModel
        from streamloco.workers.trainer import Placement, Trainer

        cfg, comm = self.cfg, None
        if self.ranks > 1:
            from streamloco.workers import dist

            timeout = cfg.cluster.start_timeout_s
            store = self.store or dist.open_store(host, self.rank, self.ranks, port, timeout)
            backend = dist.choose_backend(cfg.cluster.backend, self.device)
            dist.init_group(store, self.rank, self.ranks, backend, cfg.transport.timeout_s)
            comm = dist.TorchComm(self.device)
        link = LinkModel.from_mbps(cfg.transport.bandwidth_mbps, cfg.transport.latency_ms)
        transport = RayTransport(self.coordinator, self.group, cfg.train.groups, self.rank, link)
        self.trainer = Trainer(
            cfg, Placement(self.group, self.rank, self.ranks), transport, comm, self.device
        )

    # ---- forwarded to the trainer ------------------------------------------------------------

    def model_state(self):
        return self.trainer.model_state()

    def load_initial(self, state) -> None:
        self.trainer.load_initial(state)

    def train(self, until: int):
        return self.trainer.train(until)

    def state_dict(self, engine: bool = True):
        """This rank's checkpoint part; engine=False leaves out the engine state (global
        parameters and outer state), which is equal on every group: the driver takes it from one
        group only, and the others' copies need not cross their links."""
        out = self.trainer.state_dict()  # computed anyway: a collective for K > 1
        if not engine:
            out.pop("engine", None)
        return out

    def load_state_dict(self, step: int, group, engine, rank) -> None:
        self.trainer.load_state_dict(step, group, engine, rank)

    def inject(self, kind: str, value: float = 0.0) -> None:
        self.trainer.inject(kind, value)

    def recovery_state(self):
        return self.trainer.recovery_state()

    def recover(self, state, totals=None) -> int:
        return self.trainer.recover(state, totals)

    def global_state(self):
        return self.trainer.global_state()

    def global_digest(self) -> str:
        """A digest of the global parameters: what the end-of-run check compares, instead of
        moving every group's full parameters to the driver."""
        from streamloco.launcher.islands import state_digest

        return state_digest(self.trainer.global_state())


RemoteRankActor = ray.remote(RankActor)

"""Which island each worker group runs on, checked against the cluster before anything starts.

An island is a set of Ray nodes carrying the same value of one node label (`cluster.island_label`,
set with `ray start --labels island=NAME`). A group is pinned to its island through Ray 2.60's
`bundle_label_selector` on its placement group: every bundle (one per rank) asks for a node with
that label value, and STRICT_PACK keeps the group on one such node (ray/util/placement_group.py;
the raylet only places a bundle on a node whose labels match). Labels rather than custom
resources: a label says *where*, costs no capacity bookkeeping, and is listed by `ray.nodes()`
next to the node's address, so a wrong name can be reported with what the cluster has.

Pure: everything here works on `NodeInfo` lists (built from `ray.nodes()` by the caller) and the
config, so it is tested without Ray.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch

from streamloco.config import Config
from streamloco.launcher.preflight import LaunchError


@dataclass(frozen=True)
class NodeInfo:
    """One alive Ray node as the placement checks need it."""

    node_id: str
    address: str
    labels: dict[str, str]
    cpus: float
    gpus: float

    @classmethod
    def from_ray(cls, node: dict) -> NodeInfo:
        """From one entry of `ray.nodes()` (keys as Ray 2.60 returns them)."""
        res = node.get("Resources", {})
        return cls(
            node_id=str(node["NodeID"]),
            address=str(node.get("NodeManagerAddress", "?")),
            labels={str(k): str(v) for k, v in (node.get("Labels") or {}).items()},
            cpus=float(res.get("CPU", 0.0)),
            gpus=float(res.get("GPU", 0.0)),
        )


def alive_nodes(ray_nodes: list[dict]) -> list[NodeInfo]:
    return [NodeInfo.from_ray(n) for n in ray_nodes if n.get("Alive")]


def describe(nodes: list[NodeInfo]) -> str:
    """The cluster's nodes and their own labels (Ray's `ray.io/*` ones left out), one a line."""
    lines = []
    for n in nodes:
        own = {k: v for k, v in sorted(n.labels.items()) if not k.startswith("ray.io/")}
        shown = ", ".join(f"{k}={v}" for k, v in own.items()) or "no labels"
        lines.append(f"  node {n.node_id[:12]} at {n.address} ({n.cpus:g} CPU): {shown}")
    return "\n".join(lines) or "  (no alive node)"


def assign(cfg: Config, nodes: list[NodeInfo]) -> list[str] | None:
    """The island of each group, or None when groups are not pinned (`cluster.islands = []`).

    Raises LaunchError, listing the cluster's labels, when an island has no node, when "auto"
    finds fewer islands than groups (unless cluster.share_islands), or when no node of an island
    can hold a group (STRICT_PACK: one node must have all K ranks' CPUs and GPUs).
    """
    cl, m = cfg.cluster, cfg.train.groups
    if not cl.islands:
        return None
    key = cl.island_label
    found = sorted({n.labels[key] for n in nodes if key in n.labels})
    if cl.islands == ["auto"]:
        if not found:
            raise LaunchError(
                f'cluster.islands = ["auto"]: no node has the label {key!r} '
                f"(start each node with `ray start --labels {key}=NAME`); the cluster:\n"
                + describe(nodes)
            )
        if len(found) < m and not cl.share_islands:
            raise LaunchError(
                f'cluster.islands = ["auto"]: the cluster has {len(found)} islands {found} for '
                f"train.groups={m} groups; add islands, lower train.groups, or set "
                "cluster.share_islands=true to let groups share one"
            )
        wanted = found
    else:
        wanted = cl.islands
    islands = [wanted[g % len(wanted)] for g in range(m)]
    missing = [i for i in dict.fromkeys(islands) if i not in found]
    if missing:
        raise LaunchError(
            f"cluster.islands: no alive node has {key}={missing[0]}"
            + (f" (nor {', '.join(missing[1:])})" if len(missing) > 1 else "")
            + f"; islands in the cluster: {found or 'none'}; its nodes:\n"
            + describe(nodes)
        )
    _check_capacity(cfg, nodes, islands)
    return islands


def _check_capacity(cfg: Config, nodes: list[NodeInfo], islands: list[str]) -> None:
    """Totals, not what is free now: the reservation itself still waits up to start_timeout_s."""
    cl = cfg.cluster
    k, key = cl.ranks_per_group, cl.island_label
    cpu, gpu = k * cl.cpus_per_rank, k * cl.gpus_per_rank
    for island, count in Counter(islands).items():
        members = [n for n in nodes if n.labels.get(key) == island]
        if cl.placement == "STRICT_PACK":  # a group's ranks share one node
            fits = sum(_fits(n.cpus, n.gpus, cpu, gpu) for n in members)
        else:
            fits = _fits(sum(n.cpus for n in members), sum(n.gpus for n in members), cpu, gpu)
        if fits < count:
            raise LaunchError(
                f"cluster.islands: island {island} holds {count} group(s) of {k} rank(s) x "
                f"{cl.cpus_per_rank:g} CPU{f' + {cl.gpus_per_rank:g} GPU' if gpu else ''} "
                f"({cl.placement}), but its nodes fit {fits}:\n" + describe(members)
            )


def _fits(have_cpu: float, have_gpu: float, cpu: float, gpu: float) -> int:
    """How many groups needing `cpu` CPUs and `gpu` GPUs fit in what a node (or island) has."""
    n = int(have_cpu / cpu + 1e-9)  # Ray's fractional CPUs: 4 x 0.25 fit in 1
    return min(n, int(have_gpu / gpu + 1e-9)) if gpu else n


def selectors(cfg: Config, island: str | None) -> list[dict[str, str]] | None:
    """`bundle_label_selector` for one group's placement group (None: not pinned, as before)."""
    if island is None:
        return None
    return [{cfg.cluster.island_label: island}] * cfg.cluster.ranks_per_group


@dataclass(frozen=True)
class Placement:
    """Where one rank of one group runs, as its actor saw it."""

    group: int
    rank: int
    node_id: str
    address: str
    island: str | None  # the node's island label, None if it has none

    def line(self) -> str:
        where = f"island {self.island}" if self.island is not None else "no island label"
        node = f"node {self.node_id[:12]} ({self.address})"
        return f"group {self.group} rank {self.rank} on {node}, {where}"

    def record(self, step: int) -> dict:
        """The records.jsonl line (`step`: where the run started, so a resume keeps it)."""
        return {"record": "placement", "step": step, **asdict(self)}


def report(placements: list[Placement]) -> list[str]:
    """One console line per group: its ranks' nodes (one, unless the group spans nodes)."""
    out = []
    for g in sorted({p.group for p in placements}):
        mine = [p for p in placements if p.group == g]
        nodes = dict.fromkeys((p.node_id[:12], p.address, p.island) for p in mine)
        where = "; ".join(
            f"node {nid} ({addr}), " + (f"island {isl}" if isl is not None else "no island label")
            for nid, addr, isl in nodes
        )
        out.append(f"group {g} ({len(mine)} rank{'s' * (len(mine) > 1)}): {where}")
    return out


def check_placements(placements: list[Placement], islands: list[str] | None) -> None:
    """Internal invariant: Ray put every rank on a node of its group's island."""
    if islands is None:
        return
    wrong = [p for p in placements if p.island != islands[p.group]]
    if wrong:
        raise LaunchError(
            "cluster.islands: Ray placed "
            + "; ".join(f"{p.line()} (wanted {islands[p.group]})" for p in wrong)
        )


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order: equal digests mean
    bit-identical states (what the end-of-run check needs, in 64 characters instead of the
    parameters)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()

"""The Ray resources of a run: M worker groups x K rank actors in placement groups, and the
round coordinator. Start, replace a dead group in its reserved slots, close everything."""

from __future__ import annotations

from streamloco.config import Config
from streamloco.launcher import islands
from streamloco.launcher.preflight import LaunchError


class WorkerGroups:
    """The actors of M groups x K ranks, and the Ray resources they hold."""

    def __init__(self) -> None:
        self.coordinator = None
        self.pgs: list = []
        self.actors: list[list] = []
        self.generation: list[int] = []  # bumped when a group is replaced
        self.islands: list[str] | None = None  # each group's island; None = not pinned

    def start(self, cfg: Config, run_id: str) -> None:
        """Reserve, start and connect everything; on failure `close` frees what was started."""
        import ray

        from streamloco.launcher.ray_transport import create_coordinator

        cl, m, k = cfg.cluster, cfg.train.groups, cfg.cluster.ranks_per_group
        self.cfg, self.run_id = cfg, run_id
        # Before anything starts: every island has a node that can hold its groups.
        self.islands = islands.assign(cfg, islands.alive_nodes(ray.nodes()))
        bundle = {"CPU": cl.cpus_per_rank} | ({"GPU": cl.gpus_per_rank} if cl.gpus_per_rank else {})
        self.coordinator = create_coordinator(
            f"streamloco-{run_id}",
            m,
            deadline_s=cfg.transport.round_deadline_s or None,
            min_groups=cfg.train.min_groups,
            node_id=ray.get_runtime_context().get_node_id(),  # with the driver, not an island
        )
        self.pgs = [self._reserve(bundle, g) for g in range(m)]
        ready = [pg.ready() for pg in self.pgs]
        done, _ = ray.wait(ready, num_returns=len(ready), timeout=cl.start_timeout_s)
        if len(done) < len(ready):
            pinned = f" on islands {self.islands}" if self.islands else ""
            raise LaunchError(
                f"cluster: could not reserve {m} groups x {k} ranks x {bundle} "
                f"({cl.placement}){pinned} within {cl.start_timeout_s:.0f}s; the cluster has "
                f"{ray.cluster_resources()} in all, {ray.available_resources()} free "
                "(lower cluster.cpus_per_rank / train.groups, or add nodes)"
            )
        self.actors = [[] for _ in range(m)]
        self.generation = [0] * m
        setups = [ref for g in range(m) for ref in self._launch(g)]
        ray.get(setups)

    def _reserve(self, bundle: dict, g: int):
        from ray.util.placement_group import placement_group

        island = self.islands[g] if self.islands else None
        sel = islands.selectors(self.cfg, island)
        strategy = self.cfg.cluster.placement
        k = self.cfg.cluster.ranks_per_group
        if sel is None:  # not pinned: exactly the call made before islands existed
            return placement_group([bundle] * k, strategy=strategy)
        return placement_group([bundle] * k, strategy=strategy, bundle_label_selector=sel)

    def placements(self) -> list[islands.Placement]:
        """Where every rank of every group runs (asks each actor), checked against the islands."""
        import ray

        key = self.cfg.cluster.island_label
        found = []
        for g, grp in enumerate(self.actors):
            for r, w in enumerate(ray.get([a.where.remote() for a in grp])):
                label = w["labels"].get(key)
                found.append(islands.Placement(g, r, w["node_id"], w["node"], label))
        islands.check_placements(found, self.islands)
        return found

    def _launch(self, g: int) -> list:
        """Start group g's K actors in its placement group; returns their setup futures."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from streamloco.launcher.actors import RemoteRankActor

        cl, k = self.cfg.cluster, self.cfg.cluster.ranks_per_group
        gen = self.generation[g]
        self.actors[g] = [
            RemoteRankActor.options(
                num_cpus=cl.cpus_per_rank,
                num_gpus=cl.gpus_per_rank,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self.pgs[g], placement_group_bundle_index=r
                ),
                name=f"streamloco-{self.run_id}-g{g}r{r}" + (f"-{gen}" if gen else ""),
            ).remote(self.cfg.to_dict(), g, r, self.coordinator)
            for r in range(k)
        ]
        # Rendezvous: rank 0 listens on a free port; the other ranks connect to it.
        host = port = None
        if k > 1:
            host = ray.get(self.actors[g][0].where.remote())["node"]
            port = ray.get(self.actors[g][0].open_store.remote())
        return [actor.setup.remote(host, port) for actor in self.actors[g]]

    def replace(self, g: int) -> list:
        """Kill what is left of group g and start new actors (same reserved slots)."""
        import ray

        for actor in self.actors[g]:
            ray.kill(actor)
        self.generation[g] += 1
        return self._launch(g)

    def all(self):
        return [a for grp in self.actors for a in grp]

    def close(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in self.all():
            ray.kill(actor)
        if self.coordinator is not None:
            ray.kill(self.coordinator)
        for pg in self.pgs:
            remove_placement_group(pg)

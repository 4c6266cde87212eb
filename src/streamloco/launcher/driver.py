"""`streamloco train`: M worker groups of K Ray actors each, driven from this process.

The driver joins whatever Ray cluster `ray.init()` finds (RAY_ADDRESS, a `ray start` on this
node, or the job it was submitted in) or starts a local one. It checks everything it can before
any actor starts (config, data, run directory), reserves each group's K slots in a placement
group (one node by default: a group is an island with a fast interconnect), starts the actors,
lets each group's rank 0 open the group's torch.distributed rendezvous, and broadcasts group 0's
initial parameters to every other group.

Then it drives each group in chunks of `train.log_every` steps without a global barrier: a
group's next chunk is queued as soon as its previous one reports, so fast groups never wait for
slow ones except where the algorithm says (an outer apply). Reports carry the metrics; the driver
is the only writer of TensorBoard files and checkpoints (the workers may be on other nodes).
Checkpoints are taken at steps where no fragment is in flight, by queueing `state_dict` on every
actor right after that step's chunk (actor calls run in order, so nothing waits for it).
"""

from __future__ import annotations

import math
import sys
import time
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path

from streamloco.config import Config, from_dict
from streamloco.metrics import MetricsSink, NullSink, TensorBoardSink
from streamloco.outer_optim.schedule import Schedule
from streamloco.results import Collector, RunResult, human
from streamloco.workers.checkpoint import load_latest, save_checkpoint
from streamloco.workers.model import model_args, param_count


class LaunchError(ValueError):
    """Something is wrong before training starts (reported without a traceback)."""


class TrainingFailed(RuntimeError):
    """A worker failed or stalled mid-run; the last checkpoint is intact."""


@dataclass
class Plan:
    """When chunks end and checkpoints are taken."""

    steps: int
    log_every: int
    checkpoints: list[int]

    @classmethod
    def build(cls, cfg: Config, start: int) -> Plan:
        o, t = cfg.outer, cfg.train
        sched = Schedule(o.sync_every, o.fragments, o.overlap, o.schedule)
        points = set()
        every = cfg.run.checkpoint_every
        if every:
            for want in range(every, t.steps, every):
                step = next(s for s in range(want, t.steps + 1) if sched.idle_after(s))
                points.add(step)
        points.add(t.steps)  # the end: finish() has applied everything
        return cls(t.steps, t.log_every, sorted(p for p in points if p > start))

    def next_stop(self, step: int) -> int:
        """The end of the chunk that starts after `step`."""
        nxt = min(step + self.log_every, self.steps)
        return min([nxt, *(c for c in self.checkpoints if c > step)])


def preflight(cfg: Config, run_dir: Path, resume: bool) -> None:
    """Fail before any actor starts: data, tokenizer and run directory."""
    if cfg.data.source == "shards":
        from streamloco.data_pipeline.manifest import load_manifest

        data_dir = Path(cfg.data.dir)
        if not (data_dir / "manifest.json").is_file():
            raise LaunchError(
                f"data.dir: {data_dir} has no manifest.json (run `streamloco data tokenize "
                f"--config ...` first, or point --data.dir at the token shards)"
            )
        manifest = load_manifest(data_dir, verify="size")
        if cfg.model.vocab_size < manifest.tokenizer.vocab_size:
            raise LaunchError(
                f"model.vocab_size: {cfg.model.vocab_size} < the tokenizer's "
                f"{manifest.tokenizer.vocab_size} ({data_dir}/manifest.json)"
            )
    ckpts = run_dir / "checkpoints"
    if not resume and ckpts.is_dir() and any(ckpts.iterdir()):
        raise LaunchError(
            f"run dir {run_dir} already holds checkpoints: continue it with "
            f"`streamloco train --resume {run_dir}` or choose another --run.name"
        )


def _tokenizer_hash(cfg: Config) -> str:
    if cfg.data.source != "shards":
        return ""
    import json

    manifest = json.loads((Path(cfg.data.dir) / "manifest.json").read_text(encoding="utf-8"))
    return str(manifest.get("tokenizer", {}).get("sha256", ""))


class _Groups:
    """The actors of M groups x K ranks, and the Ray resources they hold."""

    def __init__(self) -> None:
        self.coordinator = None
        self.pgs: list = []
        self.actors: list[list] = []

    def start(self, cfg: Config, run_id: str) -> None:
        """Reserve, start and connect everything; on failure `close` frees what was started."""
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from streamloco.launcher.actors import RemoteRankActor
        from streamloco.launcher.ray_transport import create_coordinator

        cl, m, k = cfg.cluster, cfg.train.groups, cfg.cluster.ranks_per_group
        bundle = {"CPU": cl.cpus_per_rank} | ({"GPU": cl.gpus_per_rank} if cl.gpus_per_rank else {})
        self.coordinator = create_coordinator(f"streamloco-{run_id}", m)
        self.pgs = [placement_group([bundle] * k, strategy=cl.placement) for _ in range(m)]
        ready = [pg.ready() for pg in self.pgs]
        done, _ = ray.wait(ready, num_returns=len(ready), timeout=cl.start_timeout_s)
        if len(done) < len(ready):
            raise LaunchError(
                f"cluster: could not reserve {m} groups x {k} ranks x {bundle} "
                f"({cl.placement}) within {cl.start_timeout_s:.0f}s; the cluster has "
                f"{ray.cluster_resources()} in all, {ray.available_resources()} free "
                "(lower cluster.cpus_per_rank / train.groups, or add nodes)"
            )
        cfg_dict = cfg.to_dict()
        for g, pg in enumerate(self.pgs):
            self.actors.append(
                [
                    RemoteRankActor.options(
                        num_cpus=cl.cpus_per_rank,
                        num_gpus=cl.gpus_per_rank,
                        scheduling_strategy=PlacementGroupSchedulingStrategy(
                            pg, placement_group_bundle_index=r
                        ),
                        name=f"streamloco-{run_id}-g{g}r{r}",
                    ).remote(cfg_dict, g, r, self.coordinator)
                    for r in range(k)
                ]
            )
        # Rendezvous: rank 0 of each group listens on a free port; the others connect to it.
        hosts, ports = [None] * m, [None] * m
        if k > 1:
            hosts = ray.get([grp[0].where.remote() for grp in self.actors])
            hosts = [h["node"] for h in hosts]
            ports = ray.get([grp[0].open_store.remote() for grp in self.actors])
        ray.get(
            [
                actor.setup.remote(hosts[g], ports[g])
                for g, grp in enumerate(self.actors)
                for actor in grp
            ]
        )

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


def _connect() -> bool:
    """ray.init() unless already connected; True if this call started the connection."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(log_to_driver=True, configure_logging=False)
    return True


def train(cfg: Config, run_dir: Path, *, resume: bool = False, progress: bool = True) -> RunResult:
    """Run (or continue) the training described by `cfg`; writes into `run_dir`."""
    import ray

    preflight(cfg, run_dir, resume)
    state = None
    if resume:
        found = load_latest(run_dir / "checkpoints")
        if found is None:
            raise LaunchError(f"--resume {run_dir}: no checkpoint in {run_dir / 'checkpoints'}")
        path, state, meta = found
        _check_resumable(cfg, meta, path)
        print(f"streamloco train: resuming from {path} (step {state['step']})", flush=True)
    start = int(state["step"]) if state else 0
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(cfg.to_toml(), encoding="utf-8")

    started = _connect()
    sink: MetricsSink = NullSink()
    groups = _Groups()
    try:
        groups.start(cfg, f"{cfg.run.name}-{uuid.uuid4().hex[:8]}")
        if state is not None:
            _restore(groups, state)
        elif len(groups.all()) > 1:  # every replica starts from group 0's initialization
            init = groups.actors[0][0].model_state.remote()
            ray.get([a.load_initial.remote(init) for a in groups.all()[1:]])
        if cfg.run.tensorboard:
            sink = TensorBoardSink(run_dir / "tb", purge_step=start + 1 if start else None)
            if not start:
                sink.text("config", "```\n" + cfg.to_toml() + "\n```")
                sink.hparams(_hparams(cfg), ["eval/loss", "comm/ratio_vs_ddp_bf16"])
        args = model_args(
            cfg.model.size, cfg.model.vocab_size, cfg.model.seq_len, cfg.model.tie_embeddings
        )
        floor = None
        if cfg.data.source == "synthetic":  # cheap: the floor of the synthetic language
            from streamloco.workers.data_source import build_data_source

            floor = build_data_source(cfg).nll_floor
        collector = Collector(cfg, sink, param_count(args), floor)
        t0 = time.perf_counter()
        _drive(cfg, groups, Plan.build(cfg, start), start, collector, run_dir, progress)
        result = collector.finish(time.perf_counter() - t0)
        for g, grp in enumerate(groups.actors):
            result.groups[g].global_state = ray.get(grp[0].global_state.remote())
        return result
    finally:
        sink.close()
        groups.close()
        if started:
            ray.shutdown()


def _check_resumable(cfg: Config, meta: dict, path: Path) -> None:
    saved = from_dict(tomllib.loads(meta.get("config_toml", "")))
    for key in ("train.groups", "cluster.ranks_per_group", "model.size", "outer.fragments"):
        section, name = key.split(".")
        have = getattr(getattr(cfg, section), name)
        was = getattr(getattr(saved, section), name)
        if have != was:
            raise LaunchError(f"--resume: {key} is {have}, but {path} was written with {was}")
    if cfg.train.steps <= int(meta["step"]):
        raise LaunchError(
            f"--resume: {path} is at step {meta['step']} and train.steps is {cfg.train.steps}: "
            "nothing left to do (raise --train.steps to train further)"
        )


def _restore(groups: _Groups, state: dict) -> None:
    import ray

    engine = ray.put(state["engine"])
    calls = []
    for g, grp in enumerate(groups.actors):
        saved = state["groups"][g]
        group_ref = ray.put(saved["group"])
        for r, actor in enumerate(grp):
            calls.append(
                actor.load_state_dict.remote(state["step"], group_ref, engine, saved["ranks"][r])
            )
    ray.get(calls)


def _hparams(cfg: Config) -> dict:
    keys = {
        "model": ["size", "seq_len", "vocab_size"],
        "train": ["steps", "batch_size", "groups"],
        "inner": ["lr", "warmup_steps"],
        "outer": ["sync_every", "fragments", "overlap", "alpha", "lr", "codec", "zstd_level"],
        "cluster": ["ranks_per_group"],
        "transport": ["bandwidth_mbps"],
    }
    d = cfg.to_dict()
    return {f"{s}.{k}": d[s][k] for s, ks in keys.items() for k in ks}


def _drive(
    cfg: Config,
    groups: _Groups,
    plan: Plan,
    start: int,
    collector: Collector,
    run_dir: Path,
    progress: bool,
) -> None:
    """Queue chunks per group as reports come back; write checkpoints when all parts are in."""
    import ray
    from ray.exceptions import RayError

    m, k = cfg.train.groups, cfg.cluster.ranks_per_group
    pending: dict = {}  # ObjectRef -> (kind, group, rank, step)
    queued = [start] * m  # the step each group's last queued chunk ends at
    parts: dict[int, dict[tuple[int, int], dict]] = {}  # checkpoint step -> parts
    bar = _Progress(cfg, start) if progress else None

    def queue(g: int) -> None:
        stop = plan.next_stop(queued[g])
        for r, actor in enumerate(groups.actors[g]):
            pending[actor.train.remote(stop)] = ("train", g, r, stop)
            if stop in plan.checkpoints:
                pending[actor.state_dict.remote()] = ("state", g, r, stop)
        queued[g] = stop

    for g in range(m):  # two chunks in the queue, so an actor never idles waiting for us
        for _ in range(2):
            if queued[g] < plan.steps:
                queue(g)
    stall = cfg.transport.timeout_s + 120.0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=stall)
        if not ready:
            raise TrainingFailed(
                f"no worker reported for {stall:.0f}s (transport.timeout_s + 120 s); "
                f"waiting on {sorted({(v[0], v[1]) for v in pending.values()})}"
            )
        ref = ready[0]
        kind, g, r, step = pending.pop(ref)
        try:
            value = ray.get(ref)
        except RayError as e:
            ray.get(groups.coordinator.abort.remote(f"group {g} rank {r} failed"))
            raise TrainingFailed(f"group {g} rank {r} failed at step <= {step}: {e}") from None
        if kind == "train":
            collector.add(value)
            if r == 0:
                if bar is not None:
                    bar.update(value, collector)
                if queued[g] < plan.steps:
                    queue(g)
            continue
        parts.setdefault(step, {})[(g, r)] = value
        if len(parts[step]) == m * k:
            _write_checkpoint(cfg, run_dir, step, parts.pop(step))
            if bar is not None:
                bar.note(f"checkpoint at step {step}")
    if bar is not None:
        bar.close()


def _write_checkpoint(cfg: Config, run_dir: Path, step: int, parts: dict) -> Path:
    m, k = cfg.train.groups, cfg.cluster.ranks_per_group
    state = {
        "step": step,
        "engine": parts[(0, 0)]["engine"],
        "groups": [
            {"group": parts[(g, 0)]["group"], "ranks": [parts[(g, r)]["rank"] for r in range(k)]}
            for g in range(m)
        ],
    }
    meta = {
        "config_toml": cfg.to_toml(),
        "tokenizer_sha256": _tokenizer_hash(cfg),
        "groups": m,
        "ranks_per_group": k,
    }
    return save_checkpoint(run_dir / "checkpoints", step, state, meta, cfg.run.keep_checkpoints)


class _Progress:
    """The console bar: slowest group's step, loss, tokens/s, bytes exchanged, next sync."""

    def __init__(self, cfg: Config, start: int) -> None:
        from streamloco.progress import progress_bar

        self.cfg = cfg
        self.bar = progress_bar(cfg.train.steps, desc="train", unit="step", initial=start)
        self.tps: dict[int, float] = {}
        o = cfg.outer
        self.sched = Schedule(o.sync_every, o.fragments, o.overlap, o.schedule)

    def update(self, rep, collector: Collector) -> None:
        if rep.seconds > 0 and rep.tokens:
            self.tps[rep.group] = rep.tokens / rep.seconds
        step = min(collector.steps)
        moved = sum(g.bytes_sent + g.bytes_received for g in collector.groups)
        nxt, frag = self.sched.next_event(step)
        self.bar.set_postfix(
            refresh=False,
            loss=f"{rep.loss:.3f}" if not math.isnan(rep.loss) else "-",
            tok_s=f"{sum(self.tps.values()):,.0f}",
            exchanged=human(moved),
            next_sync=f"f{frag}@{nxt}",
        )
        self.bar.update(step - self.bar.n)

    def note(self, text: str) -> None:
        self.bar.write(text, file=sys.stdout)

    def close(self) -> None:
        self.bar.close()

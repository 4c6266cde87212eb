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
from streamloco.launcher.checkpoint import load_latest, save_checkpoint
from streamloco.launcher.cluster import connect
from streamloco.metrics import MetricsSink, NullSink, TensorBoardSink
from streamloco.outer_optim.schedule import Schedule
from streamloco.records import RecordLog, tag
from streamloco.results import Collector, RunResult, human
from streamloco.workers.model import model_args, param_count


class LaunchError(ValueError):
    """Something is wrong before training starts (reported without a traceback)."""


class TrainingFailed(RuntimeError):
    """A worker failed or stalled mid-run; the last checkpoint is intact."""


@dataclass(frozen=True)
class Fault:
    """A fault drill: at the first report of `group` at or after `step`, do `kind` to it.

    kill: kill the group's rank 0 actor (the group dies); delay: every rank sleeps `value` s per
    inner step from then on (a straggler); nan: NaN into every rank's weights; corrupt: rank 0's
    next payload gets a flipped byte. Parsed from `--inject KIND:GROUP@STEP[=VALUE]`.
    """

    kind: str
    group: int
    step: int
    value: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Fault:
        import re

        m = re.fullmatch(r"(kill|delay|nan|corrupt):(\d+)@(\d+)(?:=([0-9.]+))?", text)
        if not m:
            raise ValueError(
                f"--inject {text!r}: expected KIND:GROUP@STEP[=VALUE], KIND one of kill, delay, "
                "nan, corrupt (e.g. kill:1@60, delay:2@0=0.05)"
            )
        return cls(m[1], int(m[2]), int(m[3]), float(m[4] or 0.0))


@dataclass
class Plan:
    """When chunks end and checkpoints are taken."""

    steps: int
    log_every: int
    checkpoints: list[int]
    schedule: Schedule

    @classmethod
    def build(cls, cfg: Config, start: int) -> Plan:
        t = cfg.train
        sched = Schedule.of(cfg.outer)
        points = set()
        every = cfg.run.checkpoint_every
        if every:
            for want in range(every, t.steps, every):
                step = next(s for s in range(want, t.steps + 1) if sched.idle_after(s))
                points.add(step)
        points.add(t.steps)  # the end: finish() has applied everything
        return cls(t.steps, t.log_every, sorted(p for p in points if p > start), sched)

    def next_stop(self, step: int) -> int:
        """The end of the chunk that starts after `step`: at least log_every steps on (or the
        next checkpoint), moved to a step with no fragment in flight, where a replacement group
        can take over a peer's state."""
        nxt = min([step + self.log_every, self.steps, *(c for c in self.checkpoints if c > step)])
        while nxt < self.steps and not self.schedule.idle_after(nxt):
            nxt += 1
        return nxt


def preflight(cfg: Config, run_dir: Path, resume: bool) -> None:
    """Fail before any actor starts: data, tokenizer and run directory."""
    from streamloco.workers.data_source import check_synthetic

    check_synthetic(cfg)
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
        self.generation: list[int] = []  # bumped when a group is replaced

    def start(self, cfg: Config, run_id: str) -> None:
        """Reserve, start and connect everything; on failure `close` frees what was started."""
        import ray
        from ray.util.placement_group import placement_group

        from streamloco.launcher.ray_transport import create_coordinator

        cl, m, k = cfg.cluster, cfg.train.groups, cfg.cluster.ranks_per_group
        self.cfg, self.run_id = cfg, run_id
        bundle = {"CPU": cl.cpus_per_rank} | ({"GPU": cl.gpus_per_rank} if cl.gpus_per_rank else {})
        self.coordinator = create_coordinator(
            f"streamloco-{run_id}",
            m,
            deadline_s=cfg.transport.round_deadline_s or None,
            min_groups=cfg.train.min_groups,
        )
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
        self.actors = [[] for _ in range(m)]
        self.generation = [0] * m
        setups = [ref for g in range(m) for ref in self._launch(g)]
        ray.get(setups)

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


def train(
    cfg: Config,
    run_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    faults: list[Fault] | tuple[Fault, ...] = (),
) -> RunResult:
    """Run (or continue) the training described by `cfg`; writes into `run_dir`."""
    import ray

    preflight(cfg, run_dir, resume)
    for f in faults:
        if not 0 <= f.group < cfg.train.groups:
            raise LaunchError(f"--inject: group {f.group} outside [0, {cfg.train.groups})")
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

    started = connect()
    sink: MetricsSink = NullSink()
    log = RecordLog(run_dir / "records.jsonl", resume_step=start if state else None)
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
                sink.hparams(_hparams(cfg), [tag("eval_loss"), tag("ratio_vs_ddp")])
        args = model_args(
            cfg.model.size, cfg.model.vocab_size, cfg.model.seq_len, cfg.model.tie_embeddings
        )
        floor = None
        if cfg.data.source == "synthetic":  # cheap: the floor of the synthetic language
            from streamloco.workers.data_source import build_data_source

            floor = build_data_source(cfg).nll_floor
        collector = Collector(cfg, sink, param_count(args), floor, log=log)
        t0 = time.perf_counter()
        plan = Plan.build(cfg, start)
        driver = _Driver(cfg, groups, plan, start, collector, sink, run_dir, progress)
        driver.drills = list(faults)
        driver.run()
        result = collector.finish(time.perf_counter() - t0)
        for g, grp in enumerate(groups.actors):
            result.groups[g].global_state = ray.get(grp[0].global_state.remote())
        return result
    finally:
        sink.close()
        log.close()
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


class _Driver:
    """Queues chunks per group as reports come back, writes checkpoints when all parts are in,
    and replaces a group that died (live recovery from a healthy peer)."""

    def __init__(self, cfg, groups, plan, start, collector, sink, run_dir, progress) -> None:
        self.cfg, self.groups, self.plan, self.collector = cfg, groups, plan, collector
        self.sink, self.run_dir = sink, run_dir
        m = cfg.train.groups
        self.pending: dict = {}  # ObjectRef -> (kind, group, rank, step, generation)
        self.queued = [start] * m  # the step each group's last queued chunk ends at
        self.alive = set(range(m))
        self.parts: dict[int, dict[tuple[int, int], dict]] = {}  # checkpoint step -> parts
        self.replacements = 0
        self.recovering: dict[int, float] = {}  # group -> time its death was noticed
        self.drills: list[Fault] = []
        self.bar = _Progress(cfg, start) if progress else None
        if self.bar is not None:
            collector.say = self.bar.note

    def say(self, text: str) -> None:
        (self.bar.note if self.bar is not None else print)(f"streamloco: {text}")

    def queue(self, g: int) -> None:
        stop = self.plan.next_stop(self.queued[g])
        gen = self.groups.generation[g]
        for r, actor in enumerate(self.groups.actors[g]):
            self.pending[actor.train.remote(stop)] = ("train", g, r, stop, gen)
            if stop in self.plan.checkpoints:
                self.pending[actor.state_dict.remote()] = ("state", g, r, stop, gen)
        self.queued[g] = stop

    def run(self) -> None:
        import ray
        from ray.exceptions import RayError

        for g in range(self.cfg.train.groups):  # two chunks queued: an actor never idles
            for _ in range(2):
                if self.queued[g] < self.plan.steps:
                    self.queue(g)
        stall = self.cfg.transport.timeout_s + 120.0
        while self.pending:
            ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=stall)
            if not ready:
                waiting = sorted({(v[0], v[1]) for v in self.pending.values()})
                raise TrainingFailed(
                    f"no worker reported for {stall:.0f}s (transport.timeout_s + 120 s); "
                    f"waiting on {waiting}"
                )
            ref = ready[0]
            kind, g, r, step, gen = self.pending.pop(ref)
            if gen != self.groups.generation[g]:
                continue  # from a group that has been replaced since
            try:
                value = ray.get(ref)
            except RayError as e:
                self.failed(g, r, step, e)
                continue
            if kind == "train":
                self.on_report(value, g, r)
            elif kind == "state":
                self.on_state(value, g, r, step)
            elif kind == "recovered" and r == 0:
                self.on_recovered(g, value)
        if self.bar is not None:
            self.bar.close()

    def on_report(self, rep, g: int, r: int) -> None:
        self.collector.add(rep)
        if r != 0:
            return
        if g in self.recovering:
            took = time.monotonic() - self.recovering.pop(g)
            self.sink.scalar(tag("recovery_s"), took, rep.step)
            self.say(f"group {g} is training again, {took:.1f}s after it was lost")
        if self.bar is not None:
            self.bar.update(rep, self.collector)
        for fault in [f for f in self.drills if f.group == g and rep.step >= f.step]:
            self.drills.remove(fault)
            self.inject(fault, rep.step)
        if self.queued[g] < self.plan.steps and g in self.alive:
            self.queue(g)

    def inject(self, fault: Fault, step: int) -> None:
        import ray

        self.say(f"drill: {fault.kind} group {fault.group} after step {step}")
        actors = self.groups.actors[fault.group]
        if fault.kind == "kill":
            ray.kill(actors[0])
            return
        for actor in actors if fault.kind in ("delay", "nan") else actors[:1]:
            actor.inject.remote(fault.kind, fault.value)

    def on_state(self, value: dict, g: int, r: int, step: int) -> None:
        parts = self.parts.setdefault(step, {})
        parts[(g, r)] = value
        if len(parts) == self.cfg.train.groups * self.cfg.cluster.ranks_per_group:
            _write_checkpoint(self.cfg, self.run_dir, step, self.parts.pop(step))
            if self.bar is not None:
                self.bar.note(f"checkpoint at step {step}")

    def failed(self, g: int, r: int, step: int, error: Exception) -> None:
        """Group g lost a rank: go on without it, and start a replacement if allowed."""
        import ray

        t = self.cfg.train
        self.alive.discard(g)
        ray.get(self.groups.coordinator.leave.remote(g))
        self.say(f"group {g} rank {r} failed at step <= {step}: {_first_line(error)}")
        self.sink.scalar(tag("groups_alive"), len(self.alive), min(self.collector.steps))
        for dead in [s for s, parts in self.parts.items() if any(k[0] == g for k in parts)]:
            self.parts.pop(dead)
            self.say(f"checkpoint at step {dead} skipped: group {g} failed while writing it")
        if len(self.alive) < t.min_groups or not self.alive:
            ray.get(self.groups.coordinator.abort.remote(f"group {g} rank {r} failed"))
            raise TrainingFailed(
                f"group {g} rank {r} failed at step <= {step}: {_first_line(error)} "
                f"({len(self.alive)} groups left, train.min_groups={t.min_groups})"
            )
        if not t.replace_failed or self.replacements >= t.max_replacements:
            self.say(f"group {g} is not replaced; {len(self.alive)} groups go on")
            return
        self.replacements += 1
        self.recovering[g] = time.monotonic()
        # The replacement joins at the end of the next chunk of the most advanced survivor: no
        # survivor is past that step yet, so no round after it can close without the newcomer.
        peer = max(self.alive, key=lambda h: self.queued[h])
        join = self.plan.next_stop(self.queued[peer])
        while self.queued[peer] < join:
            self.queue(peer)
        ray.get(self.groups.coordinator.join.remote(g, join))
        states = [a.recovery_state.remote() for a in self.groups.actors[peer]]
        setups = self.groups.replace(g)
        gen = self.groups.generation[g]
        for r2, (actor, setup) in enumerate(zip(self.groups.actors[g], setups, strict=True)):
            # Actor calls run in order: setup, then recover from the peer's state, passed as a
            # reference, so it moves from the peer to the newcomer without touching the driver.
            self.pending[setup] = ("setup", g, r2, join, gen)
            self.pending[actor.recover.remote(states[0])] = ("recovered", g, r2, join, gen)
        self.queued[g] = join
        self.say(
            f"starting a replacement for group {g}: it recovers from group {peer} at step {join}"
        )

    def on_recovered(self, g: int, nbytes: int) -> None:
        self.alive.add(g)
        self.sink.scalar(tag("recoveries"), self.replacements, self.queued[g])
        self.sink.scalar(tag("recovery_bytes"), nbytes, self.queued[g])
        self.sink.scalar(tag("groups_alive"), len(self.alive), self.queued[g])
        self.collector.recovered(g, nbytes)
        if self.queued[g] < self.plan.steps and not any(
            v[1] == g and v[0] == "train" for v in self.pending.values()
        ):
            for _ in range(2):
                if self.queued[g] < self.plan.steps:
                    self.queue(g)


def _first_line(error: Exception) -> str:
    lines = [ln for ln in str(error).splitlines() if ln.strip()]
    return lines[-1] if lines else type(error).__name__


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
        self.sched = Schedule.of(cfg.outer)

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

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

import time
import uuid
from pathlib import Path

from streamloco.config import Config
from streamloco.launcher import drills, islands
from streamloco.launcher.checkpoint import load_latest
from streamloco.launcher.cluster import connect
from streamloco.launcher.console import ProgressView
from streamloco.launcher.drills import Fault
from streamloco.launcher.groups import WorkerGroups
from streamloco.launcher.plan import Plan
from streamloco.launcher.preflight import LaunchError, check_resumable, preflight
from streamloco.launcher.run_checkpoint import restore, write_checkpoint
from streamloco.metrics import MetricsSink, NullSink, TensorBoardSink
from streamloco.records import RecordLog, tag
from streamloco.results import Collector, RunResult
from streamloco.workers.model import model_args, param_count


class TrainingFailed(RuntimeError):
    """A worker failed or stalled mid-run; the last checkpoint is intact."""


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
        check_resumable(cfg, meta, path)
        print(f"streamloco train: resuming from {path} (step {state['step']})", flush=True)
    start = int(state["step"]) if state else 0
    # Read here, before any actor starts: a bad directory fails fast, and only the driver needs it.
    init = None
    if cfg.model.init_from and state is None:
        from streamloco.hf.init import load_init_state  # needs the `hf` extra (safetensors)

        init = load_init_state(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(cfg.to_toml(), encoding="utf-8")

    started = connect()
    sink: MetricsSink = NullSink()
    log = RecordLog(run_dir / "records.jsonl", resume_step=start if state else None)
    groups = WorkerGroups()
    try:
        groups.start(cfg, f"{cfg.run.name}-{uuid.uuid4().hex[:8]}")
        placed = groups.placements()
        for line in islands.report(placed):
            print(f"streamloco: {line}", flush=True)
        log.write_lines([p.record(start) for p in placed])
        if state is not None:
            restore(groups, state)
        elif init is not None:  # every replica starts from the given model
            ref = ray.put(init)
            ray.get([a.load_initial.remote(ref) for a in groups.all()])
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
        _fetch_globals(groups, result)
        return result
    finally:
        sink.close()
        log.close()
        groups.close()
        if started:
            ray.shutdown()


def _fetch_globals(groups: WorkerGroups, result: RunResult) -> None:
    """Every group's global parameters for the end-of-run check, moving one copy: group 0's
    parameters, and the others' digests. A group whose digest matches holds bit-identical
    parameters, so it gets group 0's tensors; one that differs is fetched in full (to be seen)."""
    import ray

    ranks0 = [grp[0] for grp in groups.actors]
    digests = ray.get([a.global_digest.remote() for a in ranks0])
    ref = ray.get(ranks0[0].global_state.remote())
    for g, actor in enumerate(ranks0):
        same = digests[g] == digests[0]
        result.groups[g].global_state = ref if same else ray.get(actor.global_state.remote())


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
        self.bar = ProgressView(plan.steps, start, plan.schedule) if progress else None
        if self.bar is not None:
            collector.say = self.bar.note

    def say(self, text: str) -> None:
        (self.bar.note if self.bar is not None else print)(f"streamloco: {text}")

    def queue(self, g: int) -> None:
        stop = self.plan.next_stop(self.queued[g])
        gen = self.groups.generation[g]
        for r, actor in enumerate(self.groups.actors[g]):
            self.pending[actor.train.remote(stop)] = ("train", g, r, stop, gen)
            if stop in self.plan.checkpoints:  # the engine state from group 0 only
                self.pending[actor.state_dict.remote(g == 0)] = ("state", g, r, stop, gen)
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
        self.say(f"drill: {fault.kind} group {fault.group} after step {step}")
        drills.inject(self.groups, fault)

    def on_state(self, value: dict, g: int, r: int, step: int) -> None:
        parts = self.parts.setdefault(step, {})
        parts[(g, r)] = value
        if len(parts) == self.cfg.train.groups * self.cfg.cluster.ranks_per_group:
            write_checkpoint(self.cfg, self.run_dir, step, self.parts.pop(step))
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
            totals = self.collector.totals(g, with_bytes=r2 == 0)
            call = actor.recover.remote(states[0], totals)
            self.pending[call] = ("recovered", g, r2, join, gen)
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

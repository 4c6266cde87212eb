"""M worker groups as threads of one process, joined by the in-process transport.

This is the engine's own test bed and the single-machine smoke run: every group is a full
replica (model, AdamW, data stream, `StreamingEngine`), the exchange goes through `InProcessHub`
(optionally over a simulated slow link), and group 0 evaluates the global parameters. Torch ops
release the GIL, so the groups really do run concurrently on a multi-core CPU.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from streamloco.config import Config
from streamloco.metrics import MemorySink, MetricsSink, NullSink, TensorBoardSink
from streamloco.outer_optim.engine import EngineOptions, StreamingEngine, SyncEvent
from streamloco.outer_optim.transport import InProcessHub, LinkModel
from streamloco.workers.data_source import build_data_source, mean_loss
from streamloco.workers.inner import build_inner_optimizer
from streamloco.workers.model import Transformer, model_args, param_count


@dataclass
class GroupResult:
    train_loss: list[float] = field(default_factory=list)
    bytes_sent: int = 0
    bytes_received: int = 0
    blocked_s: float = 0.0
    quant_rel_error: list[float] = field(default_factory=list)
    global_state: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class SimResult:
    params: int
    groups: list[GroupResult]
    eval_history: list[tuple[int, float]]  # (step, eval loss of the global parameters)
    eval_by_lang: dict[str, float]  # final eval loss per language
    nll_floor: float | None  # the synthetic language's true NLL on the eval batches
    wall_s: float
    tokens: int  # tokens processed by all groups together

    @property
    def final_eval_loss(self) -> float:
        return self.eval_history[-1][1]

    def globals_identical(self) -> bool:
        """True if every group ended with bit-identical global parameters."""
        ref = self.groups[0].global_state
        return all(
            all(torch.equal(ref[k], g.global_state[k]) for k in ref) for g in self.groups[1:]
        )


def ddp_bytes_per_group(numel: int, groups: int, steps: int, bits: int) -> float:
    """Bytes one group sends + receives in a ring all-reduce of every step's gradients.

    A ring all-reduce sends and receives 2(M-1)/M * N*b/8 bytes per rank; this is what a DDP run
    across the same M groups would move for the same number of steps.
    """
    return steps * 2 * 2 * (groups - 1) / groups * numel * bits / 8


def build_model(cfg: Config) -> Transformer:
    """Same seed -> same initialization on every group (DiLoCo starts all replicas equal)."""
    torch.manual_seed(cfg.train.seed)
    args = model_args(
        cfg.model.size, cfg.model.vocab_size, cfg.model.seq_len, cfg.model.tie_embeddings
    )
    return Transformer(args)


def load_global(model: Transformer, global_state: dict[str, torch.Tensor]) -> None:
    """Load the engine's global parameters (named as in named_parameters) into `model`."""
    missing, unexpected = model.load_state_dict(global_state, strict=False)
    tied = {"head.weight"} if model.args.tie_embeddings else set()
    assert not unexpected and set(missing) <= tied, (missing, unexpected)


@torch.no_grad()
def evaluate(model: Transformer, batches: list[torch.Tensor]) -> float:
    model.eval()
    losses = [float(model.loss(b[:, :-1], b[:, 1:])) for b in batches]
    model.train()
    return sum(losses) / len(losses)


class _Run:
    def __init__(self, cfg: Config, sink: MetricsSink, progress: bool) -> None:
        self.cfg, self.sink, self.progress = cfg, sink, progress
        t = cfg.train
        self.data = build_data_source(cfg)
        self.hub = InProcessHub(
            t.groups, LinkModel.from_mbps(cfg.transport.bandwidth_mbps, cfg.transport.latency_ms)
        )
        self.results = [GroupResult() for _ in range(t.groups)]
        # Built here, one after another: torch's global RNG is shared by all threads, so models
        # built concurrently would not get the same initialization.
        self.models = [build_model(cfg) for _ in range(t.groups)]
        self.eval_model = build_model(cfg)
        self.eval_history: list[tuple[int, float]] = []
        self.eval_by_lang: dict[str, float] = {}
        self.errors: list[BaseException] = []

    def group_main(self, g: int) -> None:
        try:
            self._train_group(g)
        except BaseException as e:  # surface in the main thread; free the other groups
            self.errors.append(e)
            self.hub.abort(f"group {g} failed: {e!r}")

    def _train_group(self, g: int) -> None:
        cfg, t = self.cfg, self.cfg.train
        model = self.models[g]
        eval_model = self.eval_model if g == 0 else None
        opt, sched = build_inner_optimizer(model, cfg.inner, t.steps)
        transport = self.hub.transport(g)
        engine = StreamingEngine(
            model, EngineOptions.from_config(cfg.outer, cfg.transport.timeout_s), transport
        )
        stream = self.data.stream(g)
        res = self.results[g]
        bar = _progress_bar(t.steps) if (g == 0 and self.progress) else None
        for step in range(1, t.steps + 1):
            batch = stream.next()  # (B, T+1)
            loss = model.loss(batch[:, :-1], batch[:, 1:])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.inner.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.inner.grad_clip)
            opt.step()
            sched.step()
            loss_value = loss.item()
            res.train_loss.append(loss_value)
            self.sink.scalar(f"train/loss/group{g}", loss_value, step)
            if g == 0:
                self.sink.scalar("train/lr_inner", sched.get_last_lr()[0], step)
            self._record(g, engine.step(), transport, res, step)
            if eval_model is not None and t.eval_every and step % t.eval_every == 0:
                self._evaluate(eval_model, engine, step)
            if bar is not None:
                nxt, frag = engine.schedule.next_event(step)
                bar.set_postfix(
                    refresh=False,
                    loss=f"{loss_value:.3f}",
                    sent=_human(transport.stats.bytes_sent),
                    next_sync=f"f{frag}@{nxt}",
                )
                bar.update(1)
        self._record(g, engine.finish(), transport, res, t.steps)
        if eval_model is not None and (
            not self.eval_history or self.eval_history[-1][0] != t.steps
        ):
            self._evaluate(eval_model, engine, t.steps)
        if bar is not None:
            bar.close()
        res.bytes_sent = transport.stats.bytes_sent
        res.bytes_received = transport.stats.bytes_received
        res.global_state = engine.global_state()

    def _evaluate(self, eval_model: Transformer, engine: StreamingEngine, step: int) -> None:
        load_global(eval_model, engine.global_state())
        self.eval_by_lang = {
            lang: evaluate(eval_model, batches) for lang, batches in self.data.eval_sets.items()
        }
        loss = mean_loss(self.eval_by_lang)
        self.eval_history.append((step, loss))
        if len(self.eval_by_lang) > 1:
            for lang, value in self.eval_by_lang.items():
                self.sink.scalar(f"eval/loss/{lang}", value, step)
        self.sink.scalar("eval/loss", loss, step)
        self.sink.scalar("eval/perplexity", float(torch.tensor(loss).exp()), step)

    def _record(
        self, g: int, events: list[SyncEvent], transport, res: GroupResult, step: int
    ) -> None:
        for ev in events:
            if ev.kind == "send":
                self.sink.scalar(
                    f"outer/delta_norm/group{g}/fragment{ev.fragment}", ev.delta_norm, step
                )
            else:
                res.blocked_s += ev.blocked_s
                res.quant_rel_error.append(ev.quant_rel_error)
                self.sink.scalar(
                    f"outer/quant_rel_error/fragment{ev.fragment}", ev.quant_rel_error, step
                )
                self.sink.scalar(f"outer/blocked_s/group{g}", res.blocked_s, step)
        if events:
            self.sink.scalar(f"comm/bytes_sent/group{g}", transport.stats.bytes_sent, step)
            self.sink.scalar(f"comm/bytes_received/group{g}", transport.stats.bytes_received, step)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}TB"


def _progress_bar(total: int):
    from streamloco.progress import progress_bar

    return progress_bar(total, desc="group 0", unit="step")


def run_simulation(
    cfg: Config, sink: MetricsSink | None = None, progress: bool = False
) -> SimResult:
    """Train cfg.train.groups replicas in threads; returns losses, bytes and global states."""
    torch.set_num_threads(cfg.train.threads)
    run = _Run(cfg, sink or NullSink(), progress)
    t0 = time.perf_counter()
    threads = [
        threading.Thread(target=run.group_main, args=(g,), name=f"group{g}", daemon=True)
        for g in range(cfg.train.groups)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if run.errors:
        raise run.errors[0]
    wall = time.perf_counter() - t0
    args = model_args(
        cfg.model.size, cfg.model.vocab_size, cfg.model.seq_len, cfg.model.tie_embeddings
    )
    return SimResult(
        params=param_count(args),
        groups=run.results,
        eval_history=run.eval_history,
        eval_by_lang=run.eval_by_lang,
        nll_floor=run.data.nll_floor,
        wall_s=wall,
        tokens=cfg.train.groups * cfg.train.steps * cfg.train.batch_size * cfg.model.seq_len,
    )


def summarize(cfg: Config, result: SimResult) -> str:
    """The console summary of a run: losses, bytes on the wire and the ratio to DDP."""
    m = cfg.train.groups
    lines = [
        f"model {cfg.model.size}: {result.params:,} params; {m} groups x {cfg.train.steps} steps;"
        f" {result.tokens:,} tokens in {result.wall_s:.1f}s "
        f"({result.tokens / result.wall_s:,.0f} tokens/s)",
        f"outer: H={cfg.outer.sync_every} F={cfg.outer.fragments} tau={cfg.outer.overlap} "
        f"alpha={cfg.outer.alpha} codec={cfg.outer.codec}"
        + (f"+zstd{cfg.outer.zstd_level}" if cfg.outer.zstd_level else "")
        + f" schedule={cfg.outer.schedule}",
        f"final eval loss of the global parameters: {result.final_eval_loss:.4f}"
        + (
            f" (the synthetic language's floor: {result.nll_floor:.4f})"
            if result.nll_floor is not None
            else " (mean over languages)"
        ),
    ]
    if len(result.eval_by_lang) > 1:
        lines.append(
            "  per language: "
            + ", ".join(
                f"{lang} {loss:.3f} (ppl {math.exp(loss):.1f})"
                for lang, loss in result.eval_by_lang.items()
            )
        )
    lines.append(f"global parameters identical on all groups: {result.globals_identical()}")
    for g, res in enumerate(result.groups):
        moved = res.bytes_sent + res.bytes_received
        lines.append(
            f"group {g}: sent {_human(res.bytes_sent)}, received "
            f"{_human(res.bytes_received)}, blocked {res.blocked_s:.2f}s"
        )
        if m > 1:
            for bits, name in ((16, "bf16"), (32, "fp32")):
                ddp = ddp_bytes_per_group(result.params, m, cfg.train.steps, bits)
                lines.append(
                    f"  vs DDP in {name} (ring all-reduce, {_human(ddp)}): "
                    f"{ddp / max(moved, 1):,.0f}x fewer bytes"
                )
    return "\n".join(lines)


def run_and_report(cfg: Config, run_dir: Path | None, progress: bool = True) -> SimResult:
    sink: MetricsSink
    if run_dir is not None and cfg.run.tensorboard:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(cfg.to_toml(), encoding="utf-8")
        sink = TensorBoardSink(run_dir / "tb")
        sink.text("config", "```\n" + cfg.to_toml() + "\n```")
    else:
        sink = MemorySink()
    try:
        result = run_simulation(cfg, sink, progress=progress)
        if cfg.train.groups > 1:
            moved = result.groups[0].bytes_sent + result.groups[0].bytes_received
            ddp = ddp_bytes_per_group(result.params, cfg.train.groups, cfg.train.steps, 16)
            sink.scalar("comm/ddp_bf16_bytes_per_group", ddp, cfg.train.steps)
            sink.scalar("comm/ratio_vs_ddp_bf16", ddp / max(moved, 1), cfg.train.steps)
    finally:
        sink.close()
    return result

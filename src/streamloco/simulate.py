"""M worker groups as threads of one process, joined by the in-process transport.

This is the engine's test bed and the quickest smoke run: every group is a `Trainer` (model,
AdamW, data stream, `StreamingEngine`, exactly what a Ray actor runs), the exchange goes through
`InProcessHub` (optionally over a simulated slow link), and group 0 evaluates the global
parameters. Torch ops release the GIL, so the groups really do run concurrently on a multi-core
CPU. `streamloco train` runs the same Trainers as Ray actors.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import torch

from streamloco.config import Config
from streamloco.metrics import MemorySink, MetricsSink, NullSink, TensorBoardSink
from streamloco.outer_optim.transport import InProcessHub, LinkModel
from streamloco.records import RecordLog
from streamloco.results import Collector, RunResult, human
from streamloco.workers.data_source import build_data_source
from streamloco.workers.model import model_args, param_count
from streamloco.workers.trainer import Placement, Trainer


def run_simulation(
    cfg: Config,
    sink: MetricsSink | None = None,
    progress: bool = False,
    log: RecordLog | None = None,
) -> RunResult:
    """Train cfg.train.groups replicas in threads; returns losses, bytes and global states."""
    torch.set_num_threads(cfg.train.threads)
    t, m = cfg.train, cfg.train.groups
    data = build_data_source(cfg)
    hub = InProcessHub(
        m, LinkModel.from_mbps(cfg.transport.bandwidth_mbps, cfg.transport.latency_ms)
    )
    args = model_args(
        cfg.model.size, cfg.model.vocab_size, cfg.model.seq_len, cfg.model.tie_embeddings
    )
    collector = Collector(cfg, sink or NullSink(), param_count(args), data.nll_floor, log=log)
    # Built here, one after another: torch's global RNG is shared by all threads, so models
    # built concurrently would not get the same initialization.
    trainers = [
        Trainer(cfg, Placement(g), hub.transport(g), device=torch.device("cpu"), data=data)
        for g in range(m)
    ]
    if cfg.model.init_from:  # every group starts from the given model, not a random init
        from streamloco.hf.init import load_init_state  # needs the `hf` extra (safetensors)

        init = load_init_state(cfg)
        for trainer in trainers:
            trainer.load_initial(init)
    errors: list[BaseException] = []

    def group_main(g: int) -> None:
        trainer = trainers[g]
        bar = _progress_bar(t.steps) if (g == 0 and progress) else None
        try:
            while trainer.step < t.steps:
                rep = trainer.train(trainer.step + t.log_every)
                collector.add(rep)
                if bar is not None:
                    nxt, frag = trainer.next_sync()
                    bar.set_postfix(
                        refresh=False,
                        loss=f"{rep.loss:.3f}",
                        sent=human(rep.bytes_sent),
                        next_sync=f"f{frag}@{nxt}",
                    )
                    bar.update(rep.step - bar.n)
        except BaseException as e:  # surface in the main thread; free the other groups
            errors.append(e)
            hub.abort(f"group {g} failed: {e!r}")
        finally:
            if bar is not None:
                bar.close()

    t0 = time.perf_counter()
    threads = [
        threading.Thread(target=group_main, args=(g,), name=f"group{g}", daemon=True)
        for g in range(m)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    result = collector.finish(time.perf_counter() - t0)
    for g, trainer in enumerate(trainers):
        result.groups[g].global_state = trainer.global_state()
    return result


def _progress_bar(total: int):
    from streamloco.progress import progress_bar

    return progress_bar(total, desc="group 0", unit="step")


def run_and_report(cfg: Config, run_dir: Path | None, progress: bool = True) -> RunResult:
    """A simulation that leaves what `train` leaves: config.toml, records.jsonl, TensorBoard."""
    sink: MetricsSink = MemorySink()
    log = None
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(cfg.to_toml(), encoding="utf-8")
        log = RecordLog(run_dir / "records.jsonl")
        if cfg.run.tensorboard:
            sink = TensorBoardSink(run_dir / "tb")
            sink.text("config", "```\n" + cfg.to_toml() + "\n```")
    try:
        return run_simulation(cfg, sink, progress=progress, log=log)
    finally:
        sink.close()
        if log is not None:
            log.close()

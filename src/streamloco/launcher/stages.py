"""Multistage continual pretraining: `streamloco train` with `stages.steps` set.

Stage i is an ordinary run (Ray worker groups, checkpoints, resume, exactly like pretraining) in
``<run_dir>/stage-<i>``, whose config is `config.stage_config`: its steps, learning rate, warmup
and trainable rows, starting from the previous stage's global model. When a stage ends, its
global model is exported to ``stage-<i>/model`` (the Hugging Face layout, bit-exact) and the next
stage starts from it with `model.init_from`. Resuming (`train --resume RUN_DIR`) skips the stages
whose model is there, continues the one that has checkpoints from its newest one, and starts the
rest: a run stopped anywhere, inside a stage or between two, ends with the same model.

Each stage's data stream starts at its beginning (the loader's position is per run), so a later
stage reads the same first windows again: give later stages more steps, or another
`train.seed`, if that matters.
"""

from __future__ import annotations

from pathlib import Path

from streamloco.config import Config, stage_config
from streamloco.launcher.drills import Fault
from streamloco.launcher.preflight import LaunchError
from streamloco.results import RunResult

MODEL_DIR = "model"


def stage_dir(run_dir: Path, i: int) -> Path:
    return Path(run_dir) / f"stage-{i}"


def train_stages(
    cfg: Config,
    run_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    faults: list[Fault] | tuple[Fault, ...] = (),
) -> tuple[Config, RunResult | None]:
    """Run every stage not yet done; (the last stage's config, its result or None if every
    stage was already done)."""
    from streamloco.hf.export import write_export
    from streamloco.launcher.driver import train
    from streamloco.launcher.run_model import load_run_model, run_tokenizer

    run_dir = Path(run_dir)
    started = [p for p in run_dir.glob("stage-*") if p.is_dir()]
    if started and not resume:
        raise LaunchError(
            f"{run_dir} already holds stages ({', '.join(sorted(p.name for p in started))}): "
            f"continue with `streamloco train --resume {run_dir}` or choose another run.name"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(cfg.to_toml(), encoding="utf-8")
    init, result = cfg.model.init_from, None
    scfg = cfg
    for i in range(len(cfg.stages.steps)):
        sdir = stage_dir(run_dir, i)
        scfg = stage_config(cfg, i, init)
        done = sdir / MODEL_DIR
        if (done / "config.json").is_file():
            print(f"streamloco train: stage {i} is done ({done})", flush=True)
            init = str(done)
            continue
        ckpts = sdir / "checkpoints"
        again = ckpts.is_dir() and any(ckpts.iterdir())
        rows = scfg.model.train_rows_from
        print(
            f"streamloco train: stage {i + 1}/{len(cfg.stages.steps)}: {scfg.train.steps} steps, "
            f"lr {scfg.inner.lr:g}, "
            f"{f'rows from {rows} only' if rows else 'all parameters'}, "
            f"from {init or 'random init'}{' (resuming)' if again else ''}",
            flush=True,
        )
        # A stage that trained to its end but stopped before its export only needs the export.
        finished = again and load_run_model(sdir).step >= scfg.train.steps
        if not finished:
            result = train(scfg, sdir, resume=again, progress=progress, faults=faults)
        model = load_run_model(sdir)
        prov = {"run_dir": str(sdir), "step": model.step, "stage": i}
        write_export(done, model.args, model.state, run_tokenizer(model), prov, overwrite=True)
        init = str(done)
    return scfg, result

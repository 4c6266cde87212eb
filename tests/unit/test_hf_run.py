"""`streamloco export` and `generate` on a run directory: the global model of the newest valid
checkpoint, unflattened from the engine's fragments, is what gets exported (no Ray here: the
checkpoint is written by the driver's own write_checkpoint from a Trainer's state)."""

from __future__ import annotations

import pytest
import torch

from streamloco.cli import main
from streamloco.config import load_config
from streamloco.hf.export import read_export
from streamloco.launcher.run_checkpoint import write_checkpoint
from streamloco.launcher.run_model import load_run_model
from streamloco.outer_optim.transport import InProcessHub
from streamloco.workers.trainer import Placement, Trainer

pytest.importorskip("safetensors")  # the `hf` extra; CI installs it


def _run(tmp_path, *extra: str):
    cfg = load_config(
        None,
        [
            "--model.vocab_size=64",
            "--train.groups=1",
            "--train.steps=10",
            "--train.batch_size=4",
            "--inner.warmup_steps=2",
            "--outer.sync_every=4",
            f"--run.out_dir={tmp_path}",
            "--run.tensorboard=false",
            *extra,
        ],
    )
    trainer = Trainer(cfg, Placement(0), InProcessHub(1).transport(0), device=torch.device("cpu"))
    trainer.train(7)  # mid-round for one fragment: local != global
    run_dir = tmp_path / cfg.run.name
    write_checkpoint(cfg, run_dir, trainer.step, {(0, 0): trainer.state_dict()})
    return cfg, trainer, run_dir


@pytest.mark.parametrize(
    "extra",
    [
        ["--outer.fragments=3", "--outer.sync_every=6"],
        ["--outer.fragments=2", "--outer.pattern=sequential", "--model.tie_embeddings=false"],
        ["--outer.enabled=false"],
    ],
    ids=["strided-F3", "sequential-F2-untied", "no-outer-loop"],
)
def test_export_holds_the_global_model_of_the_checkpoint(tmp_path, extra):
    cfg, trainer, run_dir = _run(tmp_path, *extra)
    glob = trainer.global_state()
    run = load_run_model(run_dir)
    assert run.step == 7 and run.args == trainer.model.args
    for name, t in glob.items():
        assert torch.equal(run.state[name], t), name
    if cfg.outer.enabled:  # the global model is not the local one mid-round
        local = trainer.model.state_dict()
        assert any(not torch.equal(local[n], glob[n]) for n in glob)
    out = tmp_path / "export"
    assert main(["export", str(run_dir), str(out)]) == 0
    args, state, tok = read_export(out)
    assert tok is None  # synthetic tokens: no tokenizer
    assert args == trainer.model.args
    for name, t in glob.items():
        assert torch.equal(state[name], t), name


def test_export_errors(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    assert "no checkpoint under" in capsys.readouterr().err
    _, _, run_dir = _run(tmp_path)
    assert main(["export", str(run_dir), str(tmp_path / "out")]) == 0
    assert main(["export", str(run_dir), str(tmp_path / "out")]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["generate", str(run_dir), "--prompt", "x"]) == 2
    assert "no tokenizer" in capsys.readouterr().err

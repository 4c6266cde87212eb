"""Export and import around `streamloco train` on a real local Ray: a base run is exported from
its checkpoint with `streamloco export`, and a second run starts every group from it with
`model.init_from` (the driver reads the directory and hands the weights to the actors)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import ROOT
from streamloco.cli import main
from streamloco.config import load_config
from streamloco.hf.export import read_export
from streamloco.launcher.driver import train

pytestmark = pytest.mark.ray
pytest.importorskip("safetensors")  # the `hf` extra; CI installs it

SMOKE = ROOT / "configs" / "smoke.toml"


def _cfg(tmp_path: Path, *overrides: str):
    learnable = ["--model.vocab_size=16", "--data.branching=2", "--train.eval_every=0"]
    return load_config(SMOKE, [f"--run.out_dir={tmp_path}", *learnable, *overrides])


def test_export_a_ray_run_and_start_another_from_it(local_ray, tmp_path):
    base = train(_cfg(tmp_path, "--run.name=base"), tmp_path / "base", progress=False)
    out = tmp_path / "export"
    assert main(["export", str(tmp_path / "base"), str(out)]) == 0
    _, state, _ = read_export(out)
    for name, t in base.groups[0].global_state.items():  # the final global model, exactly
        assert torch.equal(state[name], t), name

    cont = train(
        _cfg(
            tmp_path,
            "--run.name=cont",
            f"--model.init_from={out}",
            "--train.steps=2",
            "--inner.warmup_steps=0",
        ),
        tmp_path / "cont",
        progress=False,
    )
    scratch = train(
        _cfg(tmp_path, "--run.name=scratch", "--train.steps=2", "--inner.warmup_steps=0"),
        tmp_path / "scratch",
        progress=False,
    )
    last = base.groups[0].train_loss[-1]
    for g in cont.groups:  # every group starts from the base model, not a random init
        assert abs(g.train_loss[0] - last) < 0.3
        assert g.train_loss[0] < scratch.groups[0].train_loss[0] - 0.5

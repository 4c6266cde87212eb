"""Multistage training on a real local Ray: stage 0 trains only the new embedding rows (the rest
stays bit-exact), stage 1 everything, starting from stage 0's exported model; a run stopped at
the stage boundary resumes to the same final model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from helpers import ROOT
from streamloco.config import load_config
from streamloco.hf.export import read_export
from streamloco.launcher.stages import train_stages
from streamloco.workers.trainer import build_model

pytestmark = pytest.mark.ray
pytest.importorskip("safetensors")  # the `hf` extra; CI installs it

SMOKE = ROOT / "configs" / "smoke.toml"


def test_two_stages_freeze_then_train_all_and_resume_at_the_boundary(local_ray, tmp_path):
    cfg = load_config(
        SMOKE,
        [
            f"--run.out_dir={tmp_path}",
            "--model.vocab_size=16",
            "--data.branching=2",
            "--train.eval_every=0",
            "--run.tensorboard=false",
            "--stages.steps=[20, 20]",
            "--stages.lr=[0.01, 0.003]",
            "--stages.train_rows_from=[8, 0]",
        ],
    )
    run_dir = tmp_path / "staged"
    last, result = train_stages(cfg, run_dir, progress=False)
    assert result is not None and result.globals_identical()
    assert last.inner.lr == 0.003 and last.model.init_from == str(run_dir / "stage-0" / "model")

    start = build_model(cfg).state_dict()
    _, first, _ = read_export(run_dir / "stage-0" / "model")
    for name, t in first.items():  # stage 0: only rows 8.. of the (tied) embedding moved
        if name in ("tok_emb.weight", "head.weight"):
            assert torch.equal(t[:8], start[name][:8]) and not torch.equal(t[8:], start[name][8:])
        else:
            assert torch.equal(t, start[name]), name
    _, final, _ = read_export(run_dir / "stage-1" / "model")
    assert not torch.equal(final["blocks.0.attn.qkv.weight"], start["blocks.0.attn.qkv.weight"])

    with pytest.raises(ValueError, match="already holds stages"):
        train_stages(cfg, run_dir, progress=False)
    shutil.rmtree(run_dir / "stage-1")  # stopped at the boundary
    _, again = train_stages(cfg, run_dir, resume=True, progress=False)
    assert again is not None
    _, resumed, _ = read_export(run_dir / "stage-1" / "model")
    for name, t in final.items():  # CPU runs are deterministic: the same final model
        assert torch.equal(resumed[name], t), name
    assert train_stages(cfg, run_dir, resume=True, progress=False)[1] is None  # all done
    assert Path(run_dir / "config.toml").is_file()

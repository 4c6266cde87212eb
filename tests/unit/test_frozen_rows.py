"""model.train_rows_from: only the new embedding rows train; every other value stays bit-exact
through AdamW's weight decay and the outer merge, on every group and in the global model."""

from __future__ import annotations

import pytest
import torch

from streamloco.config import load_config
from streamloco.simulate import run_simulation
from streamloco.workers.trainer import build_model


@pytest.mark.parametrize(
    "tie", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["tied", "untied"]
)
def test_only_the_new_rows_train(tmp_path, tie):
    cfg = load_config(
        "configs/smoke.toml",
        [
            "--train.steps=40",
            "--outer.alpha=0.3",  # 0.3 * x + 0.7 * x is not always x in floating point
            "--outer.sync_every=10",
            "--model.train_rows_from=48",
            f"--model.tie_embeddings={str(tie).lower()}",
            "--run.tensorboard=false",
        ],
    )
    start = build_model(cfg).state_dict()
    result = run_simulation(cfg)
    assert result.globals_identical()
    glob = result.groups[0].global_state
    for name, t in glob.items():
        if name in ("tok_emb.weight", "head.weight"):
            assert torch.equal(t[:48], start[name][:48]), name
            assert not torch.equal(t[48:], start[name][48:]), name  # the new rows learnt
        else:
            assert torch.equal(t, start[name]), name


def test_train_rows_from_is_validated():
    with pytest.raises(ValueError, match=r"model\.train_rows_from"):
        load_config(None, ["--model.vocab_size=64", "--model.train_rows_from=64"])

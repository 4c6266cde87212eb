"""The stages section: each stage's plain run config, and errors that name the key."""

from __future__ import annotations

import pytest

from streamloco.config import load_config, stage_config


def _cfg(*extra: str):
    return load_config(
        None,
        [
            "--model.vocab_size=64",
            "--train.steps=100",
            "--inner.warmup_steps=30",
            "--stages.steps=[20, 50]",
            *extra,
        ],
    )


def test_stage_config_takes_each_stage_s_values():
    cfg = _cfg("--stages.lr=[0.01, 0.003]", "--stages.train_rows_from=[48, 0]")
    first, second = stage_config(cfg, 0, ""), stage_config(cfg, 1, "runs/x/stage-0/model")
    assert (first.train.steps, first.inner.lr, first.model.train_rows_from) == (20, 0.01, 48)
    assert first.inner.warmup_steps == 20  # inner.warmup_steps capped at the stage's steps
    assert (second.train.steps, second.inner.lr, second.model.train_rows_from) == (50, 0.003, 0)
    assert second.inner.warmup_steps == 30 and second.model.init_from == "runs/x/stage-0/model"
    assert first.stages.steps == [] and second.stages.steps == []  # plain runs
    assert first.outer == cfg.outer and first.data == cfg.data


def test_stage_config_defaults_to_the_run_s_values():
    cfg = _cfg("--inner.lr=0.002", "--model.train_rows_from=10")
    s = stage_config(cfg, 1, "")
    assert (s.inner.lr, s.model.train_rows_from) == (0.002, 10)


@pytest.mark.parametrize(
    "override, key",
    [
        ("--stages.lr=[0.01]", r"stages\.lr: has 1 entries for 2 stages"),
        ("--stages.warmup_steps=[5, 60]", r"stages\.warmup_steps\[1\]: must be in \[0, 50\]"),
        ("--stages.train_rows_from=[64, 0]", r"stages\.train_rows_from\[0\]"),
        ("--stages.lr=[0.01, 0]", r"stages\.lr\[1\]: must be > 0"),
    ],
)
def test_bad_stages_name_the_key(override, key):
    with pytest.raises(ValueError, match=key):
        _cfg(override)
    with pytest.raises(ValueError, match=r"stages\.steps\[0\]"):
        load_config(None, ["--stages.steps=[0]"])

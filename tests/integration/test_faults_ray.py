"""Fault injection on a real local Ray: a group dies, a straggler, NaNs and corrupted payloads,
and a corrupted newest checkpoint on resume. Every run ends with identical finite globals."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from helpers import ROOT
from streamloco.config import load_config
from streamloco.launcher.drills import Fault
from streamloco.launcher.driver import train

pytestmark = pytest.mark.ray

SMOKE = ROOT / "configs" / "smoke.toml"


def _cfg(tmp_path: Path, *overrides: str):
    return load_config(
        SMOKE,
        [
            f"--run.out_dir={tmp_path}",
            "--model.vocab_size=16",
            "--data.branching=2",
            "--train.eval_every=0",
            "--train.groups=3",
            "--cluster.cpus_per_rank=0.5",
            "--train.log_every=5",
            "--transport.timeout_s=120",
            *overrides,
        ],
    )


def _scalars(tb_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def _healthy(result) -> None:
    assert result.globals_identical()
    for res in result.groups:
        assert all(torch.isfinite(t).all() for t in res.global_state.values())


def test_a_dead_group_is_replaced_and_recovers_live_while_the_others_go_on(local_ray, tmp_path):
    steps, h = 100, 20
    base = _cfg(tmp_path, "--run.name=calm", f"--train.steps={steps}")
    calm = train(base, tmp_path / "calm", progress=False)
    cfg = _cfg(tmp_path, "--run.name=kill", f"--train.steps={steps}")
    hit = train(cfg, tmp_path / "kill", progress=False, faults=[Fault("kill", 1, 30)])
    _healthy(hit)
    # the survivors never stopped: a loss for every step
    assert len(hit.groups[0].train_loss) == len(hit.groups[2].train_loss) == steps
    (group, nbytes), *_ = hit.recoveries
    assert group == 1 and nbytes >= sum(t.numel() * 4 for t in calm.groups[0].global_state.values())
    # the replacement rejoined within two rounds of its death, then trained to the end
    loss1 = [s for s, _ in _scalars(tmp_path / "kill" / "tb", "train/loss/group1")]
    gap = [b for a, b in itertools.pairwise(loss1) if b != a + 1]
    assert len(gap) == 1 and gap[0] <= 30 + 2 * h and loss1[-1] == steps
    assert _scalars(tmp_path / "kill" / "tb", "faults/recovery_s")
    # bytes belong to the group, not to the actor process: the replacement goes on counting
    # from the dead group's last report, so the summary equals its per-round records, and the
    # TensorBoard series never dips (recovery bytes are counted apart, above)
    for res in hit.groups:
        assert res.bytes_sent == sum(r.bytes_sent for r in res.rounds) > 0
        assert res.bytes_received == sum(r.bytes_received for r in res.rounds) > 0
    sent1 = [v for _, v in _scalars(tmp_path / "kill" / "tb", "comm/bytes_sent/group1")]
    assert sent1 == sorted(sent1) and len(sent1) > 3
    # same seed, one group out for a while: the final loss stays close
    assert hit.eval_history[-1][1] < calm.eval_history[-1][1] + 0.1
    assert hit.eval_history[-1][1] < 0.75 * math.log(16)


def test_a_straggler_does_not_hold_the_others_and_keeps_the_same_globals(
    local_ray, tmp_path, capsys
):
    # group 2 falls 1.5 s further behind every 10 steps (one round); rounds close 1 s after
    # their first payload
    cfg = _cfg(tmp_path, "--run.name=slow", "--transport.round_deadline_s=1.0")
    result = train(cfg, tmp_path / "slow", progress=False, faults=[Fault("delay", 2, 0, 0.15)])
    _healthy(result)  # the straggler applied the rounds it missed, without its payload
    late = [res.faults["late"] for res in result.groups]
    assert late[2] >= 3 and result.groups[2].faults["adopted"] >= late[2]
    assert late[0] + late[1] < late[2]  # (a loaded machine may make the others late once)
    said = capsys.readouterr().out  # every payload left out gets its console line
    assert said.count("group 2: its payload for fragment") >= late[2]
    assert all(len(res.train_loss) == 60 for res in result.groups)


def test_nan_and_corrupted_payloads_are_left_out_and_the_group_reset(local_ray, tmp_path):
    cfg = _cfg(tmp_path, "--run.name=bad")
    result = train(
        cfg,
        tmp_path / "bad",
        progress=False,
        faults=[Fault("nan", 1, 20), Fault("corrupt", 2, 35)],
    )
    _healthy(result)
    f0, f1, f2 = (res.faults for res in result.groups)
    assert f1["abstained"] >= 1 and f1["resets"] == 1 and f1["adopted"] >= 1
    assert f2["adopted"] >= 1 and f2["resets"] == 0
    assert f0["excluded"] >= 2 and f0["adopted"] == 0  # saw both bad payloads, never adopted
    assert _scalars(tmp_path / "bad" / "tb", "faults/excluded/group0")[-1][1] >= 2
    assert result.eval_history[-1][1] < 0.8 * math.log(16)


def test_resume_skips_a_truncated_newest_checkpoint(local_ray, tmp_path):
    cfg = _cfg(tmp_path, "--run.name=ckpt", "--train.groups=2", "--run.checkpoint_every=20")
    run_dir = tmp_path / "ckpt"
    full = train(cfg, run_dir, progress=False)
    newest = run_dir / "checkpoints" / "step-00000060" / "state.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # a crash while writing it
    longer = load_config(run_dir / "config.toml", ["--train.steps=80"])
    with pytest.warns(UserWarning, match="step-00000060"):
        more = train(longer, run_dir, resume=True, progress=False)
    _healthy(more)
    assert len(more.groups[0].train_loss) == 80 - 41  # continued from step 41
    assert more.groups[0].train_loss[: 60 - 41] != full.groups[0].train_loss[41:]  # lr differs


def test_a_resubmitted_job_with_on_existing_resume_continues(local_ray, tmp_path, capsys):
    from streamloco.cli import main

    args = [
        "train",
        "--config",
        str(SMOKE),
        f"--run.out_dir={tmp_path}",
        "--run.name=job",
        "--model.vocab_size=16",
        "--data.branching=2",
        "--run.checkpoint_every=20",
        "--no-progress",
    ]
    assert main([*args, "--train.steps=40"]) == 0
    assert main([*args, "--train.steps=60"]) == 2  # the default refuses to reuse the run dir
    assert "already holds checkpoints" in capsys.readouterr().err
    assert main([*args, "--train.steps=60", "--run.on_existing=resume"]) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and "step-00000040" in out
    assert (tmp_path / "job" / "checkpoints" / "step-00000060").is_dir()

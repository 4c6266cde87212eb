"""`streamloco train` on a real local Ray: worker groups of actors, DDP inside a group (gloo),
the Ray transport between groups, TensorBoard files, checkpoints and exact resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from helpers import ROOT
from streamloco.cli import main
from streamloco.config import load_config
from streamloco.launcher.driver import train
from streamloco.launcher.plan import Plan

pytestmark = pytest.mark.ray

SMOKE = ROOT / "configs" / "smoke.toml"


def _cfg(tmp_path: Path, *overrides: str):
    # 16 tokens, 2 successors per context: learnable in 60 steps (ln 16 = 2.77 -> ~1.7)
    learnable = ["--model.vocab_size=16", "--data.branching=2", "--train.eval_every=20"]
    return load_config(SMOKE, [f"--run.out_dir={tmp_path}", *learnable, *overrides])


def _identical(result) -> None:
    assert result.globals_identical()
    ref = result.groups[0].global_state
    assert ref and all(torch.isfinite(t).all() for t in ref.values())


def _scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    out = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    out["_hparams"] = [(0, float(bool(acc.PluginTagToContent("hparams"))))]
    return out


def test_two_groups_train_sync_log_checkpoint_and_resume_exactly(local_ray, tmp_path):
    cfg = _cfg(tmp_path, "--run.name=full", "--run.checkpoint_every=20")
    full = train(cfg, tmp_path / "full", progress=False)
    _identical(full)
    losses = full.groups[0].train_loss
    assert len(losses) == 60 and sum(losses[-10:]) < sum(losses[:10]) - 5.0
    assert full.eval_history[-1][1] < 0.75 * math.log(16)
    sent = full.groups[0].bytes_sent
    assert sent > 0 and full.groups[1].bytes_received == sent  # 2 groups: same size payloads

    tags = _scalars(tmp_path / "full" / "tb")
    for tag in [
        "train/loss/group0",
        "train/loss/group1",
        "train/lr_inner",
        "outer/lr",
        "eval/loss",
        "eval/perplexity",
        "perf/tokens_per_s/group1",
        "comm/bytes_sent/group0",
        "comm/bytes_received/group1",
        "comm/round_bytes_sent/group0",
        "comm/round_bytes_received/group1",
        "comm/ddp_bf16_bytes_per_group",
        "comm/ratio_vs_ddp_bf16",
        "outer/blocked_s/group1",
        "outer/delta_norm/group0/fragment1",
        "outer/quant_rel_error/fragment0",
        "outer/groups_in_round",
    ]:
        assert tags.get(tag), f"missing TensorBoard tag {tag}"
    assert tags["_hparams"] == [(0, 1.0)]
    assert len(tags["train/loss/group1"]) == 60
    assert tags["comm/bytes_sent/group0"][-1][1] == sent
    assert tags["comm/ratio_vs_ddp_bf16"][-1][1] > 10

    # Checkpoints land on the first step after 20 and 40 with nothing in flight, and the end.
    ckpts = sorted(p.name for p in (tmp_path / "full" / "checkpoints").iterdir())
    assert ckpts == ["step-00000021", "step-00000041", "step-00000060"]
    assert Plan.build(cfg, 0).checkpoints == [21, 41, 60]

    # Resume from step 41 (as if the driver died after it): the curve continues bit for bit.
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    (resumed_dir / "config.toml").write_text(cfg.to_toml(), encoding="utf-8")
    src = tmp_path / "full" / "checkpoints" / "step-00000041"
    dst = resumed_dir / "checkpoints" / src.name
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    again = train(cfg, resumed_dir, resume=True, progress=False)
    for g in range(2):
        assert again.groups[g].train_loss == full.groups[g].train_loss[41:]
        assert again.groups[g].bytes_sent == full.groups[g].bytes_sent
        for name, t in full.groups[g].global_state.items():
            assert torch.equal(again.groups[g].global_state[name], t), name
    assert again.eval_history[-1] == full.eval_history[-1]


def test_one_group_of_two_ranks_trains_data_parallel(local_ray, tmp_path):
    cfg = _cfg(tmp_path, "--run.name=ddp", "--train.groups=1", "--cluster.ranks_per_group=2")
    result = train(cfg, tmp_path / "ddp", progress=False)
    losses = result.groups[0].train_loss
    assert len(losses) == 60 and sum(losses[-10:]) < sum(losses[:10]) - 5.0
    assert result.eval_history[-1][1] < 0.75 * math.log(16)


def test_two_groups_of_two_ranks_sync_hierarchically(local_ray, tmp_path):
    cfg = _cfg(
        tmp_path,
        "--run.name=hier",
        "--cluster.ranks_per_group=2",
        "--cluster.cpus_per_rank=0.5",
        "--train.steps=40",
    )
    result = train(cfg, tmp_path / "hier", progress=False)
    _identical(result)
    losses = result.groups[1].train_loss
    assert len(losses) == 40 and sum(losses[-10:]) < sum(losses[:10]) - 3.0
    # the group's bytes are summed over its two ranks
    assert result.groups[0].bytes_sent == result.groups[1].bytes_received


def test_sparse_error_feedback_over_gloo_ranks_keeps_globals_identical_and_resumes_exactly(
    local_ray, tmp_path
):
    """Two groups of two ranks (gloo inside a group), the sparse codec with per-group error
    feedback: identical globals, residuals that differ per group in the checkpoint (gathered
    over the ranks), and a resume that continues bit for bit."""
    from streamloco.launcher.checkpoint import load_checkpoint

    cfg = _cfg(
        tmp_path,
        "--run.name=sparse",
        "--cluster.ranks_per_group=2",
        "--cluster.cpus_per_rank=0.5",
        "--train.steps=40",
        "--train.eval_every=0",
        "--run.checkpoint_every=20",
        "--outer.codec='sparse'",
        "--outer.block_size=64",
        "--outer.topk=4",
        "--outer.error_feedback=true",
        "--outer.momentum=0",
    )
    full = train(cfg, tmp_path / "sparse", progress=False)
    _identical(full)
    losses = full.groups[1].train_loss
    assert len(losses) == 40 and sum(losses[-10:]) < sum(losses[:10]) - 3.0
    ckpt = tmp_path / "sparse" / "checkpoints" / "step-00000021"
    state, _ = load_checkpoint(ckpt)
    errors = [state["groups"][g]["group"]["outer"]["error"] for g in range(2)]
    assert all(e is not None for per_group in errors for e in per_group)
    assert not torch.equal(errors[0][0], errors[1][0])  # each group owes its own residual

    resumed_dir = tmp_path / "sparse-resumed"
    (resumed_dir / "checkpoints" / ckpt.name).mkdir(parents=True)
    (resumed_dir / "config.toml").write_text(cfg.to_toml(), encoding="utf-8")
    for f in ckpt.iterdir():
        (resumed_dir / "checkpoints" / ckpt.name / f.name).write_bytes(f.read_bytes())
    again = train(cfg, resumed_dir, resume=True, progress=False)
    for g in range(2):
        assert again.groups[g].train_loss == full.groups[g].train_loss[21:]
        for name, t in full.groups[g].global_state.items():
            assert torch.equal(again.groups[g].global_state[name], t), name


def test_bad_input_fails_before_any_actor_starts(local_ray, tmp_path, capsys):
    import ray

    before = len(ray.util.list_named_actors(all_namespaces=True))
    rc = main(
        [
            "train",
            "--config",
            str(SMOKE),
            f"--run.out_dir={tmp_path}",
            "--data.source=shards",
            f"--data.dir={tmp_path / 'missing'}",
        ]
    )
    assert rc == 2
    assert "has no manifest.json" in capsys.readouterr().err
    rc = main(["train", "--config", str(SMOKE), "--outer.fragments=3"])
    assert rc == 2
    assert "outer.sync_every" in capsys.readouterr().err
    rc = main(["train", "--resume", str(tmp_path / "nothing-here")])
    assert rc == 2
    assert "no config.toml" in capsys.readouterr().err
    assert len(ray.util.list_named_actors(all_namespaces=True)) == before


def test_a_killed_actor_stops_the_run_cleanly_and_keeps_the_checkpoint(local_ray, tmp_path):
    import time

    import ray

    from streamloco.launcher.checkpoint import load_latest
    from streamloco.launcher.drills import Fault

    cfg = _cfg(
        tmp_path,
        "--run.name=killed",
        "--train.steps=400",
        "--run.checkpoint_every=20",
        "--train.log_every=5",
        "--train.min_groups=2",  # one group alone may not go on: the run must stop
    )
    run_dir = tmp_path / "killed"
    before = len(ray.util.list_named_actors(all_namespaces=True))
    # The driver kills group 1's actor at group 1's first report at or after step 60, whatever
    # the machine's speed (a watcher thread racing the run could miss a fast one). By then the
    # step-21 checkpoint is complete: group 1 applied rounds that needed group 0's step-50 payload.
    with pytest.raises(RuntimeError, match="group 1 rank 0 failed"):
        train(cfg, run_dir, progress=False, faults=[Fault("kill", 1, 60)])
    _, state, _ = load_latest(run_dir / "checkpoints")
    assert 21 <= state["step"] < 400
    deadline = time.monotonic() + 30  # ray.kill is asynchronous
    while len(ray.util.list_named_actors(all_namespaces=True)) > before:
        assert time.monotonic() < deadline, "actors left behind"
        time.sleep(0.2)


def test_more_resources_than_the_cluster_has_fail_clearly_and_free_everything(local_ray, tmp_path):
    import ray

    from streamloco.launcher.preflight import LaunchError

    before = ray.available_resources().get("CPU", 0)
    cfg = _cfg(tmp_path, "--cluster.cpus_per_rank=4", "--cluster.start_timeout_s=3")
    with pytest.raises(LaunchError, match=r"could not reserve 2 groups x 1 ranks"):
        train(cfg, tmp_path / "too-big", progress=False)
    assert not (tmp_path / "too-big" / "tb").exists()
    ray.get(ray.remote(num_cpus=before)(lambda: None).remote(), timeout=60)  # all CPUs free again


def test_a_synthetic_run_with_a_huge_vocabulary_is_refused_before_start(tmp_path, capsys):
    rc = main(["train", "--config", str(SMOKE), "--model.vocab_size=8000"])
    assert rc == 2
    assert "too large for data.source='synthetic'" in capsys.readouterr().err

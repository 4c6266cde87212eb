"""Pre-start checks that depend on where streamloco runs: inside a Ray job or not.

Ray 2.60 marks a job's entrypoint process with RAY_JOB_CONFIG_JSON_ENV_VAR (the job's runtime
env and metadata); here it is set with monkeypatch to the JSON Ray writes, so no Ray is needed.
The same check inside a real job: tests/integration/test_job_submit.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import SMOKE
from streamloco.cli import main
from streamloco.config import load_config
from streamloco.launcher.preflight import (
    RAY_JOB_ENV,
    LaunchError,
    check_job_run_dir,
    preflight,
    ray_job_id,
)

JOB = "streamloco-20260101-120000-4242"
# What Ray 2.60's job supervisor put there for a job submitted by scripts/submit_job.sh.
JOB_JSON = json.dumps(
    {
        "runtime_env": {"working_dir": "gcs://_ray_pkg_0123456789abcdef.zip", "env_vars": {}},
        "metadata": {"job_submission_id": JOB, "job_name": JOB},
    }
)
# A short simulate run: the checks under test come before any training.
SHORT = [
    "--no-progress",
    "--train.steps=4",
    "--train.eval_every=4",
    "--outer.sync_every=4",
    "--inner.warmup_steps=1",
]


@pytest.fixture
def in_job(monkeypatch):
    monkeypatch.setenv(RAY_JOB_ENV, JOB_JSON)


@pytest.fixture
def no_job(monkeypatch):
    monkeypatch.delenv(RAY_JOB_ENV, raising=False)


def test_job_id_is_read_from_rays_job_config(in_job):
    assert ray_job_id() == JOB


def test_outside_a_job_there_is_no_job_id_and_relative_run_dirs_pass(no_job):
    assert ray_job_id() is None
    check_job_run_dir(Path("runs/smoke"))


def test_inside_a_job_a_relative_run_dir_is_refused_naming_the_key_and_the_fix(in_job):
    with pytest.raises(LaunchError) as e:
        check_job_run_dir(Path("runs/smoke"))
    msg = str(e.value)
    assert msg.startswith("run.out_dir: runs/smoke is a relative path"), msg
    assert JOB in msg and str(Path.cwd()) in msg, msg
    assert "--run.out_dir=/shared/runs" in msg, msg


def test_inside_a_job_a_relative_resume_names_resume(in_job):
    with pytest.raises(LaunchError, match=r"^--resume: runs/smoke is a relative path.*--resume /"):
        check_job_run_dir(Path("runs/smoke"), "--resume")


def test_inside_a_job_an_absolute_run_dir_passes(in_job, tmp_path):
    check_job_run_dir(tmp_path / "smoke")


def test_preflight_refuses_a_relative_run_dir_inside_a_job(in_job):
    cfg = load_config(SMOKE, [])
    with pytest.raises(LaunchError, match=r"^run\.out_dir: "):
        preflight(cfg, Path("runs") / cfg.run.name, resume=False)


def test_a_missing_relative_data_dir_inside_a_job_says_the_upload_leaves_data_out(
    in_job, tmp_path, monkeypatch
):
    # relative to a fresh directory: a checkout where `make data` ran has data/shards
    monkeypatch.chdir(tmp_path)
    cfg = load_config(SMOKE, ["--data.source=shards", "--data.dir=data/shards"])
    with pytest.raises(LaunchError) as e:
        preflight(cfg, tmp_path / "smoke", resume=False)
    msg = str(e.value)
    assert msg.startswith("data.dir: data/shards has no manifest.json"), msg
    assert f"inside Ray job {JOB}" in msg and "leaves data/ out" in msg, msg


def test_simulate_inside_a_job_with_a_relative_out_dir_fails_and_writes_nothing(
    in_job, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # stands in for the job's working dir
    rc = main(["simulate", "--config", str(SMOKE), "--run.out_dir=runs", *SHORT])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "run.out_dir: runs/smoke is a relative path" in err, err
    assert not (tmp_path / "runs").exists()


def test_train_inside_a_job_with_a_relative_out_dir_fails_before_ray(
    in_job, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    rc = main(["train", "--config", str(SMOKE), "--run.out_dir=runs", "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 2, err
    assert "run.out_dir: runs/smoke is a relative path" in err, err
    assert "run dir" not in out, out  # nothing that names the temporary copy is shown first
    assert not (tmp_path / "runs").exists()


def test_simulate_prints_absolute_paths_for_a_relative_out_dir(
    no_job, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    rc = main(["simulate", "--config", str(SMOKE), "--run.out_dir=runs", *SHORT])
    out = capsys.readouterr().out
    assert rc == 0
    run_dir = tmp_path / "runs" / "smoke"
    assert f"run dir {run_dir}\n" in out, out
    assert f"tensorboard --logdir {run_dir / 'tb'}\n" in out, out
    assert (run_dir / "config.toml").is_file()

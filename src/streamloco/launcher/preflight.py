"""Everything `streamloco train` checks before any actor starts, and what a resume must match."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

from streamloco.config import Config, from_dict


class LaunchError(ValueError):
    """Something is wrong before training starts (reported without a traceback)."""


# Ray 2.60's job supervisor sets this in the environment of a job's entrypoint process, and only
# there (ray/dashboard/modules/job/job_supervisor.py, `_get_driver_env_vars`): the job's runtime
# env and metadata as JSON. No RAY_JOB_SUBMISSION_ID or similar exists.
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def ray_job_id() -> str | None:
    """The submission id of the Ray job whose entrypoint this process is, or None outside a job."""
    raw = os.environ.get(RAY_JOB_ENV)
    if raw is None:
        return None
    return str(json.loads(raw).get("metadata", {}).get("job_submission_id", "?"))


def check_job_run_dir(run_dir: Path, key: str = "run.out_dir") -> None:
    """Inside a Ray job, refuse a relative run directory (`key` names where it came from).

    A job's cwd is its uploaded working dir, a copy under Ray's session dir on the node: a run
    written there is out of the submitter's sight, may be deleted with the session, and is shared
    by every job of the same upload (a resubmitted name then "already holds checkpoints").
    """
    job = ray_job_id()
    if job is None or run_dir.is_absolute():
        return
    fix = "--resume /shared/runs/NAME" if key == "--resume" else "--run.out_dir=/shared/runs"
    raise LaunchError(
        f"{key}: {run_dir} is a relative path, and inside Ray job {job} it would name the job's "
        f"temporary working dir ({Path.cwd()}); give an absolute path on storage every node "
        f'shares, e.g. {fix} (docs/cluster.md, "Where outputs go")'
    )


def preflight(cfg: Config, run_dir: Path, resume: bool) -> None:
    """Fail before any actor starts: data, tokenizer and run directory."""
    from streamloco.workers.data_source import check_synthetic

    check_job_run_dir(run_dir, "--resume" if resume else "run.out_dir")
    check_synthetic(cfg)
    if cfg.data.source == "shards":
        from streamloco.data_pipeline.manifest import load_manifest

        data_dir = Path(cfg.data.dir)
        if not (data_dir / "manifest.json").is_file():
            # Inputs may be relative in a job (files of the upload are on every node), but the
            # upload leaves data/ out, so a missing one there needs this hint.
            job, where = ray_job_id(), ""
            if job is not None and not data_dir.is_absolute():
                where = (
                    f"; inside Ray job {job} a relative path names a file of the uploaded "
                    "working dir, which leaves data/ out: give an absolute path on shared storage"
                )
            raise LaunchError(
                f"data.dir: {data_dir} has no manifest.json (run `streamloco data tokenize "
                f"--config ...` first, or point --data.dir at the token shards){where}"
            )
        manifest = load_manifest(data_dir, verify="size")
        if cfg.model.vocab_size < manifest.tokenizer.vocab_size:
            raise LaunchError(
                f"model.vocab_size: {cfg.model.vocab_size} < the tokenizer's "
                f"{manifest.tokenizer.vocab_size} ({data_dir}/manifest.json)"
            )
    ckpts = run_dir / "checkpoints"
    if not resume and ckpts.is_dir() and any(ckpts.iterdir()):
        raise LaunchError(
            f"run dir {run_dir} already holds checkpoints: continue it with "
            f"`streamloco train --resume {run_dir}` or choose another --run.name"
        )


def check_resumable(cfg: Config, meta: dict, path: Path) -> None:
    saved = from_dict(tomllib.loads(meta.get("config_toml", "")))
    for key in ("train.groups", "cluster.ranks_per_group", "model.size", "outer.fragments"):
        section, name = key.split(".")
        have = getattr(getattr(cfg, section), name)
        was = getattr(getattr(saved, section), name)
        if have != was:
            raise LaunchError(f"--resume: {key} is {have}, but {path} was written with {was}")
    if cfg.train.steps <= int(meta["step"]):
        raise LaunchError(
            f"--resume: {path} is at step {meta['step']} and train.steps is {cfg.train.steps}: "
            "nothing left to do (raise --train.steps to train further)"
        )


def tokenizer_hash(cfg: Config) -> str:
    if cfg.data.source != "shards":
        return ""
    manifest = json.loads((Path(cfg.data.dir) / "manifest.json").read_text(encoding="utf-8"))
    return str(manifest.get("tokenizer", {}).get("sha256", ""))

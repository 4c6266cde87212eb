"""Everything `streamloco train` checks before any actor starts, and what a resume must match."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from streamloco.config import Config, from_dict


class LaunchError(ValueError):
    """Something is wrong before training starts (reported without a traceback)."""


def preflight(cfg: Config, run_dir: Path, resume: bool) -> None:
    """Fail before any actor starts: data, tokenizer and run directory."""
    from streamloco.workers.data_source import check_synthetic

    check_synthetic(cfg)
    if cfg.data.source == "shards":
        from streamloco.data_pipeline.manifest import load_manifest

        data_dir = Path(cfg.data.dir)
        if not (data_dir / "manifest.json").is_file():
            raise LaunchError(
                f"data.dir: {data_dir} has no manifest.json (run `streamloco data tokenize "
                f"--config ...` first, or point --data.dir at the token shards)"
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

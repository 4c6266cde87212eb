"""A run's checkpoint as the driver sees it: assembled from every rank's part (rank 0 of group 0
holds the engine state, which is equal on all groups), and restored onto freshly started actors.
The store itself (atomic writes, checksums, pruning, safe loading) is checkpoint.py."""

from __future__ import annotations

from pathlib import Path

from streamloco.config import Config
from streamloco.launcher.checkpoint import save_checkpoint
from streamloco.launcher.groups import WorkerGroups
from streamloco.launcher.preflight import tokenizer_hash


def write_checkpoint(cfg: Config, run_dir: Path, step: int, parts: dict) -> Path:
    m, k = cfg.train.groups, cfg.cluster.ranks_per_group
    state = {
        "step": step,
        "engine": parts[(0, 0)]["engine"],
        "groups": [
            {"group": parts[(g, 0)]["group"], "ranks": [parts[(g, r)]["rank"] for r in range(k)]}
            for g in range(m)
        ],
    }
    meta = {
        "config_toml": cfg.to_toml(),
        "tokenizer_sha256": tokenizer_hash(cfg),
        "groups": m,
        "ranks_per_group": k,
    }
    return save_checkpoint(run_dir / "checkpoints", step, state, meta, cfg.run.keep_checkpoints)


def restore(groups: WorkerGroups, state: dict) -> None:
    import ray

    engine = ray.put(state["engine"])
    calls = []
    for g, grp in enumerate(groups.actors):
        saved = state["groups"][g]
        group_ref = ray.put(saved["group"])
        for r, actor in enumerate(grp):
            calls.append(
                actor.load_state_dict.remote(state["step"], group_ref, engine, saved["ranks"][r])
            )
    ray.get(calls)

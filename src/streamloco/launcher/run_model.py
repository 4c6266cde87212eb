"""The model a run delivers: the global (outer) parameters of its newest valid checkpoint.

A checkpoint stores the engine's global copy as one flat fp32 tensor per fragment (the engine's
state); the fragment plan, a pure function of the parameter names and the run's outer.fragments
and outer.pattern, says which parameter is where. A run without an outer loop stores the model
itself (its global parameters are the model's own).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

import torch

from streamloco.config import Config, from_dict
from streamloco.launcher.checkpoint import load_latest
from streamloco.outer_optim.fragments import partition
from streamloco.tokenizer.model import Tokenizer
from streamloco.workers.model import ModelArgs, Transformer, model_args


@dataclass
class RunModel:
    cfg: Config
    args: ModelArgs
    state: dict[str, torch.Tensor]  # Transformer.state_dict() names, fp32 (head included)
    step: int
    checkpoint: Path
    tokenizer_sha256: str  # of the tokenizer the run's shards were made with ('' if synthetic)


def load_run_model(run_dir: Path) -> RunModel:
    """The global model of `run_dir`'s newest checkpoint that verifies (damaged ones skipped)."""
    run_dir = Path(run_dir)
    found = load_latest(run_dir / "checkpoints")
    if found is None:
        raise ValueError(f"{run_dir}: no checkpoint under {run_dir / 'checkpoints'}")
    path, state, meta = found
    try:
        cfg = from_dict(tomllib.loads(meta.get("config_toml", "")))
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"{path}: meta.json holds no valid run config: {e}") from None
    m = cfg.model
    args = model_args(m.size, m.vocab_size, m.seq_len, m.tie_embeddings)
    with torch.device("meta"):  # names and shapes only
        shapes = {n: p.shape for n, p in Transformer(args).named_parameters()}
    engine = state["engine"]
    if engine.get("outer", True) is False:  # no outer loop: the model is the global model
        named = {n: state["groups"][0]["group"]["model"][n].float() for n in shapes}
    else:
        plan = partition(
            [(n, s.numel()) for n, s in shapes.items()], cfg.outer.fragments, cfg.outer.pattern
        )
        if engine.get("plan") != plan.fingerprint:
            raise ValueError(f"{path}: fragment plan {engine.get('plan')} != {plan.fingerprint}")
        named = {}
        for names, flat in zip(plan.names, engine["global"], strict=True):
            offset = 0
            for n in names:
                k = shapes[n].numel()
                named[n] = flat[offset : offset + k].view(shapes[n]).clone()
                offset += k
            if offset != flat.numel():
                raise ValueError(
                    f"{path}: a global fragment holds {flat.numel()} values, the plan {offset}"
                )
    named["head.weight"] = named["tok_emb.weight"] if args.tie_embeddings else named["head.weight"]
    return RunModel(
        cfg, args, named, int(meta["step"]), path, str(meta.get("tokenizer_sha256", ""))
    )


def run_tokenizer(run: RunModel, path: Path | None = None) -> Tokenizer | None:
    """The run's tokenizer (`path`, else cfg.tokenizer.path relative to the current directory),
    checked against the sha256 the checkpoint recorded; None for a run on synthetic tokens."""
    if run.cfg.data.source != "shards":
        return None
    tok = Tokenizer.load(path or Path(run.cfg.tokenizer.path + ".model"))
    if run.tokenizer_sha256 and tok.sha256 != run.tokenizer_sha256:
        raise ValueError(
            f"{tok.path}: sha256 {tok.sha256[:16]}... is not the tokenizer the run trained with "
            f"({run.tokenizer_sha256[:16]}... in {run.checkpoint}/meta.json); give --tokenizer"
        )
    return tok

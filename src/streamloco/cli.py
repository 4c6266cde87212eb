"""The `streamloco` command line: parse, then call one function per subcommand.

Config overrides are dotted flags after the subcommand: `--outer.fragments=4 --train.steps=50`.
Only subcommands that work are listed; the others arrive with their features.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamloco.config import Config, explain, load_config


def _load(args: argparse.Namespace, overrides: list[str]) -> Config:
    return load_config(args.config, overrides)


def cmd_simulate(args: argparse.Namespace, overrides: list[str]) -> int:
    from streamloco.simulate import run_and_report, summarize

    cfg = _load(args, overrides)
    run_dir = Path(cfg.run.out_dir) / cfg.run.name
    print(
        f"streamloco simulate: {cfg.train.groups} groups in threads of one process, "
        f"run dir {run_dir}",
        flush=True,
    )
    result = run_and_report(cfg, run_dir, progress=not args.no_progress)
    print(summarize(cfg, result))
    if cfg.run.tensorboard:
        print(f"watch it: tensorboard --logdir {run_dir / 'tb'}")
    return 0


def cmd_config(args: argparse.Namespace, overrides: list[str]) -> int:
    if args.explain:
        print(explain())
        return 0
    print(_load(args, overrides).to_toml(), end="")
    return 0


def cmd_fragments(args: argparse.Namespace, overrides: list[str]) -> int:
    """Print how the configured model is cut into fragments (the balance report)."""
    import torch

    from streamloco.outer_optim.fragments import partition
    from streamloco.workers.model import Transformer, model_args

    cfg = _load(args, overrides)
    margs = model_args(
        cfg.model.size, cfg.model.vocab_size, cfg.model.seq_len, cfg.model.tie_embeddings
    )
    with torch.device("meta"):  # names and sizes only: no memory even for 1b
        model = Transformer(margs)
    plan = partition(
        [(n, p.numel()) for n, p in model.named_parameters()],
        cfg.outer.fragments,
        cfg.outer.pattern,
    )
    print(f"model {cfg.model.size}, F={cfg.outer.fragments}, pattern={cfg.outer.pattern}")
    print(plan.report())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamloco",
        description="Streaming DiLoCo pretraining across loosely connected compute islands.",
        epilog="Config overrides: --section.key=value (see `streamloco config --explain`).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--config", type=Path, default=None, help="TOML run config")
        p.set_defaults(func=func)
        return p

    p = add(
        "simulate",
        cmd_simulate,
        "train M worker groups as threads of one process over the in-process transport",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p = add("config", cmd_config, "print the resolved config as TOML")
    p.add_argument("--explain", action="store_true", help="list every key with its doc")
    add("fragments", cmd_fragments, "show how the model is cut into fragments")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if not (a.startswith("--") and "." in a.split("=", 1)[0])]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args.func(args, rest)
    except ValueError as e:
        print(f"streamloco: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

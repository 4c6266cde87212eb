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
    from streamloco.launcher.preflight import check_job_run_dir
    from streamloco.results import summarize
    from streamloco.simulate import run_and_report

    cfg = _load(args, overrides)
    if cfg.stages.steps:
        raise ValueError("stages.steps: multistage runs go through `streamloco train` (Ray)")
    run_dir = Path(cfg.run.out_dir) / cfg.run.name
    check_job_run_dir(run_dir)
    shown = run_dir.absolute()  # a relative path means nothing once the console is elsewhere
    print(
        f"streamloco simulate: {cfg.train.groups} groups in threads of one process, "
        f"run dir {shown}",
        flush=True,
    )
    result = run_and_report(cfg, run_dir, progress=not args.no_progress)
    print(summarize(cfg, result))
    if cfg.run.tensorboard:
        print(f"watch it: tensorboard --logdir {shown / 'tb'}")
    return 0


def cmd_train(args: argparse.Namespace, overrides: list[str]) -> int:
    from streamloco.launcher.cluster import warn_if_token_readable
    from streamloco.launcher.drills import Fault
    from streamloco.launcher.driver import TrainingFailed, train
    from streamloco.launcher.preflight import check_job_run_dir
    from streamloco.results import summarize

    # Checked here as well as in train()'s preflight: before a relative path is looked at or
    # shown (in a Ray job it names the job's temporary working dir).
    if args.resume is not None:
        check_job_run_dir(args.resume, "--resume")
        saved = args.resume / "config.toml"
        if args.config is not None:
            raise ValueError("--resume takes the run's own config.toml: drop --config")
        if not saved.is_file():
            raise ValueError(f"--resume {args.resume}: no config.toml (not a run directory?)")
        cfg = load_config(saved, overrides)
        run_dir = args.resume
    else:
        cfg = _load(args, overrides)
        run_dir = Path(cfg.run.out_dir) / cfg.run.name
        check_job_run_dir(run_dir)
        ckpts = run_dir / "checkpoints"
        staged = cfg.stages.steps and any(run_dir.glob("stage-*"))
        if cfg.run.on_existing == "resume" and (
            staged or (ckpts.is_dir() and any(ckpts.iterdir()))
        ):
            args.resume = run_dir  # a resubmitted job: continue where the last driver stopped
    m, k = cfg.train.groups, cfg.cluster.ranks_per_group
    shown = run_dir.absolute()  # a relative path means nothing once the console is elsewhere
    print(f"streamloco train: {m} groups x {k} ranks on Ray, run dir {shown}", flush=True)
    warn_if_token_readable()  # a token others can read gives them the cluster
    try:
        if cfg.stages.steps:  # multistage: one run per stage under run_dir/stage-<i>
            from streamloco.launcher.stages import train_stages

            cfg, result = train_stages(
                cfg,
                run_dir,
                resume=args.resume is not None,
                progress=not args.no_progress,
                faults=[Fault.parse(f) for f in args.inject],
            )
            if result is None:
                print(f"streamloco train: every stage of {shown} is done")
                return 0
        else:
            result = train(
                cfg,
                run_dir,
                resume=args.resume is not None,
                progress=not args.no_progress,
                faults=[Fault.parse(f) for f in args.inject],
            )
    except TrainingFailed as e:
        print(f"streamloco: training failed: {e}", file=sys.stderr)
        print(
            f"streamloco: continue from the last checkpoint: streamloco train --resume {shown}",
            file=sys.stderr,
        )
        return 1
    print(summarize(cfg, result))
    print(f"checkpoints: {shown / 'checkpoints'}")
    if cfg.run.tensorboard:
        print(f"watch it: tensorboard --logdir {shown / 'tb'}")
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


def cmd_data_demo(args: argparse.Namespace, overrides: list[str]) -> int:
    from streamloco.data_pipeline.demo import write_demo_corpus

    if overrides:
        raise ValueError(f"data demo takes no config overrides: {' '.join(overrides)}")
    stats = write_demo_corpus(Path(args.out_dir))
    print(stats.report())
    print(
        f"wrote {args.out_dir}/*.jsonl.zst; next: streamloco tokenizer train --config "
        "configs/demo.toml"
    )
    return 0


def cmd_data_tokenize(args: argparse.Namespace, overrides: list[str]) -> int:
    import os

    from streamloco.data_pipeline.executor import Executor, LocalExecutor
    from streamloco.data_pipeline.pipeline import manifest_summary, tokenize_from_config
    from streamloco.data_pipeline.read_stats import format_skips

    cfg = _load(args, overrides)
    kind, workers = cfg.data.executor, cfg.data.workers or None
    if kind == "auto":  # a Ray job (or a shell pointed at a cluster) has RAY_ADDRESS set
        kind = "ray" if os.environ.get("RAY_ADDRESS") else "processes"
    executor: Executor
    if kind == "ray":  # imported only here: a local run never pays for importing Ray
        from streamloco.launcher.ray_executor import RayExecutor

        executor = RayExecutor(workers)
    else:
        executor = LocalExecutor(workers)
    manifest = tokenize_from_config(
        cfg, executor, progress=not args.no_progress, rebuild=args.rebuild
    )
    print(manifest_summary(manifest))
    if manifest.corpus_read is not None:
        print(format_skips(manifest.corpus_read))
    return 0


def cmd_tokenizer_train(args: argparse.Namespace, overrides: list[str]) -> int:
    import json

    from streamloco.data_pipeline.pipeline import train_tokenizer_from_config
    from streamloco.data_pipeline.read_stats import format_skips
    from streamloco.tokenizer.model import sidecar_path

    cfg = _load(args, overrides)
    model = train_tokenizer_from_config(cfg)
    info = json.loads(sidecar_path(model).read_text(encoding="utf-8"))
    print(f"wrote {model} and {sidecar_path(model)} (sha256 {info['sha256'][:16]}...)")
    print(format_skips(info["corpus_read"]))
    return 0


def cmd_tokenizer_report(args: argparse.Namespace, overrides: list[str]) -> int:
    from streamloco.data_pipeline.pipeline import report_from_config

    cfg = _load(args, overrides)
    print(report_from_config(cfg, args.reference))
    return 0


def cmd_export(args: argparse.Namespace, overrides: list[str]) -> int:
    from streamloco.hf.export import write_export
    from streamloco.launcher.run_model import load_run_model, run_tokenizer

    if overrides:
        raise ValueError(f"export takes no config overrides: {' '.join(overrides)}")
    run = load_run_model(args.run_dir)
    tok = run_tokenizer(run, args.tokenizer)
    provenance = {
        "run_dir": str(Path(args.run_dir).absolute()),
        "checkpoint": str(run.checkpoint.absolute()),
        "step": run.step,
        "tokenizer_sha256": tok.sha256 if tok is not None else "",
    }
    out = write_export(args.out_dir, run.args, run.state, tok, provenance, overwrite=args.overwrite)
    n = sum(
        t.numel() for k, t in run.state.items() if k != "head.weight" or not run.args.tie_embeddings
    )
    print(
        f"exported {run.checkpoint} (step {run.step}, {n:,} parameters, "
        f"{'tied' if run.args.tie_embeddings else 'untied'} embeddings) to {out.absolute()}"
    )
    if tok is None:
        print("no tokenizer: the run trained on synthetic tokens")
    print(f"load it: transformers.AutoModelForCausalLM.from_pretrained({str(out.absolute())!r})")
    return 0


def _load_for_generation(path: Path):
    """(model, tokenizer) from an export directory or a run directory."""
    from streamloco.hf.export import read_export
    from streamloco.workers.model import Transformer

    if (path / "config.json").is_file():
        margs, state, tok = read_export(path)
    elif (path / "checkpoints").is_dir():
        from streamloco.launcher.run_model import load_run_model, run_tokenizer

        run = load_run_model(path)
        margs, state, tok = run.args, run.state, run_tokenizer(run)
    else:
        raise ValueError(f"{path}: neither an export (config.json) nor a run dir (checkpoints/)")
    if tok is None:
        raise ValueError(f"{path}: no tokenizer (a run on synthetic tokens has no text to write)")
    model = Transformer(margs)
    model.load_state_dict(state)
    return model, tok


def cmd_generate(args: argparse.Namespace, overrides: list[str]) -> int:
    import torch

    from streamloco.hf.generate import sample

    if overrides:
        raise ValueError(f"generate takes no config overrides: {' '.join(overrides)}")
    torch.set_num_threads(args.threads)
    model, tok = _load_for_generation(args.path)
    # A document starts after </s> in the training stream (shards are documents + </s>).
    prompt = [tok.eos_id, *tok.encode(args.prompt)]
    for i in range(args.samples):
        new = sample(
            model,
            prompt,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed + i,
            stop=tok.eos_id,
        )
        if args.samples > 1:
            print(f"--- sample {i + 1} (seed {args.seed + i})")
        print(tok.normalize(args.prompt) + tok.decode(new))
    return 0


def cmd_tokenizer_extend(args: argparse.Namespace, overrides: list[str]) -> int:
    from streamloco.data_pipeline.pipeline import CorpusReader, tokenizer_model_path
    from streamloco.tokenizer.extend import extend_tokenizer
    from streamloco.tokenizer.model import Tokenizer
    from streamloco.tokenizer.report import fertility_report

    cfg = _load(args, overrides)
    langs = sorted({x.strip() for x in args.langs.split(",") if x.strip()})
    if not langs:
        raise ValueError("--langs: give the new languages, e.g. --langs nah,oto,mix")
    base = Tokenizer.load(tokenizer_model_path(cfg))
    train_docs = [d for d in CorpusReader(cfg, "train")() if d.lang in langs]
    missing = sorted(set(langs) - {d.lang for d in train_docs})
    if missing:
        raise ValueError(f"--langs: no training documents in corpus.inputs for {missing}")
    ext, added = extend_tokenizer(
        base, train_docs, args.out, args.new_vocab, args.max_new or args.new_vocab
    )
    print(
        f"wrote {ext.path}: {base.vocab_size} base pieces (ids unchanged) + {added} new "
        f"= {ext.vocab_size}; trained on {', '.join(langs)}"
    )
    held_out = list(CorpusReader(cfg, "validation")())
    before = {r["lang"]: r for r in fertility_report(base, held_out, args.reference)}
    after = {r["lang"]: r for r in fertility_report(ext, held_out, args.reference)}
    print("\nheld-out (validation split) tokens/char and parity, before -> after:")
    print("| lang | docs | tokens/char before | after | parity before | after |")
    print("|---|---:|---:|---:|---:|---:|")
    for lang, b in before.items():
        a = after[lang]
        pb = "-" if b["parity"] is None else f"{b['parity']:.2f}"
        pa = "-" if a["parity"] is None else f"{a['parity']:.2f}"
        print(
            f"| {lang}{' (new)' if lang in langs else ''} | {b['documents']} | "
            f"{b['tokens_per_char']:.3f} | {a['tokens_per_char']:.3f} | {pb} | {pa} |"
        )
    if args.base_model is not None:
        _extend_model(args, base, ext, [d for d in held_out if d.lang in langs], langs)
    return 0


def _extend_model(args, base, ext, held_out, langs) -> None:
    """Resize the base model's embeddings for `ext`, compare the inits, write the chosen one."""
    from streamloco.hf.embeddings import INIT_MODES, extend_embeddings, text_loss
    from streamloco.hf.export import read_export, write_export
    from streamloco.hf.init import check_vocabulary
    from streamloco.workers.model import Transformer

    margs, state, tok = read_export(args.base_model)
    if tok is not None:
        check_vocabulary(tok, base, str(args.base_model))
    if args.model_out is None:
        raise ValueError("--base-model needs --model-out DIR (where the resized model goes)")
    print(f"\ninitial loss on held-out {', '.join(langs)} text (extended tokenizer):")
    print("| new rows | " + " | ".join(langs) + " |")
    print("|---|" + "---:|" * len(langs))
    chosen = None
    for mode in INIT_MODES:
        new_args, new_state = extend_embeddings(state, margs, base, ext, mode, seed=args.seed)
        model = Transformer(new_args)
        model.load_state_dict(new_state)
        losses = [
            text_loss(model, ext, [d for d in held_out if d.lang == lang])[0] for lang in langs
        ]
        print(f"| {mode} | " + " | ".join(f"{x:.3f}" for x in losses) + " |")
        if mode == args.init:
            chosen = (new_args, new_state)
    assert chosen is not None
    prov = {"extended_from": str(args.base_model), "init": args.init, "base_sha256": base.sha256}
    out = write_export(args.model_out, chosen[0], chosen[1], ext, prov)
    print(
        f"wrote {out} ({args.init} init, vocab {chosen[0].vocab_size}); train from it with "
        f"--model.init_from={out} --model.vocab_size={chosen[0].vocab_size} "
        f"--tokenizer.path={str(ext.path)[: -len('.model')]}"
    )


def _report_only_step_s(overrides: list[str]) -> float | None:
    """`--bench.wallclock_step_s=S` given with --report-only (validated as in a bench file);
    None without it."""
    from streamloco.bench.spec import bench_from_dict
    from streamloco.config import _parse_override

    for arg in overrides:
        key, value = _parse_override(arg)
        if key == "bench.wallclock_step_s":
            return bench_from_dict({"wallclock_step_s": value}).wallclock_step_s
    return None


def cmd_bench(args: argparse.Namespace, overrides: list[str]) -> int:
    import datetime as dt
    import shlex

    from streamloco.bench import report
    from streamloco.bench.spec import load_bench, preset_path

    if args.report_only is not None:
        saved = args.report_only / "results.json"
        if not saved.is_file():
            raise ValueError(f"--report-only {args.report_only}: no results.json there")
        results = report.read_results(saved)
        step_s = _report_only_step_s(overrides)
        if step_s is not None:  # the equal-wall-clock view for the user's own step time
            from streamloco.bench.wallclock import with_step_s

            results = with_step_s(results, step_s)
        for path in report.write_report(results, args.report_only):
            print(path)
        return 0
    if args.config is not None and args.preset is not None:
        raise ValueError("give --preset or --config, not both")
    preset = args.preset or ("custom" if args.config else "default")
    path = args.config or preset_path(preset)
    bench, cfg, base = load_bench(path, overrides)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or Path(cfg.run.out_dir) / f"bench-{preset}-{stamp}"
    from streamloco.bench.run import run_bench

    given = ["--preset", preset] if args.config is None else ["--config", str(path)]
    command = shlex.join(["streamloco", "bench", *given, *overrides])
    print(f"streamloco bench: {path} -> {out}", flush=True)
    results = run_bench(
        bench, cfg, base, out, preset=preset, command=command, progress=not args.no_progress
    )
    print(report.markdown(results))
    print(f"report: {out / 'results.md'}")
    missed = [t for t in results["targets"] if not t["met"]]
    if missed:
        print(f"streamloco bench: {len(missed)} target(s) missed (see the report)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False everywhere: argparse would take `--resum x` for `--resume x` (and would
    # quietly change meaning once a second flag shares the prefix). Subparsers do not inherit it
    # (add_parser builds each from its own keyword arguments), so every one is given it.
    parser = argparse.ArgumentParser(
        prog="streamloco",
        description="Streaming DiLoCo pretraining across loosely connected compute islands.",
        epilog="Config overrides: --section.key=value (see `streamloco config --explain`).",
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func, help_: str, parent=sub, config: bool = True):
        p = parent.add_parser(name, help=help_, description=help_, allow_abbrev=False)
        if config:
            p.add_argument("--config", type=Path, default=None, help="TOML run config")
        p.set_defaults(func=func)
        return p

    p = add(
        "simulate",
        cmd_simulate,
        "train M worker groups as threads of one process over the in-process transport",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p = add(
        "train",
        cmd_train,
        "train M worker groups of K Ray actors each (joins RAY_ADDRESS or starts a local Ray)",
    )
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR", help="continue a run")
    p.add_argument(
        "--inject",
        action="append",
        default=[],
        metavar="KIND:GROUP@STEP[=VALUE]",
        help="fault drill: kill, delay (s per step), nan or corrupt a group (repeatable)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p = add(
        "bench",
        cmd_bench,
        "DDP vs DiLoCo vs Streaming DiLoCo at equal tokens, plus compute utilization against "
        "link bandwidth; writes results.json, results.md and plots",
        config=False,
    )
    p.add_argument(
        "--preset", default=None, help="configs/bench/NAME.toml: quick, default, quality, gpu"
    )
    p.add_argument("--config", type=Path, default=None, help="a bench config file instead")
    p.add_argument("--out", type=Path, default=None, help="output dir (reruns reuse its runs)")
    p.add_argument(
        "--report-only",
        type=Path,
        default=None,
        metavar="DIR",
        help="rebuild results.md and the plots from DIR/results.json",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p = add(
        "export",
        cmd_export,
        "write the global model of a run's newest valid checkpoint in the Hugging Face Llama "
        "layout (safetensors, config.json, tokenizer)",
        config=False,
    )
    p.add_argument("run_dir", type=Path, help="run directory (holds checkpoints/)")
    p.add_argument("out_dir", type=Path, help="new directory to write")
    p.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        metavar="MODEL",
        help="the run's tokenizer .model if not at its configured tokenizer.path",
    )
    p.add_argument("--overwrite", action="store_true", help="replace out_dir if it exists")
    p = add(
        "generate",
        cmd_generate,
        "sample text from a run directory or an export",
        config=False,
    )
    p.add_argument("path", type=Path, help="run directory or export directory")
    p.add_argument("--prompt", default="", help="text to continue")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass")
    p.add_argument("--max-tokens", type=int, default=100, help="new tokens at most")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--samples", type=int, default=1, help="samples (seeds seed, seed+1, ...)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p = add("config", cmd_config, "print the resolved config as TOML")
    p.add_argument("--explain", action="store_true", help="list every key with its doc")
    add("fragments", cmd_fragments, "show how the model is cut into fragments")

    data = sub.add_parser(
        "data", help="corpus and token shards", allow_abbrev=False
    ).add_subparsers(dest="data_command", required=True)
    p = add("demo", cmd_data_demo, "write the embedded low-resource demo corpus", data, False)
    p.add_argument("out_dir", help="output directory (e.g. data/demo)")
    p = add("tokenize", cmd_data_tokenize, "tokenize corpus.inputs into zstd token shards", data)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--rebuild", action="store_true", help="start over if the corpus or options changed"
    )

    tok = sub.add_parser(
        "tokenizer", help="SentencePiece tokenizer", allow_abbrev=False
    ).add_subparsers(dest="tokenizer_command", required=True)
    add(
        "train",
        cmd_tokenizer_train,
        "train SentencePiece on the train split with temperature sampling over languages",
        tok,
    )
    p = add(
        "report",
        cmd_tokenizer_report,
        "fertility and parity per language on the validation split",
        tok,
    )
    p.add_argument("--reference", default="spa", help="language parity is measured against")
    p = add(
        "extend",
        cmd_tokenizer_extend,
        "add pieces for new languages to the trained tokenizer (tokenizer.path), keeping every "
        "base id; report fertility before and after on the validation split",
        tok,
    )
    p.add_argument("--langs", required=True, help="comma-separated new language codes")
    p.add_argument("--out", type=Path, required=True, help="prefix of the extended tokenizer")
    p.add_argument("--new-vocab", type=int, default=2000, help="pieces trained on the new text")
    p.add_argument("--max-new", type=int, default=0, help="add at most this many (0: all new)")
    p.add_argument("--reference", default="spa", help="language parity is measured against")
    p.add_argument("--base-model", type=Path, default=None, help="export dir to resize")
    p.add_argument("--model-out", type=Path, default=None, help="where the resized model goes")
    p.add_argument("--init", choices=["mean", "random"], default="mean", help="new rows' init")
    p.add_argument("--seed", type=int, default=0, help="seed of the random init")
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

"""The command line end to end: a smoke run writes TensorBoard files that TensorBoard reads."""

import argparse
import os
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import ROOT
from streamloco.cli import build_parser, main
from streamloco.config import load_config
from streamloco.launcher.checkpoint import save_checkpoint


def test_help_lists_only_working_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    # exactly the subcommands that work today
    assert "{simulate,train,bench,export,generate,config,fragments,data,tokenizer}" in out


def test_simulate_writes_tensorboard_events_and_prints_a_summary(tmp_path, capsys):
    rc = main(
        [
            "simulate",
            "--config",
            "configs/smoke.toml",
            "--no-progress",
            f"--run.out_dir={tmp_path}",
            "--train.steps=24",
            "--train.eval_every=12",
            "--outer.sync_every=8",
            "--outer.fragments=2",
            "--inner.warmup_steps=4",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "final eval loss of the global parameters" in out
    assert "global parameters identical on all groups: True" in out
    assert "fewer bytes" in out and "tensorboard --logdir" in out

    run_dir = tmp_path / "smoke"
    assert (run_dir / "config.toml").is_file()
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in (
        "train/loss/group0",
        "train/loss/group1",
        "eval/loss",
        "train/lr_inner",
        "comm/bytes_sent/group0",
        "comm/ratio_vs_ddp_bf16",
        "outer/quant_rel_error/fragment0",
        "outer/quant_rel_error/fragment1",
    ):
        assert tag in tags, tag
    assert [e.step for e in acc.Scalars("eval/loss")] == [12, 24]
    assert len(acc.Scalars("train/loss/group0")) == 24
    sent = [e.value for e in acc.Scalars("comm/bytes_sent/group0")]
    assert sent == sorted(sent) and sent[-1] > 0  # cumulative counter
    assert acc.Scalars("comm/ratio_vs_ddp_bf16")[-1].value > 10


def test_bad_config_exits_nonzero_naming_the_key(capsys):
    rc = main(["simulate", "--config", "configs/smoke.toml", "--outer.overlap=10"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "outer.overlap" in err and "smoke.toml" in err


ABBREVIATED = [
    (["train", "--resum", "runs/x"], "--resum"),  # would have meant --resume
    (["train", "--resum=runs/x"], "--resum=runs/x"),
    (["simulate", "--no-prog"], "--no-prog"),  # --no-progress
    (["bench", "--pre", "quick"], "--pre"),  # --preset
    (["config", "--conf", "configs/demo.toml"], "--conf"),  # --config
    (["data", "tokenize", "--no-prog"], "--no-prog"),  # a sub-subcommand
    (["tokenizer", "report", "--ref", "eng"], "--ref"),  # --reference
]


@pytest.mark.parametrize(("argv", "flag"), ABBREVIATED, ids=[" ".join(a) for a, _ in ABBREVIATED])
def test_abbreviated_flags_are_refused(argv, flag, capsys, tmp_path, monkeypatch):
    # Should a flag be taken for the one it abbreviates, the command must fail fast and write
    # nothing into the repository: an invalid override, run from an empty directory.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main([*argv, "--train.groups=0"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"unrecognized arguments: {flag}" in err, err


def test_every_parser_refuses_abbreviations():
    # A subcommand added later without allow_abbrev=False would accept them again.
    def walk(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    yield from walk(child)

    parsers = list(walk(build_parser()))
    assert len(parsers) > 8
    assert [p.prog for p in parsers if p.allow_abbrev] == []


def test_config_and_fragments_subcommands(capsys):
    assert main(["config", "--config", "configs/demo.toml", "--outer.fragments=2"]) == 0
    assert "fragments = 2" in capsys.readouterr().out
    assert (
        main(
            [
                "fragments",
                "--model.size=124m",
                "--model.vocab_size=50304",
                "--outer.fragments=4",
                "--outer.sync_every=100",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "123,587,328" in out and out.count("%") == 4


def test_resume_reports_a_damaged_checkpoint_once(tmp_path):
    # A fresh interpreter, as `streamloco train --resume` runs: default logging and warnings.
    run_dir = tmp_path / "run"
    cfg = load_config(
        ROOT / "configs" / "smoke.toml", ["--train.steps=2", "--inner.warmup_steps=1"]
    )
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.toml").write_text(cfg.to_toml())
    for step in (2, 3):
        save_checkpoint(
            run_dir / "checkpoints",
            step,
            {"step": step, "w": torch.ones(4)},
            meta={"config_toml": cfg.to_toml()},
        )
    newest = run_dir / "checkpoints" / "step-00000003" / "state.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x01
    newest.write_bytes(bytes(data))
    # Step 2 loads, then check_resumable stops the run (train.steps=2: nothing left to do)
    # before Ray starts, so this costs an import of Ray, no cluster.
    proc = subprocess.run(
        [sys.executable, "-m", "streamloco.cli", "train", "--resume", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "nothing left to do" in proc.stderr, proc.stderr
    assert proc.stderr.count("sha256 mismatch") == 1, proc.stderr
    assert proc.stderr.count("step-00000003") == 1, proc.stderr


def test_importing_the_cli_does_not_import_torch():
    # Spawned tokenizer workers re-import the CLI's main module: torch there would cost each
    # worker ~1.2 s of start-up for nothing (and `streamloco --help` as much).
    code = "import sys, streamloco.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

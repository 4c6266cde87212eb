"""`scripts/submit_job.sh` against a real Ray head with token authentication on.

The head is a `ray start --head --block` subprocess with its own temp dir, free ports and its own
token file (RAY_AUTH_TOKEN_PATH), so nothing depends on ~/.ray or on another Ray instance, and
this process never calls `ray.init()` (the session-wide `local_ray` fixture stays untouched).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import ROOT

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

SCRIPT = ROOT / "scripts" / "submit_job.sh"
VENV_BIN = Path(sys.executable).parent  # `ray` and the `python` a job's entrypoint runs
HEAD_START_TIMEOUT_S = 90
JOB_TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(token_path: Path) -> dict[str, str]:
    """This process's environment without any RAY_* (ray.init() in this process may have set
    some), with token auth on and this head's token, and the venv's `ray`/`python` first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    local = "127.0.0.1,localhost"  # an HTTP proxy of the CI machine must not see the head
    no_proxy = ",".join(filter(None, [env.get("no_proxy", env.get("NO_PROXY")), local]))
    env.update(
        no_proxy=no_proxy,
        NO_PROXY=no_proxy,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_path),
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def _get_json(url: str, token: str) -> object:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with no_proxy.open(req, timeout=5) as r:
        return json.load(r)


def _stop(proc: subprocess.Popen, grace_s: float = 30) -> None:
    if proc.poll() is None:
        proc.terminate()  # `ray start --block` shuts its node down on SIGTERM
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what it started
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def ray_head():
    # Short dir: Ray's Unix sockets live below it and socket paths are limited to ~107 chars.
    tmp = Path(tempfile.mkdtemp(prefix="slj-", dir="/tmp" if os.path.isdir("/tmp") else None))
    token = secrets.token_hex(32)
    token_path = tmp / "auth_token"
    token_path.write_text(token)
    token_path.chmod(0o600)
    env = _clean_env(token_path)
    dash_port = _free_port()
    ports = {
        "--port": _free_port(),
        "--dashboard-port": dash_port,
        "--ray-client-server-port": _free_port(),
        "--node-manager-port": _free_port(),
        "--object-manager-port": _free_port(),
        "--dashboard-agent-listen-port": _free_port(),
        "--dashboard-agent-grpc-port": _free_port(),
        "--runtime-env-agent-port": _free_port(),
        "--metrics-export-port": _free_port(),
    }
    cmd = [
        str(VENV_BIN / "ray"),
        "start",
        "--head",
        "--block",
        f"--temp-dir={tmp / 'ray'}",
        "--num-cpus=2",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        "--disable-usage-stats",
        *(f"{flag}={port}" for flag, port in ports.items()),
    ]
    log_path = tmp / "head.log"
    with open(log_path, "w") as log:
        head = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    address = f"http://127.0.0.1:{dash_port}"
    try:
        deadline = time.monotonic() + HEAD_START_TIMEOUT_S
        while True:
            if head.poll() is not None:
                pytest.fail(f"ray start --head exited {head.returncode}:\n{log_path.read_text()}")
            try:
                _get_json(f"{address}/api/jobs/", token)  # the job API answers, token accepted
                break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"Ray head's job API at {address} not up after {HEAD_START_TIMEOUT_S}s:\n"
                    + log_path.read_text()[-4000:]
                )
            time.sleep(1)
        yield {"address": address, "env": env, "token": token}
    finally:
        _stop(head)
        shutil.rmtree(tmp, ignore_errors=True)


def _submit(ray_head, *streamloco_args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), "--address", ray_head["address"], "--", *streamloco_args],
        env=ray_head["env"],
        cwd=cwd,  # not the repo root: the config path must resolve inside the upload
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
    )


def test_train_job_runs_and_writes_tensorboard_events(ray_head, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "runs"
    r = _submit(
        ray_head,
        "train",
        "--config",
        "configs/smoke.toml",
        f"--run.out_dir={out}",
        "--run.name=job",
        cwd=tmp_path,
    )
    log = r.stdout + r.stderr
    assert r.returncode == 0, log
    job_id = re.search(r"streamloco-\d{8}-\d{6}-\d+", log).group(0)
    info = _get_json(f"{ray_head['address']}/api/jobs/{job_id}", ray_head["token"])
    assert info["status"] == "SUCCEEDED", info
    assert f"run dir {out / 'job'}\n" in log, log
    assert "readable by other users" not in log, log  # the head's token file is 600
    assert f"tensorboard --logdir {out / 'job' / 'tb'}\n" in log, log

    events = sorted((out / "job" / "tb").glob("events.out.tfevents.*"))
    assert events, f"no TensorBoard events under {out / 'job' / 'tb'}:\n{log}"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert "train/loss/group0" in acc.Tags()["scalars"], acc.Tags()["scalars"]
    assert acc.Scalars("train/loss/group0")


def test_missing_config_fails_with_the_error_shown(ray_head, tmp_path):
    r = _submit(
        ray_head,
        "train",
        "--config",
        "configs/no_such_config.toml",
        f"--run.out_dir={tmp_path}",
        "--run.name=bad",
        cwd=tmp_path,
    )
    log = r.stdout + r.stderr
    assert r.returncode != 0, log
    assert "configs/no_such_config.toml does not exist" in log, log
    assert "did not succeed" in r.stderr, log


def test_relative_out_dir_in_a_job_is_refused_with_the_fix(ray_head, tmp_path):
    # Without --run.out_dir the run would land in the job's copy of the upload (config default
    # run.out_dir = "runs"), out of the submitter's sight: the job must fail before training.
    r = _submit(ray_head, "train", "--config", "configs/smoke.toml", "--run.name=rel", cwd=tmp_path)
    log = r.stdout + r.stderr
    assert r.returncode != 0, log
    assert "run.out_dir: runs/rel is a relative path, and inside Ray job streamloco-" in log, log
    assert "--run.out_dir=/shared/runs" in log, log
    assert "did not succeed" in r.stderr, log
    assert "streamloco train:" not in log, log  # failed before anything was trained or shown


def _submit_to_nowhere(env: dict) -> tuple[subprocess.CompletedProcess, str]:
    """submit_job.sh against a free port where no head listens; it must fail."""
    address = f"http://127.0.0.1:{_free_port()}"
    r = subprocess.run(
        [str(SCRIPT), "--address", address, "--", "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode != 0
    return r, address


def test_unreachable_head_is_one_clear_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    r, address = _submit_to_nowhere(env)
    assert f"no Ray head answers at {address}" in r.stderr, r.stderr


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o600], ids=oct)
def test_a_token_file_others_can_read_is_warned_about_before_submitting(tmp_path, mode):
    token_path = tmp_path / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(mode)
    env = _clean_env(token_path)
    r, address = _submit_to_nowhere(env)  # the token check comes before any connection
    warning = f"submit_job.sh: warning: Ray's auth token {token_path} is readable by other users"
    assert (warning in r.stderr) == bool(mode & 0o044), r.stderr
    assert (f"chmod 600 {token_path}" in r.stderr) == bool(mode & 0o044), r.stderr
    assert f"no Ray head answers at {address}" in r.stderr, r.stderr

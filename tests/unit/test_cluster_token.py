"""The warning about a Ray auth token file that other users can read (launcher/cluster.py).

Real files with real modes; Ray's lookup order comes from the environment, set with monkeypatch.
The same check in scripts/submit_job.sh: tests/integration/test_job_submit.py.
"""

from __future__ import annotations

import pytest

from streamloco.launcher.cluster import token_file, token_file_warning, warn_if_token_readable


@pytest.fixture
def token_env(monkeypatch, tmp_path):
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


def _token(path, mode):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("0" * 64)
    path.chmod(mode)
    return path


def test_token_file_follows_rays_order(token_env, tmp_path):
    assert token_file() == tmp_path / "home" / ".ray" / "auth_token"
    token_env.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    assert token_file() == tmp_path / "tok"
    token_env.setenv("RAY_AUTH_TOKEN", "0" * 64)  # the token itself: no file involved
    assert token_file() is None


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604], ids=oct)
def test_a_token_others_can_read_is_warned_about_with_the_fix(token_env, tmp_path, mode):
    tok = _token(tmp_path / "home" / ".ray" / "auth_token", mode)
    message = token_file_warning()
    assert message is not None
    assert f"{tok} is readable by other users (mode {mode:03o})" in message, message
    assert message.endswith(f"chmod 600 {tok}"), message


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700], ids=oct)
def test_a_private_token_is_fine(token_env, tmp_path, mode):
    _token(tmp_path / "home" / ".ray" / "auth_token", mode)
    assert token_file_warning() is None


def test_no_token_file_is_no_warning(token_env):
    assert token_file_warning() is None


def test_the_file_named_by_ray_auth_token_path_is_checked(token_env, tmp_path):
    _token(tmp_path / "home" / ".ray" / "auth_token", 0o600)
    tok = _token(tmp_path / "elsewhere" / "tok", 0o644)
    token_env.setenv("RAY_AUTH_TOKEN_PATH", str(tok))
    assert f"chmod 600 {tok}" in token_file_warning()
    token_env.setenv("RAY_AUTH_TOKEN", "0" * 64)  # Ray reads no file then
    assert token_file_warning() is None


def test_warn_prints_to_stderr_only_when_readable(token_env, tmp_path, capsys):
    tok = _token(tmp_path / "home" / ".ray" / "auth_token", 0o600)
    warn_if_token_readable()
    assert capsys.readouterr() == ("", "")
    tok.chmod(0o644)
    warn_if_token_readable()
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("streamloco: warning: Ray's auth token ") and "chmod 600" in err, err


def test_train_warns_before_it_starts(token_env, tmp_path, capsys):
    from helpers import SMOKE
    from streamloco.cli import main

    tok = _token(tmp_path / "home" / ".ray" / "auth_token", 0o644)
    # A data.dir without shards stops train() in its preflight, before Ray is joined.
    argv = ["train", "--config", str(SMOKE), "--data.source=shards", f"--data.dir={tmp_path}"]
    rc = main([*argv, f"--run.out_dir={tmp_path}", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"streamloco: warning: Ray's auth token {tok} is readable" in err, err
    assert "has no manifest.json" in err, err

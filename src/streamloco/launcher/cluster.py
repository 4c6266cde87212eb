"""Joining Ray: the one way every driver-side entry point connects (train, bench, tokenize)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import ray


def connect() -> bool:
    """ray.init() unless already connected; True if this call started the connection.

    `ray.init()` finds the cluster itself (RAY_ADDRESS, a `ray start` on this machine) or starts
    a local instance. Worker logs go to the driver's console; Ray leaves our logging alone.
    """
    if ray.is_initialized():
        return False
    ray.init(log_to_driver=True, configure_logging=False)
    return True


def total_cpus() -> float:
    """The CPUs of the whole cluster this process is connected to (Ray's logical count)."""
    return float(ray.cluster_resources().get("CPU", 1))


def token_file() -> Path | None:
    """The file Ray 2.60 reads its auth token from; None when RAY_AUTH_TOKEN holds the token.

    Ray's order: RAY_AUTH_TOKEN, else the file named by RAY_AUTH_TOKEN_PATH, else
    ~/.ray/auth_token (the token loader's messages in ray/_raylet.so, and
    ray/_private/authentication/authentication_token_setup.py for the default path).
    """
    if os.environ.get("RAY_AUTH_TOKEN"):
        return None
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def token_file_warning(path: Path | None = None) -> str | None:
    """A warning with the fix when the token file (default: `token_file()`) can be read by users
    other than its owner; None when it cannot, or there is no such file."""
    path = token_file() if path is None else path
    if path is None or not path.is_file():
        return None
    mode = path.stat().st_mode & 0o777
    # Ray writes a generated token with the umask's mode, typically 644: readable by everyone on
    # the node, and the token is all it takes to run code on the cluster.
    if not mode & 0o044:
        return None
    return (
        f"Ray's auth token {path} is readable by other users (mode {mode:03o}), and with it "
        f"anyone can run code on the cluster: chmod 600 {path}"
    )


def warn_if_token_readable() -> None:
    """Print `token_file_warning()` to stderr, if there is one (it never stops a run)."""
    message = token_file_warning()
    if message is not None:
        print(f"streamloco: warning: {message}", file=sys.stderr, flush=True)

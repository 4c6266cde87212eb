"""Joining Ray: the one way every driver-side entry point connects (train, bench, tokenize)."""

from __future__ import annotations

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

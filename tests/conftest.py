"""Shared fixtures: one local Ray instance serves every test that asks for it (~7 s to start)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def local_ray():
    """A real local Ray instance with 2 logical CPUs, started once per test session."""
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        # Every worker process gets one OpenMP thread: two actors on two cores must not fight.
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
    )
    yield ray
    ray.shutdown()

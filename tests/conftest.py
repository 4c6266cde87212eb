"""Shared fixtures and the test tiers.

tests/unit: pure code, threads and gloo on loopback (no Ray); `make test-fast` runs it minus
`slow`. tests/integration: a real local Ray, subprocesses, end to end; every test there is
marked `integration`. One local Ray instance serves every test that asks for it (~7 s to start).
"""

from __future__ import annotations

from pathlib import Path

import pytest

INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if INTEGRATION in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def local_ray():
    """A real local Ray instance with 2 logical CPUs and the node label island=local, started
    once per test session."""
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        # Every worker process gets one OpenMP thread: two actors on two cores must not fight.
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
        labels={"island": "local"},  # a node label groups can be pinned to (cluster.islands)
    )
    yield ray
    ray.shutdown()


@pytest.fixture
def cuda_device():
    """A CUDA device for tests marked `gpu`; skipped (with the reason) where there is none."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    return torch.device("cuda", 0)

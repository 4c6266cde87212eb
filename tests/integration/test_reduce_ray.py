"""The two-phase reduce over a real local Ray with M=4 groups: the same global parameters and
the same byte counters as the in-process run, counters near the formula, and every round of the
three coordinator lanes forgotten."""

from __future__ import annotations

import sys
import threading
import uuid

import pytest
import torch

ray = pytest.importorskip("ray")

from streamloco.config import OuterConfig  # noqa: E402
from streamloco.launcher.ray_transport import (  # noqa: E402
    RayTransport,
    create_coordinator,
    get_coordinator,
)
from streamloco.outer_optim.engine import StreamingEngine  # noqa: E402
from streamloco.outer_optim.reduce import bytes_per_round  # noqa: E402
from streamloco.outer_optim.transport import InProcessHub, Transport  # noqa: E402
from streamloco.workers.model import Transformer, model_args  # noqa: E402
from streamloco.workers.synthetic import MarkovLanguage, SyntheticStream  # noqa: E402

pytestmark = pytest.mark.ray
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

M, VOCAB, SEQ, BATCH, STEPS = 4, 32, 16, 4, 12
OPTS = OuterConfig(
    sync_every=4, fragments=2, overlap=1, alpha=0.5, codec="e3m0", reduce="two_phase"
)


class _Group:
    """One group's model, inner optimizer, data and engine (built before any thread starts:
    torch's global RNG, the initialization, is shared by threads)."""

    def __init__(self, transport: Transport) -> None:
        torch.manual_seed(0)  # every group starts from the same initialization
        self.model = Transformer(model_args("tiny", VOCAB, SEQ))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=3e-3, foreach=False)
        self.engine = StreamingEngine(self.model, OPTS, transport, timeout_s=60)
        language = MarkovLanguage(VOCAB, branching=2, seed=0)
        self.stream = SyntheticStream(language, BATCH, SEQ, seed=1, stream=transport.group)

    def train(self) -> tuple[list[torch.Tensor], tuple[int, int, int]]:
        """(global parameters, (bytes sent, bytes received, rounds)) after the run."""
        for _ in range(STEPS):
            batch = self.stream.next()
            loss = self.model.loss(batch[:, :-1], batch[:, 1:])
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            self.engine.step()
        self.engine.finish()
        s = self.engine.transport.stats
        params = [g.clone() for g in self.engine.global_params]
        return params, (s.bytes_sent, s.bytes_received, s.exchanges)


@ray.remote(num_cpus=0)
def _group(name: str, group: int):
    torch.set_num_threads(1)
    return _Group(RayTransport(get_coordinator(name), group, M)).train()


def test_two_phase_over_ray_matches_the_in_process_run_globals_and_bytes(local_ray):
    name = f"coord-{uuid.uuid4().hex[:8]}"
    coord = create_coordinator(name, M)
    try:
        over_ray = ray.get([_group.remote(name, g) for g in range(M)], timeout=240)
        assert ray.get(coord.rounds_open.remote()) == 0  # scatter and reduced rounds forgotten
    finally:
        ray.kill(coord)

    hub = InProcessHub(M)
    groups = [_Group(hub.transport(g)) for g in range(M)]
    in_process: list = [None] * M
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the same kernels as the single-threaded Ray workers
    try:
        threads = [
            threading.Thread(
                target=lambda g: in_process.__setitem__(g, groups[g].train()), args=(g,)
            )
            for g in range(M)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
    finally:
        torch.set_num_threads(before)
    assert all(r is not None for r in in_process), "in-process replica failed"

    ref = over_ray[0][0]
    for params, _ in [*over_ray, *in_process]:
        for a, b in zip(params, ref, strict=True):
            assert torch.equal(a, b)  # bit-identical on every group, Ray or threads
    for g in range(M):
        assert over_ray[g][1] == in_process[g][1], g  # bytes do not depend on the transport
    # the formula: per round about P up and 2(M-1)/M P down, so down/up ~ 1.5 at M=4 (the
    # all-gather's is M-1 = 3); summed over the same rounds, fragment sizes cancel
    up, down = bytes_per_round("two_phase", M, 1.0)
    for sent, received, rounds in (r[1] for r in over_ray):
        assert rounds >= 4 and received / sent == pytest.approx(down / up, rel=0.05)

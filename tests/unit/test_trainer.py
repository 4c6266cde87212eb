"""The Trainer without Ray: chunking, bf16 autocast, and DDP over real gloo in two processes."""

from __future__ import annotations

import io
import math

import torch
import torch.multiprocessing as mp

from helpers import ROOT
from streamloco.config import load_config
from streamloco.outer_optim.optimizer import flatten
from streamloco.outer_optim.transport import InProcessHub
from streamloco.workers.trainer import Placement, Trainer

SMOKE = ROOT / "configs" / "smoke.toml"
LEARNABLE = ["--model.vocab_size=16", "--data.branching=2", "--train.groups=1"]


def _trainer(*overrides: str) -> Trainer:
    cfg = load_config(SMOKE, [*LEARNABLE, *overrides])
    return Trainer(cfg, Placement(0), InProcessHub(1).transport(0), device=torch.device("cpu"))


def test_chunk_boundaries_do_not_change_training():
    one, many = _trainer(), _trainer()
    whole = one.train(60)
    reports = [many.train(until) for until in (7, 20, 21, 45, 60, 80)]
    assert whole.done and reports[4].done and reports[5].step == 60
    loss = whole.losses
    chunked = [v for r in reports for v in r.losses]
    assert loss == chunked and len(loss) == 60
    assert torch.equal(
        flatten(list(one.model.parameters())), flatten(list(many.model.parameters()))
    )
    assert sum(r.tokens for r in reports) == whole.tokens == 60 * 8 * 64


def test_bf16_autocast_trains_on_cpu():
    trainer = _trainer("--train.precision=bf16")
    with trainer.autocast():
        logits = trainer.model(torch.zeros(1, 4, dtype=torch.long))
    assert logits.dtype == torch.bfloat16
    rep = trainer.train(60)
    last = rep.evals[-1]
    assert last.step == 60 and last.loss_by_lang["synthetic"] < 0.75 * math.log(16)


def _ddp_rank(rank: int, port: int, queue) -> None:
    from streamloco.workers import dist

    torch.set_num_threads(1)
    # the test process hosts the rendezvous store; both ranks connect to it as clients
    store = torch.distributed.TCPStore("127.0.0.1", port, 2, is_master=False)
    dist.init_group(store, rank, 2, "gloo", 60)
    cfg = load_config(SMOKE, [*LEARNABLE, "--cluster.ranks_per_group=2"])
    trainer = Trainer(
        cfg,
        Placement(0, rank, 2),
        InProcessHub(1).transport(0),
        dist.TorchComm(torch.device("cpu")),
        torch.device("cpu"),
    )
    rep = trainer.train(60)
    state = trainer.state_dict()  # a collective: both ranks take part
    momentum = state.get("engine", {}).get("momentum")
    result = {
        "local": flatten(list(trainer.model.parameters())),
        "global": torch.cat(trainer.engine.global_params),
        "loss": rep.losses,
        "data": state["rank"]["data"],
        "momentum": momentum,
    }
    # as bytes: tensors put on a queue would live in shared memory that dies with this process
    buf = io.BytesIO()
    torch.save(result, buf)
    queue.put((rank, buf.getvalue()))
    torch.distributed.destroy_process_group()


def test_ddp_inside_a_group_keeps_ranks_identical_over_real_gloo():
    from datetime import timedelta

    store = torch.distributed.TCPStore(
        "127.0.0.1", 0, 3, is_master=True, timeout=timedelta(seconds=60), wait_for_workers=False
    )
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_rank, args=(r, store.port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        results = {}
        for _ in range(2):
            rank, blob = queue.get(timeout=180)
            results[rank] = torch.load(io.BytesIO(blob), weights_only=True)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs)
    a, b = results[0], results[1]
    assert torch.equal(a["local"], b["local"])  # DDP: same gradients -> same weights
    assert torch.equal(a["global"], b["global"])  # the stepped shards were all-gathered
    assert a["loss"] == b["loss"]  # the group's mean loss, all-reduced
    assert sum(a["loss"][-10:]) < sum(a["loss"][:10]) - 5.0
    assert not torch.equal(a["data"]["rng"], b["data"]["rng"])  # its own half of the batch
    assert a["momentum"] is not None and all(m.numel() for m in a["momentum"])

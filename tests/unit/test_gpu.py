"""The CUDA path (bf16 autocast, fp32 global state on the CPU): skipped without a GPU. CPU runs
cover the same code; these catch what only a device shows (dtype, device placement)."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from helpers import SMOKE
from streamloco.config import load_config
from streamloco.outer_optim.transport import InProcessHub
from streamloco.workers.trainer import Placement, Trainer

pytestmark = pytest.mark.gpu


def test_two_groups_on_cuda_train_in_bf16_and_keep_identical_globals(cuda_device):
    cfg = load_config(SMOKE, ["--train.steps=40", "--train.device=cuda", "--outer.zstd_level=3"])
    hub = InProcessHub(2)
    trainers = [Trainer(cfg, Placement(g), hub.transport(g), device=cuda_device) for g in (0, 1)]
    reports = [None, None]

    def run(g: int) -> None:
        reports[g] = trainers[g].train(40)

    threads = [threading.Thread(target=run, args=(g,)) for g in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert all(r is not None and r.done for r in reports)
    assert trainers[0].autocast().fast_dtype == torch.bfloat16  # auto precision on cuda
    a, b = (t.global_state() for t in trainers)
    assert all(v.device.type == "cpu" and v.dtype == torch.float32 for v in a.values())
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert reports[0].rounds and math.isfinite(reports[0].evals[-1].loss)

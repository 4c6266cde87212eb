"""Fragment partition: strided/sequential, where embeddings and head go, balance, stability."""

import pytest
import torch

from streamloco.outer_optim.fragments import partition
from streamloco.workers.model import Transformer, model_args


def _named(size="tiny", tie=True, vocab=64):
    with torch.device("meta"):
        model = Transformer(model_args(size, vocab, 32, tie))
    return [(n, p.numel()) for n, p in model.named_parameters()]


def test_strided_puts_block_i_in_fragment_i_mod_f_and_edges_with_neighbours():
    named = _named(tie=False)
    plan = partition(named, 4, "strided")
    assert plan.blocks == ((0, 4), (1, 5), (2,), (3,))
    owner = {n: p for p, names in enumerate(plan.names) for n in names}
    for name, _ in named:
        if name.startswith("blocks."):
            assert owner[name] == int(name.split(".")[1]) % 4
    assert owner["tok_emb.weight"] == 0  # embedding joins block 0's fragment
    assert owner["norm.weight"] == owner["head.weight"] == 5 % 4  # after the last block


def test_sequential_is_contiguous_and_every_param_appears_once():
    named = _named(size="124m", vocab=50304)
    plan = partition(named, 4, "sequential")
    assert plan.blocks == ((0, 1, 2), (3, 4, 5), (6, 7, 8), (9, 10, 11))
    flat = [n for names in plan.names for n in names]
    assert sorted(flat) == sorted(n for n, _ in named)
    assert sum(plan.numels) == sum(n for _, n in named)


def test_tied_head_is_counted_once_with_the_embedding():
    plan = partition(_named(tie=True), 2, "strided")
    assert "head.weight" not in {n for names in plan.names for n in names}
    assert "tok_emb.weight" in plan.names[0]


def test_plan_is_deterministic_and_fingerprinted():
    a, b = partition(_named(), 3), partition(_named(), 3)
    assert a == b and a.fingerprint == b.fingerprint
    assert partition(_named(), 2).fingerprint != a.fingerprint


def test_report_lists_every_fragment_with_its_share():
    plan = partition(_named(size="35m", vocab=32000), 2)
    report = plan.report()
    assert report.count("%") == 2 and f"{sum(plan.numels):,}" in report


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="F=7"):
        partition(_named(), 7)
    with pytest.raises(ValueError, match="no parameters named"):
        partition([("w", 3)], 1)
    with pytest.raises(ValueError, match="contiguous"):
        partition([("blocks.0.w", 1), ("blocks.2.w", 1)], 1)
    with pytest.raises(ValueError, match="pattern"):
        partition(_named(), 2, "random")

"""Outer step == torch.optim.SGD given the mean delta as gradient; merge; flatten."""

import pytest
import torch

from streamloco.outer_optim.optimizer import OuterSGD, flatten, merge_


@pytest.mark.parametrize("nesterov,momentum", [(True, 0.9), (False, 0.9), (False, 0.0)])
def test_outer_step_is_bit_identical_to_torch_sgd(nesterov, momentum):
    g = torch.Generator().manual_seed(0)
    start = torch.randn(1000, generator=g)
    grads = [torch.randn(1000, generator=g) for _ in range(5)]
    ref = torch.nn.Parameter(start.clone())
    sgd = torch.optim.SGD([ref], lr=0.7, momentum=momentum, nesterov=nesterov, foreach=False)
    ours, buf = start.clone(), None
    opt = OuterSGD(lr=0.7, momentum=momentum, nesterov=nesterov)
    for grad in grads:
        ref.grad = grad.clone()
        sgd.step()
        buf = opt.step_(ours, grad, buf)
        assert torch.equal(ours, ref.detach())
    if momentum:
        assert torch.equal(buf, sgd.state[ref]["momentum_buffer"])
    else:
        assert buf is None


def test_nesterov_differs_from_heavy_ball():
    p1, p2 = torch.ones(4), torch.ones(4)
    b1 = b2 = None
    for _ in range(2):
        b1 = OuterSGD(1.0, 0.9, True).step_(p1, torch.ones(4), b1)
        b2 = OuterSGD(1.0, 0.9, False).step_(p2, torch.ones(4), b2)
    assert not torch.equal(p1, p2)


def test_merge_weights_local_by_alpha():
    local = [torch.full((2, 3), 4.0), torch.full((5,), 4.0, dtype=torch.bfloat16)]
    glob = torch.zeros(11)
    merge_(local, glob, alpha=0.25)
    assert torch.all(local[0] == 1.0) and torch.all(local[1] == 1.0)
    assert local[1].dtype == torch.bfloat16
    merge_(local, torch.arange(11.0), alpha=0.0)  # alpha 0: exact copy of global
    assert torch.equal(flatten(local), torch.arange(11.0))


def test_merge_alpha_zero_discards_nan_in_local():
    local = [torch.tensor([float("nan"), 1.0])]
    merge_(local, torch.tensor([2.0, 3.0]), alpha=0.0)
    assert torch.equal(local[0], torch.tensor([2.0, 3.0]))


def test_flatten_is_a_copy_in_fp32():
    t = torch.ones(2, 2, dtype=torch.bfloat16)
    flat = flatten([t, torch.zeros(3)])
    assert flat.dtype == torch.float32 and flat.shape == (7,)
    flat.zero_()
    assert torch.all(t == 1)

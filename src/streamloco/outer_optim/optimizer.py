"""The outer optimizer (Nesterov momentum SGD on pseudo-gradients) and the merge into local.

All functions act in place on flat fp32 tensors, one per fragment, so a fragment's outer state is
a single momentum buffer. The arithmetic mirrors `torch.optim.SGD(momentum=m, nesterov=True,
dampening=0, weight_decay=0)` operation for operation, so given the mean pseudo-gradient as the
gradient the result is bit-identical to it (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class OuterSGD:
    lr: float = 0.7
    momentum: float = 0.9
    nesterov: bool = True

    def step_(
        self, param: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor | None
    ) -> torch.Tensor | None:
        """param <- param - lr * direction; returns the new momentum buffer (None if momentum 0).

        Like torch's SGD, the first step initializes the buffer to the gradient itself. `grad` is
        used as scratch space (the engine's mean-delta buffer): it is overwritten with Nesterov.
        """
        if self.momentum == 0:
            param.add_(grad, alpha=-self.lr)
            return None
        if buf is None:
            buf = grad.detach().clone()
        else:
            buf.mul_(self.momentum).add_(grad)
        direction = grad.add_(buf, alpha=self.momentum) if self.nesterov else buf
        param.add_(direction, alpha=-self.lr)
        return buf


def flatten(tensors: Sequence[torch.Tensor], device: torch.device | str = "cpu") -> torch.Tensor:
    """Concatenate tensors into one new flat fp32 vector on `device`."""
    return torch.cat(
        [t.detach().reshape(-1).to(device=device, dtype=torch.float32) for t in tensors]
    )


def merge_(local: Sequence[torch.Tensor], global_flat: torch.Tensor, alpha: float) -> None:
    """local <- alpha * local + (1 - alpha) * global, in each local tensor's own dtype and device.

    alpha is the weight of the LOCAL parameters (torchft's convention); alpha = 0 copies global.
    """
    offset = 0
    with torch.no_grad():
        for t in local:
            n = t.numel()
            g = global_flat[offset : offset + n].view(t.shape).to(device=t.device, dtype=t.dtype)
            if alpha == 0.0:  # an exact copy, not 0*local + g (which would keep NaNs of local)
                t.copy_(g)
            else:
                t.mul_(alpha).add_(g, alpha=1.0 - alpha)
            offset += n
    assert offset == global_flat.numel(), "fragment size does not match its parameters"

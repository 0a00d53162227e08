"""The per-sample losses of the SGD objective (train/sgd.py) and the objective's derivative in F.

    objective = sum_k (1/B) sum_b loss(y_kb F_kb),   hinge: max{1 - yF, 0} (the paper's),
    logistic: log(1 + exp(-yF)) (a named alternative [project choice])

``objective_grad`` gives c_kb = d objective / d F_kb for the hand-written backward (train/fused.py) without building
an autograd graph: for the two losses here it runs autograd's own backward formulas, op by op and in autograd's
order (MeanBackward, then the loss's backward, then the product with y), so c equals what
``torch.autograd.grad`` returns bit for bit (tests/test_fused.py); any other loss goes through autograd.
"""
from __future__ import annotations

from typing import Callable

import torch


def hinge(yF: torch.Tensor) -> torch.Tensor:
    return torch.clamp(1.0 - yF, min=0.0)


def logistic(yF: torch.Tensor) -> torch.Tensor:
    """log(1 + exp(-yF)), computed stably."""
    return torch.nn.functional.softplus(-yF)


LOSSES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"hinge": hinge, "logistic": logistic}


def objective_grad(loss_fn: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, F: torch.Tensor) -> torch.Tensor:
    """c = d/dF of sum_k mean_b loss_fn(y F), for y, F [K, B]: [K, B]."""
    # MeanBackward: the incoming 1 spread over the B samples
    g = torch.ones_like(F).div_(F.shape[1])
    if loss_fn is hinge:        # clamp(min=0) passes the gradient where its input is >= 0; d(1 - yF)/d(yF) = -1
        return torch.where((1.0 - y * F) >= 0, g, 0.0).neg_().mul_(y)
    if loss_fn is logistic:     # softplus(-yF): softplus's own backward kernel (beta 1, threshold 20), then -1
        return torch.ops.aten.softplus_backward(g, (y * F).neg_(), 1.0, 20.0).neg_().mul_(y)
    with torch.enable_grad():
        Fl = F.detach().requires_grad_(True)
        (c,) = torch.autograd.grad(loss_fn(y * Fl).mean(dim=1).sum(), Fl)
    return c

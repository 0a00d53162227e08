"""train/losses.py: the objective's derivative in F, without autograd's graph, against autograd itself."""

import pytest
import torch

from vitheory.train.losses import LOSSES, objective_grad


def _autograd(loss_fn, y, F):
    Fl = F.clone().requires_grad_(True)
    (c,) = torch.autograd.grad(loss_fn(y * Fl).mean(dim=1).sum(), Fl)
    return c


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("K,B", [(11, 4), (220, 16), (7, 3), (1, 1)])
def test_equals_autograd_bit_for_bit(loss, K, B):
    """Random F over a wide range (the softplus threshold at 20 crossed), margins of exactly 1 (the hinge's kink),
    +-inf and NaN (a diverged model): the same bits as autograd, NaN where autograd has NaN."""
    g = torch.Generator().manual_seed(K * 100 + B)
    y = torch.where(torch.rand(K, B, generator=g) < 0.5, 1.0, -1.0)
    F = torch.randn(K, B, generator=g) * 15
    flat = F.view(-1)
    flat[::5] = y.view(-1)[::5]                      # y F = 1 exactly
    if flat.numel() > 3:
        flat[1], flat[2], flat[3] = float("nan"), float("inf"), -float("inf")
    want, got = _autograd(LOSSES[loss], y, F), objective_grad(LOSSES[loss], y, F)
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    assert bool((want != 0).any())                   # not a vacuous comparison


def test_other_losses_go_through_autograd():
    def squared_hinge(yF):
        return torch.clamp(1.0 - yF, min=0.0) ** 2
    g = torch.Generator().manual_seed(1)
    y, F = torch.where(torch.rand(5, 6, generator=g) < 0.5, 1.0, -1.0), torch.randn(5, 6, generator=g)
    torch.testing.assert_close(objective_grad(squared_hinge, y, F), _autograd(squared_hinge, y, F), rtol=0, atol=0)


def test_float64():
    g = torch.Generator().manual_seed(2)
    y = torch.where(torch.rand(9, 5, generator=g) < 0.5, 1.0, -1.0).double()
    F = torch.randn(9, 5, generator=g, dtype=torch.float64) * 10
    for fn in LOSSES.values():
        torch.testing.assert_close(objective_grad(fn, y, F), _autograd(fn, y, F), rtol=0, atol=0)

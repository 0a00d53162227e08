"""The hand-written forward + backward of the shallow ViT (train/fused.py) against autograd."""

import pytest
import torch

from vitheory.models.shallow_vit import ShallowViT, ShallowViTConfig
from vitheory.train.fused import FusedShallowViTStep
from vitheory.train.sgd import LOSSES, train_hinge_sgd


def _model(K, d, scale, train_a, seed=0, dtype=torch.float32, **kw):
    cfg = ShallowViTConfig(d=d, m=12, d_k=3, d_v=5, scale_scores=scale, train_a=train_a, **kw)
    P = torch.linalg.qr(torch.randn(d, 3, generator=torch.Generator().manual_seed(seed)))[0].T
    model = ShallowViT(cfg, P, [torch.Generator().manual_seed(seed + k) for k in range(K)])
    return model.to(dtype)


@pytest.mark.parametrize("loss", ["hinge", "logistic"])
@pytest.mark.parametrize("scale,train_a", [(False, False), (True, True), (False, True)])
@pytest.mark.parametrize("group,B", [(1, 4), (4, 4), (32, 4), (4, 16), (3, 16)])
def test_gradients_equal_autograd(loss, scale, train_a, group, B):
    """Random inputs (weights far from the reference, so margins on both sides of 1): the gradients equal autograd's
    to float32 rounding, and bit for bit at groups of 4 and 32 (the same products in the same layout; at groups of 1
    and 3 the BLAS takes another kernel for some of the smaller batches and last bits differ, as they did before the
    loss derivative left autograd).  B = 16 with groups of 4 puts the loss derivative of the first two groups on
    their own 64-float slices and the last on all rows."""
    g = torch.Generator().manual_seed(7)
    K, L, d, N = 11, 6, 10, 9
    model = _model(K, d, scale, train_a, delta=2.0, sigma=1.0)
    X = torch.randn(K, N, L, d, generator=g)
    y = torch.where(torch.rand(K, N, generator=g) < 0.5, 1.0, -1.0)
    X_rows = X.reshape(K * N, -1)
    flat = (torch.arange(K)[:, None] * N + torch.randint(N, (K, B), generator=g)).flatten()
    xb, yb = X_rows[flat].view(K, B, L, d), y.view(-1)[flat].view(K, B)
    full = model.params()
    trained = [k for k, v in full.items() if v.requires_grad]
    objective = LOSSES[loss](yb * model(xb, full)).mean(1).sum()
    want = dict(zip(trained, torch.autograd.grad(objective, [full[k] for k in trained])))
    step = FusedShallowViTStep(model.cfg, L, d, B, LOSSES[loss], group=group)
    with torch.no_grad():
        got = step.grads(X_rows, flat, yb, {k: v.detach() for k, v in full.items()}, train_a)
    assert sorted(got) == sorted(want)
    for k in want:
        assert float(want[k].abs().max()) > 0, k          # a test that can fail: the gradients are not all zero
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-7)
        if group in (4, 32):
            assert torch.equal(got[k], want[k]), k


def test_gradients_equal_autograd_float64():
    g = torch.Generator().manual_seed(3)
    K, B, L, d, N = 5, 3, 7, 8, 6
    model = _model(K, d, True, True, dtype=torch.float64, delta=2.0, sigma=1.0)
    X = torch.randn(K, N, L, d, generator=g, dtype=torch.float64)
    y = torch.where(torch.rand(K, N, generator=g) < 0.5, 1.0, -1.0).double()
    X_rows = X.reshape(K * N, -1)
    flat = (torch.arange(K)[:, None] * N + torch.randint(N, (K, B), generator=g)).flatten()
    full = model.params()
    objective = LOSSES["logistic"](y.view(-1)[flat].view(K, B) * model(X_rows[flat].view(K, B, L, d), full)).mean(1).sum()
    want = torch.autograd.grad(objective, list(full.values()))
    step = FusedShallowViTStep(model.cfg, L, d, B, LOSSES["logistic"], group=2, dtype=torch.float64)
    with torch.no_grad():
        got = step.grads(X_rows, flat, y.view(-1)[flat].view(K, B), {k: v.detach() for k, v in full.items()}, True)
    for k, w in zip(full, want):
        torch.testing.assert_close(got[k], w, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("loss,train_a", [("hinge", False), ("logistic", True)])
def test_training_equals_the_autograd_path(loss, train_a):
    """Whole trainings, with retirement (partial active sets), lr_scale and per-model budgets: same parameters as the
    autograd path on one thread (the fused path runs each group on one core, whatever the thread count)."""
    K, N, L, d = 6, 20, 5, 8
    g = torch.Generator().manual_seed(11)
    X = torch.randn(K, N, L, d, generator=g)
    y = torch.where(X[..., 0].sum(-1) > 0, 1.0, -1.0)
    n = torch.tensor([20, 12, 20, 8, 16, 20])
    lr = torch.linspace(0.05, 0.5, K)
    results = []
    threads = torch.get_num_threads()
    try:
        for fused in (True, False):
            torch.set_num_threads(threads if fused else 1)
            model = _model(K, d, False, train_a)
            gens = [torch.Generator().manual_seed(100 + k) for k in range(K)]
            res = train_hinge_sgd(model, X, y, n, steps=60, batch=4, lr=lr, generators=gens, eval_every=5,
                                  lr_scale={"W_Q": 3.0}, loss=loss, fused=fused,
                                  model_steps=torch.tensor([60, 30, 60, 45, 60, 10]))
            results.append((res, {k: v.detach().clone() for k, v in model.params().items()}))
    finally:
        torch.set_num_threads(threads)
    (r1, p1), (r0, p0) = results
    for k in p0:
        assert torch.equal(p1[k], p0[k]), k
    assert torch.equal(r1.fit_step, r0.fit_step) and torch.equal(r1.retired_step, r0.retired_step)
    assert r1.steps_run == r0.steps_run


@pytest.mark.parametrize("loss", ["hinge", "logistic"])
def test_worker_threads_give_the_same_gradients(loss, monkeypatch):
    """The groups shared among 3 worker threads (each on one core): the same gradients, bit for bit, as one thread;
    the caller's torch thread count is given back."""
    import vitheory.train.fused as fused
    monkeypatch.setattr(fused, "MIN_WORKER_FLOPS", 0)     # workers even for this small model
    g = torch.Generator().manual_seed(5)
    K, B, L, d, N = 13, 16, 6, 10, 20
    model = _model(K, d, True, True, delta=2.0, sigma=1.0)
    X = torch.randn(K, N, L, d, generator=g)
    y = torch.where(torch.rand(K, N, generator=g) < 0.5, 1.0, -1.0)
    X_rows = X.reshape(K * N, -1)
    flat = (torch.arange(K)[:, None] * N + torch.randint(N, (K, B), generator=g)).flatten()
    yb = y.view(-1)[flat].view(K, B)
    P = {k: v.detach() for k, v in model.params().items()}
    before = torch.get_num_threads()
    with torch.no_grad():
        one = FusedShallowViTStep(model.cfg, L, d, B, LOSSES[loss], group=2, threads=1).grads(X_rows, flat, yb, P, True)
        step = FusedShallowViTStep(model.cfg, L, d, B, LOSSES[loss], group=2, threads=3)
        three = [step.grads(X_rows, flat, yb, P, True) for _ in range(2)]     # the pool and buffers reused
    assert step._pool_size == 3 and len(step._buffers) == 3                 # the work did go to 3 workers
    assert torch.get_num_threads() == before
    for got in three:
        for k in one:
            assert float(one[k].abs().max()) > 0, k
            assert torch.equal(got[k], one[k]), k


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2"])
def test_worker_threads_are_checked(bad):
    cfg = _model(1, 4, False, False).cfg
    with pytest.raises(ValueError, match="threads"):
        FusedShallowViTStep(cfg, 3, 4, 2, LOSSES["hinge"], threads=bad)


def test_small_groups_stay_on_the_calling_thread():
    """Below MIN_WORKER_FLOPS a group is Python overhead more than arithmetic: no worker threads are started."""
    model = _model(9, 6, False, False)
    X_rows = torch.randn(9 * 4, 5 * 6)
    flat = (torch.arange(9)[:, None] * 4 + torch.randint(4, (9, 2))).flatten()
    step = FusedShallowViTStep(model.cfg, 5, 6, 2, LOSSES["hinge"], group=2, threads=3)
    assert 2 * step.step_flops < __import__("vitheory.train.fused", fromlist=["x"]).MIN_WORKER_FLOPS
    with torch.no_grad():
        step.grads(X_rows, flat, torch.ones(9, 2), {k: v.detach() for k, v in model.params().items()}, False)
    assert step._pool is None and len(step._buffers) == 1

"""The paper-1 data model, shallow ViT, CNN baseline and batched trainer."""

import pytest
import torch

from vitheory.data.tokens import (CONFUSION, IRRELEVANT, RELEVANT, SPURIOUS, majority_label, make_patterns,
                                  sample_tokens)
from vitheory.experiments import _shallow as S
from vitheory.experiments.base import get_experiment, resolve_config
from vitheory.models.cnn import CNNConfig, TokenCNN
from vitheory.models.shallow_vit import ShallowViT, ShallowViTConfig
from vitheory.train.sgd import train_hinge_sgd


def gen(s):
    return torch.Generator().manual_seed(s)


@pytest.mark.parametrize("alpha_star,alpha_conf", [(0.5, 0.05), (0.267, 0.04), (0.3, 0.0)])
def test_fractions_and_labels(alpha_star, alpha_conf):
    P = make_patterns(16, 5, generator=gen(0))
    s = sample_tokens(P, 4000, L=32, alpha_star=alpha_star, alpha_conf=alpha_conf, tau=0.5, generator=gen(1))
    assert s.X.shape == (4000, 32, 16)
    frac_rel = (s.category == RELEVANT).float().mean().item()
    frac_conf = (s.category == CONFUSION).float().mean().item()
    assert abs(frac_rel - alpha_star) < 0.01          # stochastic rounding: E[#relevant] = alpha* L
    assert abs(frac_conf - alpha_conf) < 0.01
    # labels are the majority vote of the discriminative tokens, and classes are balanced
    assert torch.equal(majority_label(s), s.y)
    assert abs(s.y.mean().item()) < 0.05
    # categories agree with the patterns: relevant = own label's pattern, confusion = the other one
    own = torch.where(s.y > 0, 0, 1)[:, None]
    assert torch.equal(s.category == RELEVANT, s.pattern == own)
    assert torch.equal(s.category == CONFUSION, s.pattern == 1 - own)
    assert bool((s.pattern[s.category == IRRELEVANT] >= 2).all())
    # tokens are patterns plus the recorded noise
    z = s.X - P[s.pattern]
    assert torch.allclose(z.norm(dim=-1), s.noise_norm, atol=1e-5)


def test_bounded_noise_and_orthonormal_patterns():
    P = make_patterns(8, 4, generator=gen(0))
    assert torch.allclose(P @ P.T, torch.eye(4), atol=1e-5)
    s = sample_tokens(P, 500, L=10, alpha_star=0.4, alpha_conf=0.1, tau=0.3, noise="bounded", generator=gen(2))
    assert float(s.noise_norm.max()) <= 0.3 + 1e-6
    g = sample_tokens(P, 3000, L=10, alpha_star=0.4, alpha_conf=0.1, tau=0.3, noise="gaussian", generator=gen(2))
    assert abs(float((g.noise_norm ** 2).mean()) - 0.09) < 0.01  # E||z||^2 = tau^2


def test_spurious_tokens_correlate_in_training_only():
    P = make_patterns(8, 5, generator=gen(0))
    tr = sample_tokens(P, 4000, L=16, alpha_star=0.4, alpha_conf=0.0, tau=0.1, spurious_tokens=3,
                       spurious_corr=0.9, generator=gen(3))
    has = (tr.category == SPURIOUS).any(1).float()
    assert has[tr.y > 0].mean() > 0.85 and has[tr.y < 0].mean() < 0.15
    te = sample_tokens(P, 4000, L=16, alpha_star=0.4, alpha_conf=0.0, tau=0.1, spurious_tokens=3,
                       spurious_corr=0.5, generator=gen(3))
    has = (te.category == SPURIOUS).any(1).float()
    assert abs(has[te.y > 0].mean() - has[te.y < 0].mean()) < 0.06
    assert bool((tr.pattern[tr.category == SPURIOUS] == 4).all())


def loop_vit(W_Q, W_K, W_V, W_O, a, X):
    """F(X) = (1/|S|) sum_l a^T ReLU(W_O W_V X softmax(X^T W_K^T W_Q x_l)), one sample, plain loops."""
    Xc = X.T  # d x L as in the paper
    L = Xc.shape[1]
    total = 0.0
    for l in range(L):
        scores = torch.stack([Xc[:, s] @ W_K.T @ W_Q @ Xc[:, l] for s in range(L)])
        w = torch.softmax(scores, 0)
        ctx = sum(w[s] * (W_V @ Xc[:, s]) for s in range(L))
        total = total + a @ torch.relu(W_O @ ctx)
    return total / L


def test_vit_matches_direct_loop():
    P = make_patterns(6, 4, generator=gen(0))
    cfg = ShallowViTConfig(d=6, m=5, d_k=3, d_v=4, sigma=0.7, delta=0.9)
    model = ShallowViT(cfg, P, [gen(1), gen(2)])
    X = torch.randn(2, 3, 7, 6, generator=gen(3))
    F = model(X)
    for k in range(2):
        for b in range(3):
            ref = loop_vit(model.W_Q[k], model.W_K[k], model.W_V[k], model.W_O[k], model.a[k], X[k, b])
            assert torch.allclose(F[k, b], ref, atol=1e-5), (k, b)


def test_cnn_matches_direct_loop():
    cfg = CNNConfig(d=4, m=3, kernel=2)
    model = TokenCNN(cfg, [gen(1)])
    X = torch.randn(1, 2, 5, 4, generator=gen(3))
    F = model(X)
    for b in range(2):
        outs = [model.a[0] @ torch.relu(model.W[0] @ torch.cat([X[0, b, p], X[0, b, p + 1]])) for p in range(4)]
        assert torch.allclose(F[0, b], sum(outs) / 4, atol=1e-5)


def _train(seeds, lrs, Ns):
    P = [make_patterns(8, 4, generator=gen(100 + s)) for s in seeds]
    data = [sample_tokens(p, n, L=12, alpha_star=0.4, alpha_conf=0.05, tau=0.8, generator=gen(200 + s))
            for p, n, s in zip(P, Ns, seeds)]
    Nmax = max(Ns)
    X = torch.zeros(len(seeds), Nmax, 12, 8)
    y = torch.ones(len(seeds), Nmax)
    for k, d in enumerate(data):
        X[k, :len(d)] = d.X
        y[k, :len(d)] = d.y
    cfg = ShallowViTConfig(d=8, m=16, d_k=8, d_v=8, sigma=0.5, delta=0.3)
    parts = [ShallowViT(cfg, p, [gen(300 + s)]) for p, s in zip(P, seeds)]
    model = parts[0]
    for name in ("W_Q", "W_K", "W_V", "W_O", "a"):
        getattr(model, name).data = torch.cat([getattr(q, name).data for q in parts])
    res = train_hinge_sgd(model, X, y, torch.tensor(Ns), steps=60, batch=8, lr=torch.tensor(lrs),
                          generators=[gen(400 + s) for s in seeds], eval_every=10)
    return model, res


def test_batched_training_equals_single_model_training():
    seeds, lrs, Ns = [0, 1, 2], [0.3, 0.1, 0.5], [30, 50, 40]
    batched, bres = _train(seeds, lrs, Ns)
    for k, (s, lr, N) in enumerate(zip(seeds, lrs, Ns)):
        single, sres = _train([s], [lr], [N])
        for name in ("W_Q", "W_K", "W_V", "W_O"):
            assert torch.allclose(getattr(batched, name)[k], getattr(single, name)[0], atol=1e-5, rtol=1e-5), name
        assert int(bres.fit_step[k]) == int(sres.fit_step[0])
        assert int(bres.retired_step[k]) == int(sres.retired_step[0])
        assert float(bres.train_error[k]) == float(sres.train_error[0])
    assert (bres.retired_step >= 0).any(), "no model retired: the active-only evaluation was not exercised"


def test_trials_sharing_a_test_set_get_the_numbers_they_get_alone():
    """test_metrics draws a test set once for trials that differ only in N; the numbers must not change."""
    cfg = resolve_config(get_experiment("sample-complexity"), "smoke", {"n_test": "150"})
    trials = [{"model": "vit", "alpha_star": a, "N": N, "seed": s} for s in (0, 1) for N in (20, 40) for a in (0.4, 0.5)]
    batch, _, _, _ = S.train_trials(cfg, trials, "cpu")
    for t, m in zip(trials, batch):
        alone, _, _, _ = S.train_trials(cfg, [t], "cpu")
        # the batch changes the float summation order (BLAS), not the data: errors equal, losses to rounding
        assert alone[0]["test_error"] == m["test_error"]
        assert abs(alone[0]["test_loss"] - m["test_loss"]) <= 1e-5 * max(1.0, abs(m["test_loss"]))
        assert alone[0]["train_error"] == m["train_error"]


def test_training_learns_and_attention_concentrates():
    P = make_patterns(8, 4, generator=gen(0))
    tr = sample_tokens(P, 200, L=12, alpha_star=0.4, alpha_conf=0.05, tau=0.5, generator=gen(1))
    cfg = ShallowViTConfig(d=8, m=32, d_k=8, d_v=8, sigma=0.1, delta=0.1)
    model = ShallowViT(cfg, P, [gen(2)])
    A0 = S.relevant_attention(model, tr.X[None, :64], tr.category[None, :64])
    res = train_hinge_sgd(model, tr.X[None], tr.y[None], torch.tensor([200]), steps=400, batch=16,
                          lr=torch.tensor([0.5]), generators=[gen(3)], eval_every=50)
    A1 = S.relevant_attention(model, tr.X[None, :64], tr.category[None, :64])
    assert res.fit_step[0] >= 0                      # reached zero training error
    assert float(A1[0]) > float(A0[0]) + 0.05         # attention moved towards label-relevant tokens

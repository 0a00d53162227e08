"""The deeper token ViT (models/deep_token_vit.py) and the `depth` experiment (claim S11)."""
import json

import pytest
import torch

import vitheory
from vitheory.config import ConfigError
from vitheory.data.tokens import make_patterns, sample_tokens
from vitheory.experiments.base import get_experiment, resolve_config
from vitheory.models.deep_token_vit import DeepTokenViT, DeepTokenViTConfig
from vitheory.models.shallow_vit import ShallowViT, ShallowViTConfig

HEAD = ShallowViTConfig(d=12, m=16, d_k=6, d_v=5, sigma=0.7, delta=0.4, qk_reference="query")


def gens(K, base=0):
    return [torch.Generator().manual_seed(base + k) for k in range(K)]


def data(K=3, n=7, L=9, d=12, seed=1):
    P = make_patterns(d, 4, generator=torch.Generator().manual_seed(seed))
    s = sample_tokens(P, K * n, L=L, alpha_star=0.4, alpha_conf=0.1, tau=1.0,
                      generator=torch.Generator().manual_seed(seed + 1))
    return P, s.X.double().view(K, n, L, d)


def test_depth_one_is_the_shallow_vit_to_float64_precision():
    P, X = data()
    shallow = ShallowViT(HEAD, P, gens(3)).double()
    deep = DeepTokenViT(DeepTokenViTConfig(head=HEAD, depth=1), P, gens(3)).double()
    # the same generators draw the same initial weights (the last layer is drawn exactly as the shallow model)
    for k, v in shallow.params().items():
        assert torch.equal(deep.params()[k], v)
    assert set(deep.params()) == set(shallow.params())
    # on any shared weights the outputs agree: perturb the shallow weights and load them into the deep model
    with torch.no_grad():
        for v in shallow.params().values():
            v.add_(0.3 * torch.randn(v.shape, generator=torch.Generator().manual_seed(v.numel()), dtype=v.dtype))
        for k, v in shallow.params().items():
            deep.params()[k].copy_(v)
    F_s, F_d = shallow(X), deep(X)
    assert F_s.dtype == torch.float64 and F_s.shape == (3, 7)
    assert torch.allclose(F_d, F_s, rtol=0, atol=1e-13)
    assert torch.allclose(deep.attention(X), shallow.attention(X), rtol=0, atol=1e-14)


def reference_forward(model: DeepTokenViT, X: torch.Tensor, k: int) -> torch.Tensor:
    """Model k's F on X [n, L, d], token by token from the docstring's equations (no batching)."""
    P = {name: v[k] for name, v in model.params().items()}
    out = []
    for Xn in X:                                                     # Xn [L, d], rows are tokens
        H = Xn.clone()
        for j in range(model.depth - 1):
            new = []
            for l in range(H.shape[0]):
                w = torch.softmax(torch.stack([H[s] @ P["W_K_res"][j].T @ P["W_Q_res"][j] @ H[l]
                                               for s in range(H.shape[0])]), 0)
                val = sum(w[s] * (P["W_V_res"][j] @ H[s]) for s in range(H.shape[0]))
                new.append(H[l] + P["W_P_res"][j] @ val)
            H = torch.stack(new)
        per_token = []
        for l in range(H.shape[0]):
            w = torch.softmax(torch.stack([H[s] @ P["W_K"].T @ P["W_Q"] @ H[l] for s in range(H.shape[0])]), 0)
            z = sum(w[s] * (P["W_V"] @ H[s]) for s in range(H.shape[0]))
            per_token.append(P["a"] @ torch.relu(P["W_O"] @ z))
        out.append(torch.stack(per_token).mean())
    return torch.stack(out)


@pytest.mark.parametrize("depth", [2, 3])
def test_batched_deep_forward_matches_the_equations(depth):
    P, X = data(K=2, n=3, L=5)
    model = DeepTokenViT(DeepTokenViTConfig(head=HEAD, depth=depth, residual_scale=0.8), P, gens(2)).double()
    assert model.params()["W_Q_res"].shape == (2, depth - 1, 6, 12)
    assert model.params()["W_P_res"].shape == (2, depth - 1, 12, 5)
    F = model(X)
    for k in range(2):
        assert torch.allclose(F[k], reference_forward(model, X[k], k), rtol=0, atol=1e-12)
    assert len(model.attention_layers(X)) == depth
    assert torch.allclose(model.attention_layers(X)[-1], model.attention(X), rtol=0, atol=1e-14)


def test_deeper_model_shares_the_last_layer_and_zero_residual_is_shallow():
    P, X = data()
    shallow = ShallowViT(HEAD, P, gens(3)).double()
    deep = DeepTokenViT(DeepTokenViTConfig(head=HEAD, depth=4, residual_scale=0.0), P, gens(3)).double()
    for k, v in shallow.params().items():
        assert torch.equal(deep.params()[k], v)              # same seed: same last layer at every depth
    assert torch.allclose(deep(X), shallow(X), rtol=0, atol=1e-13)   # W_P = 0: every residual branch is zero
    one = DeepTokenViT(DeepTokenViTConfig(head=HEAD, depth=4, residual_scale=1.0), P, gens(3)).double()
    assert not torch.allclose(one(X), shallow(X))            # the residual layers do change the function


def test_batched_model_equals_the_model_trained_alone():
    from vitheory.train.sgd import train_hinge_sgd
    P, X = data(K=3, n=8)
    X = X.float()
    y = torch.where(torch.arange(8) % 2 == 0, 1.0, -1.0).repeat(3, 1)
    cfg = DeepTokenViTConfig(head=HEAD, depth=2)
    batched = DeepTokenViT(cfg, P, gens(3))
    train_hinge_sgd(batched, X, y, torch.full((3,), 8), steps=15, batch=4, lr=torch.full((3,), 0.2),
                    generators=gens(3, 100), loss="logistic")
    alone = DeepTokenViT(cfg, P, gens(3)[1:2])
    train_hinge_sgd(alone, X[1:2], y[1:2], torch.full((1,), 8), steps=15, batch=4, lr=torch.full((1,), 0.2),
                    generators=gens(3, 100)[1:2], loss="logistic")
    for k, v in alone.params().items():
        assert torch.allclose(batched.params()[k][1:2], v, atol=1e-6), k


@pytest.mark.parametrize("bad", [(0, 2), (1, 17), (4, 32)])
def test_bad_depth_grid_is_a_config_error(bad, tmp_path):
    exp = get_experiment("depth")
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"depth_grid.*\[1, 16\]"):
        vitheory.run("depth", scale="smoke", overrides={"depth_grid": bad}, out=out, progress=False)
    assert not out.exists()                                  # raised before any run folder is created
    with pytest.raises(ConfigError, match="depth_grid"):
        resolve_config(exp, "smoke", {"depth_grid": bad})


def test_smoke_run_has_the_s11_claims(run_dir):
    df = vitheory.run("depth", scale="smoke", out=run_dir, progress=False)
    cfg = resolve_config(get_experiment("depth"), "smoke")
    assert sorted(df["depth"].unique()) == sorted(cfg.depth_grid)
    assert {"boundary", "sparse"} == set(df["part"])
    # every layer's attention is stored, and the last layer's equals attention_initial
    for _, r in df.iterrows():
        assert len(r["attention_initial_layers"]) == r["depth"]
        assert r["attention_initial_layers"][-1] == pytest.approx(r["attention_initial"])
    # depth 1 reproduces the sample-complexity trial with the same (alpha_*, N, seed) and config
    sc = vitheory.run("sample-complexity", scale="smoke", progress=False,
                      overrides={"inv_alpha2": (4.0,), "N_grid": (8,), "floor_samples": 0, "seeds": 1})
    mine = df[(df["depth"] == 1) & (df["part"] == "boundary") & (df["N"] == 8) & (df["seed"] == 0)
              & (df["alpha_star"] == 0.5)].iloc[0]
    assert mine["test_loss"] == pytest.approx(float(sc["test_loss"].iloc[0]), rel=1e-6)
    summary = json.loads((run_dir / "summary.json").read_text())
    ids = {c["id"] for c in summary["claims"]}
    assert {"S11-boundary", "S11-attention", "S11-sparsification"} <= ids
    for c in summary["claims"]:
        assert c["supported"] in (True, False, None) and "Rule" in c["evidence"]


def test_run_without_evaluations_still_measures_the_training_error():
    from vitheory.experiments import depth as DP
    cfg = resolve_config(get_experiment("depth"), "smoke", {"eval_every": 0})
    batch = [t for t in DP.trials(cfg) if t["depth"] == 2 and t["part"] == "boundary"][:2]
    m = DP.run_trials(cfg, batch, "cpu")
    assert all(0.0 <= r["train_error"] <= 1.0 for r in m)

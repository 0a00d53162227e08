"""Issue 9 (paper 1 as the paper claims): the floor check, the law comparison, the attention metric, the
non-saddle initialisation, the logistic loss and the epoch step budget."""

import math

import numpy as np
import pytest
import torch

from vitheory.analysis.law_fit import compare_laws, law_verdict, paper_comparison
from vitheory.data.token_floor import classifier_floor, mean_pooling, oracle_vote, upper_bound
from vitheory.data.tokens import CONFUSION, IRRELEVANT, RELEVANT, make_patterns, sample_tokens
from vitheory.experiments import _shallow as S
from vitheory.models.shallow_vit import ShallowViT, ShallowViTConfig
from vitheory.train.sgd import train_hinge_sgd


def gen(s):
    return torch.Generator().manual_seed(s)


# ---------------------------------------------------------------- floor check
def test_floor_is_zero_without_noise_and_positive_with_much_noise():
    P = make_patterns(32, 4, generator=gen(0))
    clean = classifier_floor(P, 3000, generator=gen(1), L=16, alpha_star=0.3, alpha_conf=0.05, tau=0.0)
    assert clean["oracle_errors"] == 0 and clean["mean_pool_errors"] == 0
    assert clean["oracle_error_ub"] == pytest.approx(upper_bound(0, 3000)) and clean["oracle_error_ub"] < 3.1 / 3000
    noisy = classifier_floor(P, 3000, generator=gen(1), L=16, alpha_star=0.3, alpha_conf=0.05, tau=20.0, noise="gaussian")
    assert noisy["oracle_errors"] > 0 and noisy["mean_pool_errors"] > 0
    assert noisy["oracle_error"] == noisy["oracle_errors"] / 3000


def test_oracle_vote_and_mean_pooling_on_a_hand_built_sample():
    P = torch.eye(4)                                       # o_1 = e_0 (+1), o_2 = e_1 (-1)
    X = torch.stack([P[0], P[0], P[1], P[2]])[None]        # two +1 tokens, one -1 token, one irrelevant
    assert oracle_vote(X, P).tolist() == [1.0]
    assert mean_pooling(X, P).tolist() == [1.0]
    tie = torch.stack([P[0], P[1], P[2], P[3]])[None]
    assert oracle_vote(tie, P).tolist() == [0.0]           # a tie: never equal to a label, counted as an error
    # a token pushed past the midpoint towards o_2 is assigned to o_2
    X2 = torch.stack([P[0] * 0.2 + P[1] * 0.9, P[0], P[1], P[1]])[None]
    assert oracle_vote(X2, P).tolist() == [-1.0]


def test_floor_trials_come_first_and_are_reported():
    import pandas as pd
    cfg = S.ShallowConfig(d=16, M=4, L=16, tau=0.3, floor_samples=500)
    t = S.floor_trials(cfg, [{"alpha_star": 0.5}, {"alpha_star": 0.3}, {"alpha_star": 0.5}])
    assert [x["alpha_star"] for x in t] == [0.5, 0.3] and all(x["model"] == "floor" for x in t)
    rows = [{**x, **S.floor_metrics(cfg, x)} for x in t]
    tab, notes = S.floor_report(pd.DataFrame(rows))
    assert list(tab["oracle_errors"]) == [0, 0] and "zero floor" in notes[-1]
    bad = pd.DataFrame([{**rows[0], "oracle_errors": 3}])
    assert any(n.startswith("floor not zero") for n in S.floor_report(bad)[1])
    assert S.floor_trials(S.ShallowConfig(), [{"alpha_star": 0.5}]) == []   # floor_samples = 0: no check


# ---------------------------------------------------------------- law comparison
@pytest.mark.parametrize("p", [1, 2, 4])
def test_law_comparison_recovers_the_exponent(p):
    rng = np.random.default_rng(p)
    x = np.linspace(2.0, 5.0, 7)                           # alpha_*^-1 from 2 to 5
    N = 30 * x ** p / (5.0 ** p) * 10 + 20                 # N_min from ~20 to 320
    N = N + rng.normal(0, 3, len(x))
    cmp = compare_laws(x, N)
    assert cmp["best_aic"] == p and cmp["best_loo"] == p and cmp["distinguished"]
    verdict, text = law_verdict(cmp, p)
    assert verdict is True and "AIC" in text
    for q in {1, 2, 4} - {p}:
        assert law_verdict(cmp, q)[0] is False


def test_law_comparison_is_inconclusive_without_enough_points():
    assert law_verdict(compare_laws([2, 3], [10, 20]), 2)[0] is None
    assert law_verdict(compare_laws([2, 3, 4], [10, 10, 10]), 2)[0] is None
    # a falling boundary has a <= 0: not supported
    assert law_verdict(compare_laws([2, 3, 4, 5], [100, 60, 40, 10]), 2)[0] is False


def test_paper_figure_1a_prefers_alpha_minus_2():
    cmp = paper_comparison("1a")
    assert cmp["n_points"] == 11 and cmp["best_aic"] == 2
    a2 = next(f for f in cmp["fits"] if f["p"] == 2)
    assert a2["a"] == pytest.approx(33.5, abs=0.2) and a2["b"] < 0     # the spec's 33.5 alpha^-2 - 90


# ---------------------------------------------------------------- attention metric
def test_attention_metric_on_a_hand_built_case():
    # one model, one sample, L = 3 tokens: relevant, relevant, irrelevant
    cat = torch.tensor([[[RELEVANT, RELEVANT, IRRELEVANT]]])
    attn = torch.tensor([[[[0.5, 0.3, 0.2],     # query 0 (relevant): 0.8 on relevant keys
                           [0.1, 0.1, 0.8],     # query 1 (relevant): 0.2
                           [1.0, 0.0, 0.0]]]])  # query 2 (irrelevant): 1.0
    assert S.attention_on_relevant(attn, cat, "relevant").item() == pytest.approx(0.5)
    assert S.attention_on_relevant(attn, cat, "all").item() == pytest.approx(2.0 / 3)
    uniform = torch.full((1, 1, 3, 3), 1 / 3)
    assert S.attention_on_relevant(uniform, cat, "all").item() == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        S.attention_on_relevant(attn, cat, "confusion")


# ---------------------------------------------------------------- initialisation, loss, budget
def _grad_norms(reference):
    P = make_patterns(16, 4, generator=gen(0))
    cfg = ShallowViTConfig(d=16, m=32, d_k=8, d_v=8, sigma=0.5, delta=0.01, qk_reference=reference)
    model = ShallowViT(cfg, P, [gen(1)])
    s = sample_tokens(P, 64, L=16, alpha_star=0.4, alpha_conf=0.05, tau=0.3, generator=gen(2))
    A = model.attention(s.X[None]).detach()
    loss = torch.clamp(1 - s.y * model(s.X[None])[0], min=0).mean()
    g = torch.autograd.grad(loss, [model.W_K])[0]
    return float((A - 1 / 16).abs().max()), float(g.norm())


def test_query_reference_is_uniform_at_start_but_not_a_saddle():
    dev_zero, g_zero = _grad_norms("zero")
    dev_query, g_query = _grad_norms("query")
    assert dev_zero < 0.01 and dev_query < 0.05         # both start at near-uniform attention
    assert g_query > 20 * g_zero                         # but only 'zero' is a saddle for W_K


def test_logistic_loss_and_per_model_step_budget():
    P = make_patterns(16, 4, generator=gen(0))
    cfg = ShallowViTConfig(d=16, m=32, d_k=8, d_v=8, sigma=0.5, qk_reference="query")
    s = sample_tokens(P, 40, L=16, alpha_star=0.5, alpha_conf=0.05, tau=0.3, generator=gen(3))
    X, y = torch.stack([s.X, s.X]), torch.stack([s.y, s.y])
    model = ShallowViT(cfg, P, [gen(1), gen(1)])
    before = model.W_V.detach().clone()
    res = train_hinge_sgd(model, X, y, torch.tensor([40, 40]), steps=50, batch=8, lr=torch.tensor([0.5, 0.5]),
                          generators=[gen(4), gen(4)], eval_every=10, loss="logistic", model_steps=torch.tensor([5, 50]))
    assert res.steps_run == 50
    assert not torch.equal(model.W_V[0], before[0]) and not torch.equal(model.W_V[0], model.W_V[1])
    # model 0 stopped after 5 steps: the same as training it alone for 5 steps
    alone = ShallowViT(cfg, P, [gen(1)])
    train_hinge_sgd(alone, s.X[None], s.y[None], torch.tensor([40]), steps=5, batch=8, lr=torch.tensor([0.5]),
                    generators=[gen(4)], eval_every=0, loss="logistic")
    assert torch.allclose(model.W_V[0], alone.W_V[0], atol=1e-6)
    assert bool((res.retired_step == -1).all())         # logistic: never retired by margins


def test_epoch_budget_and_attention_metrics_are_stored():
    cfg = S.ShallowConfig(d=16, M=4, L=16, m=16, d_k=8, d_v=8, tau=0.3, n_test=50, qk_reference="query",
                          loss="logistic", epochs=2, min_steps=3, steps=40, probe_size=8, eval_every=10)
    n = torch.tensor([8, 40, 400])
    assert S.step_budget(cfg, n).tolist() == [3, 5, 40]   # ceil(2 N / 16) within [3, 40]
    trials = [{"model": "vit", "alpha_star": 0.5, "N": N, "seed": 0} for N in (8, 40)]
    metrics, *_ = S.train_trials(cfg, trials, "cpu")
    assert [m["steps_run"] for m in metrics] == [3, 5]
    for m in metrics:
        assert 0 <= m["attention_initial"] <= 1 and 0 <= m["attention_final"] <= 1
        assert math.isfinite(m["attention_final_all"])
    # the A(0) probe is the same fresh data for both trials (same seed), so A(0) is equal
    assert metrics[0]["attention_initial"] == pytest.approx(metrics[1]["attention_initial"])


def test_stop_at_fit_changes_no_fit_step_and_stops_training():
    P = make_patterns(16, 4, generator=gen(0))
    cfg = ShallowViTConfig(d=16, m=32, d_k=8, d_v=8, sigma=0.5, qk_reference="query")
    s = sample_tokens(P, 40, L=16, alpha_star=0.5, alpha_conf=0.05, tau=0.3, generator=gen(3))
    runs = []
    for stop in (False, True):
        model = ShallowViT(cfg, P, [gen(1)])
        res = train_hinge_sgd(model, s.X[None], s.y[None], torch.tensor([40]), steps=200, batch=8,
                              lr=torch.tensor([0.5]), generators=[gen(4)], eval_every=2, loss="logistic",
                              stop_at_fit=stop)
        runs.append((int(res.fit_step[0]), res.steps_run, model.W_V.detach().clone()))
    (fit_a, steps_a, W_a), (fit_b, steps_b, W_b) = runs
    assert 0 <= fit_a < 200 and fit_a == fit_b        # the count it reads is unchanged
    assert steps_a == 200 and steps_b <= fit_b + 2   # the steps after the fit are not computed
    assert not torch.equal(W_a, W_b)


def test_attention_concentration_runs_each_eta_for_equal_eta_T():
    from vitheory.config import ConfigError
    from vitheory.experiments import attention_concentration as AC
    from vitheory.experiments.base import get_experiment, resolve_config
    cfg = resolve_config(get_experiment("attention-concentration"), "default")
    assert [AC.iterations(cfg, lr) * lr for lr in cfg.lr_grid] == pytest.approx([cfg.eta_T] * len(cfg.lr_grid))
    assert AC.group_key({"model": "vit", "lr": 0.1}) != AC.group_key({"model": "vit", "lr": 0.2})
    with pytest.raises(ConfigError, match="eta_T"):
        resolve_config(get_experiment("attention-concentration"), "default", {"eta_T": 1e6})
    with pytest.raises(ConfigError, match="queries"):
        resolve_config(get_experiment("attention-concentration"), "default", {"queries": "some"})


def test_cnn_comparison_leaves_ties_undecided():
    import pandas as pd
    from vitheory.experiments import cnn_sample_complexity as C
    from vitheory.experiments.base import get_experiment, resolve_config
    cfg = resolve_config(get_experiment("cnn-sample-complexity"), "default")

    def tab(nmins):
        return pd.DataFrame({"alpha_*": [0.5, 0.4, 0.3], "alpha_*^-4": [16.0, 39.1, 123.5], "N_min": nmins,
                             "max_rate": [1.0, 1.0, 1.0]})
    claims, _ = C.comparison_claims(cfg, {"cnn": tab([16, 32, 64]), "vit": tab([16, 16, 16])})
    assert claims[0].id == "cnn-needs-more" and claims[0].supported is True      # the tie does not decide
    assert "1 here" in claims[0].evidence
    claims, _ = C.comparison_claims(cfg, {"cnn": tab([16, 12, 64]), "vit": tab([16, 16, 16])})
    assert claims[0].supported is False                                          # the CNN needs fewer at 0.4
    claims, _ = C.comparison_claims(cfg, {"cnn": tab([16, 16, 64]), "vit": tab([16, 16, 16])})
    assert claims[0].supported is None                                           # one deciding cell only
    claims, _ = C.comparison_claims(cfg, {"cnn": tab([16, 32, None]), "vit": tab([16, 16, 24])})
    assert claims[0].supported is True                                           # beyond the grid counts as more
    ratio = [c for c in claims if c.id == "ratio-grows"]
    assert ratio and ratio[0].supported is None                                  # 2 finite ratios: too few

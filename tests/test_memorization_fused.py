"""The hand-fused memorization kernel (issue 14): its gradients equal autograd's, and training with it equals
training through autograd (train/fused_mha.py)."""
import dataclasses

import pytest
import torch

from vitheory.data.memorization import make_memorization_data
from vitheory.models.mha import BatchedMHA, model_generators
from vitheory.train.fused_mha import NAMES, FusedMHA
from vitheory.train.memorize import TrainConfig, memorize, per_example_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(K=3, d=6, n=4, H=3, dh=5, C=10, dv=1, score_scale="d_model", heads_active=None):
    return BatchedMHA(n_ctx=n, d_in=d, n_heads=H, d_head=dh, n_out=C, d_v=dv, score_scale=score_scale,
                      generators=model_generators(list(range(1, K + 1))), heads_active=heads_active).double()


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("label_kind", ["classification", "regression"])
@pytest.mark.parametrize("dv,score_scale,heads_active", [(1, "d_model", None), (3, "d_head", [3, 1, 2])])
@pytest.mark.parametrize("weighted", [False, True])
def test_gradients_equal_autograd(shared, label_kind, dv, score_scale, heads_active, weighted):
    K, B, d, n = 3, 7, 6, 4
    C = 10 if label_kind == "classification" else 1
    m = _model(K, d, n, C=C, dv=dv, score_scale=score_scale, heads_active=heads_active)
    g = torch.Generator().manual_seed(5)
    q = torch.rand(K, B, d, generator=g, dtype=torch.float64)
    ctx = torch.rand((K, n, d) if shared else (K, B, n, d), generator=g, dtype=torch.float64)
    y = (torch.randint(0, C, (K, B), generator=g) if label_kind == "classification"
         else torch.rand(K, B, generator=g, dtype=torch.float64))
    w = (torch.rand(K, B, generator=g) > 0.3).double() if weighted else None
    per = per_example_loss(m.forward_query_row(q, ctx), y, label_kind)
    loss = per.mean(1).sum() if w is None else ((per * w).sum(1) / w.sum(1)).sum()
    loss.backward()
    f = FusedMHA(m)
    torch.testing.assert_close(f.forward(q, ctx), m.forward_query_row(q, ctx), rtol=1e-12, atol=1e-12)
    grad = f.grad(q, ctx, y, w, label_kind)
    for name in NAMES:
        torch.testing.assert_close(f.view(name, grad), getattr(m, name).grad, rtol=1e-10, atol=1e-12, msg=name)
    if heads_active is not None:                     # padded heads get exactly zero gradient
        for k, h in enumerate(heads_active):
            for name in ("W_Q", "W_K", "W_V", "W_O"):
                assert (f.view(name, grad)[k, h:] == 0).all()


def test_gradient_check_fails_on_a_wrong_gradient():
    """The comparison above can fail: a perturbed parameter gives a different gradient."""
    m = _model()
    q, ctx = torch.rand(3, 5, 6, dtype=torch.float64), torch.rand(3, 4, 6, dtype=torch.float64)
    y = torch.randint(0, 10, (3, 5))
    f = FusedMHA(m)
    g0 = f.grad(q, ctx, y, None, "classification")
    f.p[:, 0] += 0.5
    assert not torch.allclose(f.grad(q, ctx, y, None, "classification"), g0)


@pytest.mark.parametrize("context", ["shared", "random"])
def test_fused_training_equals_autograd_training(context):
    """Whole trainings (different T, schedules, early stops, compaction, best checkpoints) agree."""
    Ts, seeds, d, n = [8, 40, 300], [3, 4, 5], 8, 3
    cfg = TrainConfig(lr=3e-2, min_train_steps=150, train_epochs=150, eval_every=25)
    out = {}
    for attention in ("fused", "query_row"):
        ds = [make_memorization_data(T, d, n, context_type=context, seed=s) for T, s in zip(Ts, seeds)]
        m = BatchedMHA(n_ctx=n, d_in=d, n_heads=4, d_head=d, n_out=100, generators=model_generators(seeds)).double()
        out[attention] = memorize(m, ds, seeds, dataclasses.replace(cfg, attention=attention), keep_best=True)
    a, b = out["fused"], out["query_row"]
    for ma, mb in zip(a.metrics, b.metrics):
        for key in ("acc_final", "acc_best", "steps_trained", "step_best", "early_stopped"):
            assert ma[key] == mb[key], key
        assert ma["loss_final"] == pytest.approx(mb["loss_final"], rel=1e-8)
    for res in ("final_model", "best_model"):
        for p, q in zip(getattr(a, res).parameters(), getattr(b, res).parameters()):
            torch.testing.assert_close(p, q, rtol=1e-7, atol=1e-9)
    assert a.metrics[0]["early_stopped"] and not a.metrics[2]["early_stopped"]


def test_v1_mask_falls_back_to_autograd():
    with pytest.raises(ValueError, match="v2"):
        FusedMHA(BatchedMHA(n_ctx=3, d_in=6, n_heads=2, d_head=4, n_out=5, mask="v1",
                            generators=model_generators([1])))
    ds = [make_memorization_data(20, 6, 3, seed=1)]
    m = BatchedMHA(n_ctx=3, d_in=6, n_heads=2, d_head=6, n_out=100, mask="v1", generators=model_generators([1]))
    res = memorize(m, ds, [1], TrainConfig(lr=1e-2, min_train_steps=20, train_epochs=0, eval_every=10))
    assert res.metrics[0]["steps_trained"] == 20


def test_cached_data_check_equals_the_check_and_keys_on_the_data():
    from vitheory.experiments import _memorization as MC
    from vitheory.experiments.base import get_experiment, resolve_config
    cfg = resolve_config(get_experiment("memorization-heads"), "smoke", {})
    t = {"context": "shared", "H": 2, "n": 3, "d_head": 8, "T": 16, "seed": 0}
    ds = MC.make_data(cfg, t)
    direct = MC.check_data_assumptions(ds, cfg.check_subsets, 0)
    assert MC.cached_data_check(cfg, t, ds) == direct
    assert MC.cached_data_check(cfg, {**t, "H": 3}, ds) == direct          # same data set, other H: cached
    other = {**t, "seed": 1}
    assert MC.cached_data_check(cfg, other, MC.make_data(cfg, other)) == \
        MC.check_data_assumptions(MC.make_data(cfg, other), cfg.check_subsets, 1)


def test_early_stop_gives_the_capacities_of_the_full_run():
    """Stopping a run at 100 % training accuracy (the default) measures the same capacities M = max_T acc x T as
    training every run to its last step, with fewer steps."""
    from vitheory.experiments import _memorization as MC
    from vitheory.experiments.base import get_experiment, resolve_config
    import pandas as pd
    out = {}
    for early in (True, False):
        cfg = resolve_config(get_experiment("memorization-heads"), "smoke",
                             {"early_stop": str(early).lower(), "T_shared": "8,16,32,64", "T_random": "8,16,32,64",
                              "min_train_steps": "300", "heads": "1,3"})
        trials = get_experiment("memorization-heads").trials(cfg)
        rows = []
        for key in dict.fromkeys(MC.group_key(t) for t in trials):
            batch = [t for t in trials if MC.group_key(t) == key]
            rows += [{**t, **r} for t, r in zip(batch, MC.run_trials(cfg, batch, "cpu"))]
        out[early] = pd.DataFrame(rows)
    a, b = (MC.capacity_table(out[e], "H") for e in (True, False))
    pd.testing.assert_frame_equal(a, b)
    assert out[True]["steps_trained"].sum() < out[False]["steps_trained"].sum()
    assert (out[True]["early_stopped"]).any() and not out[False]["early_stopped"].any()


def test_step_cap_below_the_minimum_is_refused():
    from vitheory.config import ConfigError
    from vitheory.experiments.base import get_experiment, resolve_config
    with pytest.raises(ConfigError, match="max_train_steps=500 is below min_train_steps=1000"):
        resolve_config(get_experiment("memorization-heads"), "default", {"max_train_steps": "500"})
    cfg = resolve_config(get_experiment("memorization-heads"), "default", {"max_train_steps": "0"})
    assert cfg.max_train_steps == 0 and cfg.train_config().max_train_steps is None

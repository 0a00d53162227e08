"""Synthetic data, batched trainer and experiment logic of the memorization experiments (issue 4)."""
import dataclasses
import math

import pandas as pd
import pytest
import torch

from vitheory.analysis.stats import hinge_fit, linear_fit
from vitheory.cli import main
from vitheory.config import ConfigError
from vitheory.data.memorization import make_memorization_data, stack_data
from vitheory.experiments import _memorization as MC
from vitheory.experiments import memorization_context as EC
from vitheory.experiments import memorization_head_dim as ED
from vitheory.experiments import memorization_heads as E
from vitheory.experiments.base import get_experiment, resolve_config
from vitheory.models.mha import BatchedMHA, model_generators
from vitheory.seeding import derive_seed
from vitheory.sweep.runner import run_experiment
from vitheory.train.memorize import BatchedAdam, IndexStream, TrainConfig, lr_at, memorize, train_steps


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------------------
def test_data_shapes_ranges_and_determinism():
    a = make_memorization_data(50, 6, 3, context_type="shared", seed=4)
    b = make_memorization_data(50, 6, 3, context_type="shared", seed=4)
    c = make_memorization_data(50, 6, 3, context_type="shared", seed=5)
    assert a.queries.shape == (50, 6) and a.context.shape == (3, 6) and a.labels.shape == (50,)
    assert torch.equal(a.queries, b.queries) and torch.equal(a.context, b.context) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.queries, c.queries)
    assert 0 <= float(a.queries.min()) and float(a.queries.max()) <= 1
    assert a.labels.dtype == torch.long and 0 <= int(a.labels.min()) and int(a.labels.max()) < 100
    X = a.inputs()
    assert X.shape == (50, 4, 6) and torch.equal(X[:, 0], a.queries)
    assert torch.equal(X[7, 1:], X[31, 1:])                          # the context is shared
    r = make_memorization_data(40, 6, 3, context_type="random", label_kind="regression", seed=4)
    assert r.context.shape == (40, 3, 6) and r.labels.dtype == torch.float32 and r.n_classes == 1
    assert not torch.equal(r.context[0], r.context[1])
    assert 0 <= float(r.labels.min()) and float(r.labels.max()) <= 1
    # float64 sees the float32 draw cast up; a data set does not depend on the model's H or d_h (no such input)
    assert torch.equal(make_memorization_data(50, 6, 3, seed=4, dtype=torch.float64).queries, a.queries.double())


def test_data_bad_input():
    with pytest.raises(ValueError, match="context_type"):
        make_memorization_data(5, 4, 2, context_type="perm")
    with pytest.raises(ValueError, match="label_kind"):
        make_memorization_data(5, 4, 2, label_kind="ranking")
    with pytest.raises(ValueError, match="T=0"):
        make_memorization_data(0, 4, 2)


def test_stack_pads_and_gathers():
    ds = [make_memorization_data(T, 4, 2, context_type="random", seed=s) for s, T in [(0, 5), (1, 9)]]
    st = stack_data(ds)
    assert st.queries.shape == (2, 9, 4) and st.context.shape == (2, 9, 2, 4) and st.sizes.tolist() == [5, 9]
    assert (st.queries[0, 5:] == 0).all()
    q, ctx, y = st.gather(torch.tensor([[4, 0], [8, 3]]))
    assert torch.equal(q[1, 0], ds[1].queries[8]) and torch.equal(ctx[0, 0], ds[0].context[4])
    assert torch.equal(y[1, 1], ds[1].labels[3])


def test_derive_seed_is_stable():
    assert derive_seed(3, "x") == derive_seed(3, "x") != derive_seed(3, "y")
    assert 0 <= derive_seed(2**40, "a", 1.5) < 2**63


# ------------------------------------------------------------------------------------------------------------
# optimiser, schedule, minibatch order
# ------------------------------------------------------------------------------------------------------------
def test_batched_adam_equals_k_torch_adams():
    g = torch.Generator().manual_seed(0)
    K = 3
    W = torch.randn(K, 4, 5, generator=g, dtype=torch.float64)
    targets = torch.randn(K, 5, generator=g, dtype=torch.float64)
    x = torch.randn(K, 7, 4, generator=g, dtype=torch.float64)
    lrs = torch.tensor([1e-3, 3e-2, 0.2], dtype=torch.float64)

    batched = torch.nn.Parameter(W.clone())
    opt = BatchedAdam({"W": batched})
    singles = [torch.nn.Parameter(W[k].clone()) for k in range(K)]
    topts = [torch.optim.Adam([p], lr=float(lrs[k]), foreach=False) for k, p in enumerate(singles)]

    def loss_k(w, k):
        return ((x[k] @ w - targets[k]) ** 4).mean()

    for step in range(25):
        scale = lrs * (1 + 0.5 * math.sin(step))                   # a per-model schedule
        opt.zero_grad()
        sum(loss_k(batched[k], k) for k in range(K)).backward()
        opt.step(scale)
        for k in range(K):
            for group in topts[k].param_groups:
                group["lr"] = float(scale[k])
            topts[k].zero_grad()
            loss_k(singles[k], k).backward()
            topts[k].step()
    for k in range(K):
        torch.testing.assert_close(batched[k], singles[k], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(batched, W)                            # it did move


def test_lr_schedule_matches_torch_sequential():
    cfg = TrainConfig(lr=1e-3)
    total = 400
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=cfg.lr)
    warm = total // cfg.warmup_div
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=warm),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warm)], milestones=[warm])
    ours = lr_at(torch.arange(total), total, cfg)
    for s in range(total):
        assert abs(opt.param_groups[0]["lr"] - float(ours[s])) < 1e-9, s
        opt.step()
        sched.step()
    assert float(ours[0]) == pytest.approx(1e-5) and float(ours[warm]) == pytest.approx(1e-3)
    # vectorised over models with different totals
    v = lr_at(torch.tensor([0, 50]), torch.tensor([100, 1000]), cfg)
    assert float(v[0]) == pytest.approx(1e-5) and float(v[1]) == pytest.approx(1e-3 * (0.01 + 0.99 * 50 / 50))


def test_train_steps_rule():
    cfg = TrainConfig()
    assert train_steps(10_000, cfg) == 50_000
    assert train_steps(130_000, cfg) == 500 * 130_000 // 256
    assert train_steps(10_000, TrainConfig(min_train_steps=100, max_train_steps=5000)) == 5000


def test_index_stream_walks_permutations():
    s = IndexStream(10, seed=1)
    rows, w = s.next_batches(5, 4)                                   # 20 indices = 2 epochs
    assert w is None and rows.shape == (5, 4)
    flat = rows.flatten()
    assert sorted(flat[:10].tolist()) == list(range(10)) and sorted(flat[10:].tolist()) == list(range(10))
    # chunking does not change the order
    a, b = IndexStream(10, seed=1), IndexStream(10, seed=1)
    ra = torch.cat([a.next_batches(2, 3)[0].flatten(), a.next_batches(3, 3)[0].flatten()])
    assert torch.equal(ra, b.next_batches(5, 3)[0].flatten())
    small = IndexStream(3, seed=0)
    rows, w = small.next_batches(2, 8)
    assert w is not None and w.sum(1).tolist() == [3, 3] and sorted(rows[0, :3].tolist()) == [0, 1, 2]


# ------------------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------------------
def _setup(Ts, seeds, H=2, d=8, n=3, context="shared", labels="classification", dtype=torch.float64):
    ds = [make_memorization_data(T, d, n, context_type=context, label_kind=labels, seed=s) for T, s in zip(Ts, seeds)]
    n_out = 100 if labels == "classification" else 1
    m = BatchedMHA(n_ctx=n, d_in=d, n_heads=H, d_head=d, n_out=n_out, generators=model_generators(seeds)).to(dtype)
    return m, ds


def test_tiny_set_reaches_100_percent_and_stops_early():
    m, ds = _setup([12, 12], [0, 1], H=4)
    cfg = TrainConfig(lr=1e-2, min_train_steps=3000, train_epochs=0, eval_every=25, batch_size=256)
    res = memorize(m, ds, [0, 1], cfg)
    for met in res.metrics:
        assert met["acc_final"] == 1.0 and met["early_stopped"] is True
        assert met["steps_trained"] < met["steps_planned"] == 3000
        assert met["steps_trained"] % 25 == 0 and met["memorized"] == pytest.approx(met["acc_best"] * 12)
    assert res.model_steps == sum(met["steps_trained"] for met in res.metrics)
    # the returned final weights are the stopped model's: they fit the training set
    for k, d in enumerate(ds):
        sub = res.final_model.take([k])
        logits = sub.forward_query_row(d.queries[None].double(), d.context[None].double())
        assert (logits.argmax(-1)[0] == d.labels).all()


@pytest.mark.parametrize("context", ["shared", "random"])
def test_batched_training_equals_training_alone(context):
    """K models with different T (different step counts, schedules, early stops) trained together give the same
    result as each trained alone: the freezing/compaction logic and the per-model schedules are right."""
    Ts, seeds = [8, 40, 300], [3, 4, 5]
    cfg = TrainConfig(lr=3e-2, min_train_steps=150, train_epochs=150, eval_every=25)
    assert [train_steps(T, cfg) for T in Ts] == [150, 150, 175]        # different schedules in one batch
    m, ds = _setup(Ts, seeds, H=4, context=context)
    res = memorize(m, ds, seeds, cfg, keep_best=True)
    for k in range(3):
        m1, ds1 = _setup([Ts[k]], [seeds[k]], H=4, context=context)
        r1 = memorize(m1, ds1, [seeds[k]], cfg, keep_best=True)
        for key in ("acc_final", "acc_best", "steps_trained", "step_best", "early_stopped"):
            assert res.metrics[k][key] == r1.metrics[0][key], (k, key)
        assert res.metrics[k]["loss_final"] == pytest.approx(r1.metrics[0]["loss_final"], rel=1e-9)
        for (name, p), (_, p1) in zip(res.final_model.named_parameters(), r1.final_model.named_parameters()):
            torch.testing.assert_close(p[k], p1[0], rtol=1e-8, atol=1e-10)
        for (name, p), (_, p1) in zip(res.best_model.named_parameters(), r1.best_model.named_parameters()):
            torch.testing.assert_close(p[k], p1[0], rtol=1e-8, atol=1e-10)
    assert res.metrics[0]["early_stopped"] and not res.metrics[2]["early_stopped"]


def test_regression_runs_full_length_and_reports_mse():
    m, ds = _setup([30, 30], [0, 1], labels="regression")
    cfg = TrainConfig(lr=1e-2, min_train_steps=60, train_epochs=0, eval_every=20)
    res = memorize(m, ds, [0, 1], cfg)
    for met in res.metrics:
        assert met["steps_trained"] == 60 and met["early_stopped"] is False
        assert met["acc_final"] is None and met["memorized"] is None
        assert 0 <= met["loss_best"] <= met["loss_final"] + 1e-12 or met["step_best"] < 60
    first = [h[0][1] for h in res.history]
    assert all(met["loss_best"] < f for met, f in zip(res.metrics, first))  # training lowered the MSE


def test_deterministic():
    cfg = TrainConfig(lr=1e-2, min_train_steps=40, train_epochs=0, eval_every=20)
    out = []
    for _ in range(2):
        m, ds = _setup([50, 80], [7, 8], dtype=torch.float32)
        out.append(memorize(m, ds, [7, 8], cfg).metrics)
    assert out[0] == out[1]


def test_full_attention_training_equals_query_row_training():
    cfg = TrainConfig(lr=1e-2, min_train_steps=30, train_epochs=0, eval_every=10)
    out = {}
    for attention in ("query_row", "full"):
        m, ds = _setup([40, 60], [1, 2], context="random")
        out[attention] = memorize(m, ds, [1, 2], dataclasses.replace(cfg, attention=attention))
    for a, b in zip(out["query_row"].metrics, out["full"].metrics):
        assert a["acc_final"] == b["acc_final"] and a["loss_final"] == pytest.approx(b["loss_final"], rel=1e-9)
    for p, q in zip(out["query_row"].final_model.parameters(), out["full"].final_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-8, atol=1e-10)


# ------------------------------------------------------------------------------------------------------------
# experiments: bad input, analysis rules, a smoke run through the framework
# ------------------------------------------------------------------------------------------------------------

MEM_EXPERIMENTS = ["memorization-heads", "memorization-context", "memorization-head-dim", "saturation"]


@pytest.mark.parametrize("name", MEM_EXPERIMENTS)
@pytest.mark.parametrize("override,param", [
    ({"contexts": "perm"}, "contexts"), ({"labels": "ranking"}, "labels"), ({"T_shared": "0,10"}, "T_shared"),
    ({"T_random": "-5"}, "T_random"), ({"seeds": 0}, "seeds"), ({"d": 1}, "d")])
def test_bad_common_input_names_the_parameter(name, override, param):
    with pytest.raises(ConfigError, match=param):
        resolve_config(get_experiment(name), "default", override)


@pytest.mark.parametrize("name,override,param,allowed", [
    ("memorization-heads", {"n": 16}, "n", "[1, 15]"),
    ("memorization-heads", {"n": 40, "d": 32}, "n", "[1, 31]"),
    ("memorization-heads", {"heads": "0,2"}, "heads", "[1, 4096]"),
    ("memorization-heads", {"d_head": 0}, "d_head", "[1, 4096]"),
    ("memorization-context", {"ns": "2,16"}, "ns", "[1, 15]"),
    ("memorization-context", {"H": 0}, "H", "[1, 4096]"),
    ("memorization-head-dim", {"d_heads": "0,4"}, "d_heads", "[1, 4096]"),
    ("memorization-head-dim", {"n": 0}, "n", "[1, 31]"),
    ("saturation", {"heads": "4,8,16"}, "T_shared", "one T per value of heads"),
    ("saturation", {"threshold": 1.0}, "threshold", "(0.0, 1.0)"),
])
def test_bad_specific_input(name, override, param, allowed):
    with pytest.raises(ConfigError) as e:
        resolve_config(get_experiment(name), "default", override)
    msg = str(e.value)
    assert param in msg and allowed in msg and "\n" not in msg


def test_cli_bad_input_exit_2_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    for args in (["--set", "n=16"], ["--set", "d_head=0"], ["--set", "heads=0"], ["--set", "T_shared=0"],
                 ["--set", "contexts=perm"], ["--set", "labels=ranking"]):
        assert main(["run", "memorization-heads", "--out", str(out), "--quiet", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1, err
        assert not out.exists()


def _fake_df(x, Ms, context="shared", seeds=(0, 1), Ts=(50, 100, 200, 400), jitter=0.0, full_top=False):
    """Rows whose max_T acc*T equals the given capacities (acc = min(1, M/T), the top T just below M)."""
    rows = []
    for xv, M in zip(x[1], Ms):
        for s in seeds:
            for T in Ts:
                acc = 1.0 if (full_top and T == max(Ts)) else min(1.0, (M + jitter * s) / T)
                rows.append({"context": context, x[0]: xv, "seed": s, "T": T, "acc_best": acc,
                             "memorized": acc * T, "memorized_above_chance": acc * T,
                             "assumptions_ok": True, "a2_full_rank_fraction": 1.0, "a1_fraction": 1.0,
                             "a2_margin": 0.1, "a1_subsets": 100, "loss_best": 1.0 / (1 + M)})
    return pd.DataFrame(rows)


def test_heads_analysis_rules():
    cfg = resolve_config(get_experiment("memorization-heads"), "default", {"contexts": "shared"})
    H = (1, 2, 4, 6, 8)
    lin = E.analyze(cfg, _fake_df(("H", H), [40 * h + 10 for h in H], jitter=2.0))
    c7 = [c for c in lin.claims if c.id == "C7-shared"][0]
    assert c7.supported is True and "R² = 1.000" in c7.evidence
    assert lin.numbers["shared"]["fit"]["slope"] == pytest.approx(40, rel=1e-6)
    sat = E.analyze(cfg, _fake_df(("H", H), [100, 180, 300, 310, 315]))
    assert [c for c in sat.claims if c.id == "C7-shared"][0].supported is False
    cens = E.analyze(cfg, _fake_df(("H", H), [40 * h for h in H], full_top=True))
    c = [c for c in cens.claims if c.id == "C7-shared"][0]
    assert c.supported is None and "INCONCLUSIVE" in c.evidence
    assert [c for c in lin.claims if c.id == "C1"][0].supported is True


def test_context_and_head_dim_analysis_rules():
    cfg = resolve_config(get_experiment("memorization-context"), "default", {"contexts": "shared"})
    ns = (1, 2, 4, 8, 12, 15)
    up = EC.analyze(cfg, _fake_df(("n", ns), [10, 30, 60, 90, 130, 140]))
    assert [c for c in up.claims if c.id == "C8-shared"][0].supported is True
    down = EC.analyze(cfg, _fake_df(("n", ns), [140, 30, 60, 20, 130, 10]))
    assert [c for c in down.claims if c.id == "C8-shared"][0].supported is False

    cfg = resolve_config(get_experiment("memorization-head-dim"), "default",
                         {"contexts": "shared", "T_shared": "50,100,200,400", "d": "16", "n": "8"})
    dh = (1, 2, 4, 6, 8, 10, 12, 16)
    knee = ED.analyze(cfg, _fake_df(("d_head", dh), [20 * min(v, 8) + 20 for v in dh]))
    verdicts = {c.id: c.supported for c in knee.claims}
    assert verdicts["C9-increase-shared"] and verdicts["C9-plateau-shared"] and verdicts["C9-knee-shared"]
    assert knee.numbers["shared"]["hinge"]["kappa"] == pytest.approx(8, abs=0.05)
    line = ED.analyze(cfg, _fake_df(("d_head", dh), [20 * v + 20 for v in dh]))
    verdicts = {c.id: c.supported for c in line.claims}
    assert verdicts["C9-increase-shared"] and not verdicts["C9-plateau-shared"] and not verdicts["C9-knee-shared"]


def test_hinge_and_linear_fit_helpers():
    f = linear_fit([1, 2, 3, 4], [2, 4, 6, 8.5])
    assert f["slope_lo"] < f["slope"] < f["slope_hi"] and 0.98 < f["r2"] <= 1
    assert linear_fit([1, 2], [1, 2]) == {"n_points": 2}
    h = hinge_fit([1, 2, 3, 4, 5, 6], [1, 2, 3, 3, 3, 3])
    assert h["kappa"] == pytest.approx(3, abs=0.02) and h["sse"] < 1e-8 < h["sse_line"]


def test_smoke_run_through_the_framework():
    df = run_experiment("memorization-heads", scale="smoke", out=None, device="cpu", progress=False,
                        overrides={"heads": "1,2", "T_shared": "8,16", "T_random": "8,16"})
    assert len(df) == 2 * 2 * 2
    assert {"acc_best", "memorized", "steps_trained", "assumptions_ok", "a1_fraction", "batch_models"} <= set(df.columns)
    assert df["assumptions_ok"].all() and (df["batch_models"] == 2).all()     # one batch per (context, H)
    a = get_experiment("memorization-heads").analyze(
        resolve_config(get_experiment("memorization-heads"), "smoke", {"heads": "1,2"}), df)
    assert {c.id for c in a.claims} == {"C1", "C7-shared", "C7-random"}
    # same config + seed -> same numbers
    df2 = run_experiment("memorization-heads", scale="smoke", out=None, device="cpu", progress=False,
                         overrides={"heads": "1,2", "T_shared": "8,16", "T_random": "8,16"})
    assert df["loss_best"].tolist() == df2["loss_best"].tolist()


def test_saturation_smoke_and_attention_stats():
    E = get_experiment("saturation")
    cfg = resolve_config(E, "smoke", {"contexts": "shared"})
    trials = E.trials(cfg)
    assert [(t["H"], t["T"]) for t in trials] == [(2, 16), (4, 32)]
    rows = E.run_trials(cfg, [trials[1]], "cpu")
    r = rows[0]
    assert sum(r["sat_hist"]) == 32 and len(r["sat_hist"]) == 5 and len(r["head_sat_share"]) == 4
    assert 0 <= r["sat_share"] <= 1 and r["init_sat_share"] == 0.0       # nothing saturates at init
    assert r["steps_trained"] == r["steps_planned"]                       # no early stop in this experiment
    # a hand-made saturated model: huge scores -> one-hot attention on every head
    m = BatchedMHA(n_ctx=3, d_in=8, n_heads=2, d_head=8, n_out=5, generators=model_generators([0]))
    with torch.no_grad():
        m.W_Q.mul_(1e3)
    d = make_memorization_data(20, 8, 3, seed=0)
    s = MC.attention_saturation(m, [d])[0]
    assert s["sat_share"] == 1.0 and s["sat_hist"] == [0, 0, 20] and s["frac_examples_ge1"] == 1.0

"""The explicit memorizing MHA construction (claim C13): it certifies on hand-sized data, the certificate fails on
data that break Assumption 1, the weights are those of the project's MHA layer, and bad configs name the knob."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
import torch

from vitheory.config import ConfigError
from vitheory.experiments.base import get_experiment, resolve_config
from vitheory.models import mha_construct as MC
from vitheory.models.mha import BatchedMHA, model_generators


def _data(T, d, n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((T, d)), rng.random((n, d)), rng.standard_normal(T)


def test_capacities():
    assert MC.capacity(2, 3, 3) == 5 == MC.hypothesis_capacity(2, 3, 3) == MC.rank_bound(2, 3)
    assert MC.capacity(4, 8, 2) == 9 and MC.hypothesis_capacity(4, 8, 2) == 5


@pytest.mark.parametrize("H,n,dh", [(2, 3, 3), (3, 4, 2), (2, 5, 8)])
def test_certifies_hand_sized_case(H, n, dh):
    T = MC.capacity(H, n, dh)
    q, E, y = _data(T, 8, n)
    model = MC.construct(q, E, y, H, dh)
    cert = MC.certify(model, q, E, y)
    assert cert.certified and cert.reason == ""
    assert cert.rank == T and cert.sigma_min > 1e3 * cert.tol
    assert cert.max_err < 1e-6
    f = MC.forward(model, q, E)
    assert np.max(np.abs(f - y)) == pytest.approx(cert.max_err)
    # each responsible query is selected: its head is one-hot on its token; every head's rank of E W_K W_Q^T <= d_h
    a = MC.attention(q, E, model.W_Q, model.W_K)                     # [T, H, n]
    for t in np.flatnonzero(model.head >= 0):
        assert a[t, model.head[t], model.token[t]] > 1 - 1e-12
    for h in range(H):
        assert np.linalg.matrix_rank(E @ model.W_K[h] @ model.W_Q[h].T) <= min(dh, n - 1)


def test_other_labels_same_features():
    """Arbitrary labels: the same data with new labels certifies too (the read-out is the only change)."""
    q, E, _ = _data(5, 8, 3)
    for s in range(3):
        y = np.random.default_rng(10 + s).standard_normal(5) * 100
        cert = MC.certify(MC.construct(q, E, y, 2, 3), q, E, y)
        assert cert.certified, cert.reason


def test_repeated_query_fails_cleanly():
    q, E, y = _data(5, 8, 3)
    q[1] = q[0]                                                      # Kruskal rank 1 < n: Assumption 1 broken
    y[1] = y[0] + 1.0                                                # different labels on equal inputs
    cert = MC.certify(MC.construct(q, E, y, 2, 3), q, E, y)
    assert not cert.certified
    assert cert.rank == 4 and cert.max_err >= 0.4                    # the best fit splits the difference
    assert "rank deficit 1" in cert.reason and "max |f - y|" in cert.reason
    assert cert.n_unseparable >= 1 and "Assumption 1" in cert.reason


def test_too_many_examples_rejected():
    q, E, y = _data(6, 8, 3)
    with pytest.raises(ValueError, match="capacity"):
        MC.construct(q, E, y, 2, 3)


def test_weights_match_the_project_mha_layer():
    """The constructed weights in BatchedMHA (W_E = I, b_E = 0, no positions, W_Q * sqrt(d)) give the same f."""
    H, n, dh, d = 2, 3, 3, 8
    q, E, y = _data(MC.capacity(H, n, dh), d, n)
    m = MC.construct(q, E, y, H, dh)
    net = BatchedMHA(n_ctx=n, d_in=d, n_heads=H, d_head=dh, n_out=1, generators=model_generators([0])).double()
    with torch.no_grad():
        net.W_E.copy_(torch.eye(d)[None]); net.b_E.zero_(); net.pos.zero_()
        net.W_Q.copy_(torch.from_numpy(m.W_Q * math.sqrt(d))[None]); net.W_K.copy_(torch.from_numpy(m.W_K)[None])
        net.W_V.copy_(torch.from_numpy(m.W_V)[None]); net.W_O.copy_(torch.from_numpy(m.W_O)[None])
        net.W_U.copy_(torch.from_numpy(m.w_U)[None, :, None]); net.b_U.zero_()
        f = net.forward_query_row(torch.from_numpy(q)[None], torch.from_numpy(E)[None])[0, :, 0].numpy()
    assert np.max(np.abs(f - y)) < 1e-6


@pytest.mark.parametrize("key,value", [("n", (4, 40)), ("heads", (0,)), ("d_head", ()), ("err_tol", 0.0),
                                       ("saturation", 1e4), ("d", 2), ("seeds", 0)])
def test_config_errors_name_the_parameter(key, value):
    exp = get_experiment("memorization-construct")
    with pytest.raises(ConfigError, match=key):
        resolve_config(exp, "default", {key: value})


def test_analysis_reports_a_failed_certificate():
    """analyze works from stored rows only: a failing row makes C13-certified false and is named in the evidence."""
    exp = get_experiment("memorization-construct")
    cfg = resolve_config(exp, "smoke")
    plan = exp.trials(cfg)
    rows = exp.run_trials(cfg, plan, "cpu")
    import pandas as pd
    df = pd.DataFrame([{**t, **r} for t, r in zip(plan, rows)])
    a = exp.analyze(cfg, df)
    assert {c.id: c.supported for c in a.claims} == {"C13-certified": True, "C13-bound": True, "C13-control": True}
    i = df.index[df["kind"] == "construct"][0]
    df.loc[i, ["certified", "rank", "reason"]] = [False, df.loc[i, "T"] - 1, "rank deficit 1: test"]
    a = exp.analyze(cfg, df)
    c = {c.id: c for c in a.claims}
    assert c["C13-certified"].supported is False and "rank deficit 1: test" in c["C13-certified"].evidence


def test_rank_bound_holds_for_any_weights():
    """Each head's attention sums to 1, so rank Phi <= H(n-1)+1 whatever the weights: with d_h >= n the
    construction's T_max is the most any weights can certify."""
    H, n, d, dh = 3, 4, 10, 6
    T = MC.rank_bound(H, n) + 5
    rng = np.random.default_rng(1)
    q, E = rng.random((T, d)), rng.random((n, d))
    for scale in (0.1, 3.0, 30.0):
        W_Q, W_K = rng.standard_normal((2, H, d, dh)) * scale
        assert np.linalg.matrix_rank(MC.features(q, E, W_Q, W_K)) <= MC.rank_bound(H, n)


@settings(max_examples=25, deadline=None)
@given(H=st.integers(1, 4), n=st.integers(2, 6), dh=st.integers(1, 7), extra_d=st.integers(1, 6),
       seed=st.integers(0, 10_000))
def test_certifies_random_small_cells(H, n, dh, extra_d, seed):
    d = n + extra_d
    T = MC.capacity(H, n, dh)
    q, E, y = _data(T, d, n, seed)
    cert = MC.certify(MC.construct(q, E, y, H, dh), q, E, y)
    # positive queries always admit a peeling order, so the construction must certify
    assert cert.certified, cert.reason


def test_queries_inside_the_cone_are_peeled():
    """T = 33 queries in d = 4: some are not extreme rays of the cone of all queries (not separable from all
    others); the peeling order and the logit-scale hierarchy still certify."""
    H, n, dh, d = 16, 3, 2, 4
    T = MC.capacity(H, n, dh)
    q, E, y = _data(T, d, n, seed=0)
    inside = [t for t in range(T) if MC.separation(q[t], np.delete(q, t, axis=0))[0] <= 0]
    assert len(inside) >= 2
    m = MC.construct(q, E, y, H, dh)
    assert m.lam > 40                                                # the hierarchy was needed
    cert = MC.certify(m, q, E, y)
    assert cert.certified and cert.rank == T, cert.reason

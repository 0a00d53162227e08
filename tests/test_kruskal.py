"""Exact and sampled Kruskal rank against brute force / per-subset SVD (vitheory.linalg.exact, vitheory.linalg.sampled)."""
import itertools
import json
import math

import numpy as np
import pytest
import torch

from vitheory.cli import main
from vitheory.config import ConfigError
from vitheory.linalg import (kruskal_rank, load_array, random_subsets, sampled_kruskal_curve, sampled_rank_check,
                             unit_rows)
from vitheory.linalg import clopper_pearson, default_tol


# --------------------------------------------------------------------------------------------------
# brute force: every subset, increasing size, numpy SVD of the unit vectors (the definition)
# --------------------------------------------------------------------------------------------------
def sigma_min(V, S):
    U, _ = unit_rows(np.asarray(V, dtype=np.float64))
    S = list(S)
    if len(S) > U.shape[1]:
        return 0.0
    return float(np.linalg.svd(U[S], compute_uv=False)[-1])


def brute(V, tau):
    """(k-rank, min sigma_min over all k-subsets) by enumerating every subset."""
    V = np.asarray(V, dtype=np.float64)
    T, d = V.shape
    if (np.linalg.norm(V, axis=1) == 0).any():
        return 0, None
    U, _ = unit_rows(V)
    k = min(T, d)
    for size in range(1, min(T, d) + 1):
        if any(np.linalg.svd(U[list(S)], compute_uv=False)[-1] <= tau for S in itertools.combinations(range(T), size)):
            k = size - 1
            break
    margin = min(np.linalg.svd(U[list(S)], compute_uv=False)[-1] for S in itertools.combinations(range(T), k)) \
        if k >= 1 else None
    return k, margin


def check_against_brute(V, tau):
    r = kruskal_rank(V, tau)
    k, margin = brute(V, tau)
    assert r.certified and r.kruskal_rank == k, (r, k)
    T, d = np.shape(V)
    if k < min(T, d):
        assert r.witness is not None and len(r.witness) == k + 1
        assert sigma_min(V, r.witness) <= tau                      # the witness really is dependent
        assert r.witness_sigma_min <= tau
    else:
        assert r.witness is None
    if k >= 1:
        assert r.margin_exact and r.margin == pytest.approx(margin, rel=1e-9, abs=1e-15)
        assert sigma_min(V, r.margin_subset) == pytest.approx(r.margin, rel=1e-12, abs=1e-15)
    return r


def planted(rng, T, d, size):
    V = rng.standard_normal((T, d))
    S = rng.choice(T, size, replace=False)
    V[S[0]] = rng.standard_normal(size - 1) @ V[S[1:]]
    return V, S


@pytest.mark.parametrize("T,d", [(1, 3), (3, 1), (5, 3), (8, 4), (9, 6), (7, 7), (11, 5)])
def test_gaussian_is_full(T, d):
    V = np.random.default_rng(T * 10 + d).standard_normal((T, d))
    r = check_against_brute(V, 1e-10)
    assert r.kruskal_rank == min(T, d)


@pytest.mark.parametrize("size", [2, 3, 4, 5, 6])
def test_planted_dependency(size):
    rng = np.random.default_rng(size)
    for _ in range(3):
        V, S = planted(rng, 11, 7, size)
        r = check_against_brute(V, 1e-10)
        assert r.kruskal_rank == size - 1
        assert set(r.witness) == set(int(i) for i in S)


def test_planted_found_without_sparse_search():
    # the level scan alone (no OMP) must find a dependency planted among late indices
    rng = np.random.default_rng(7)
    V = rng.standard_normal((14, 7))
    V[13] = V[10] - 2 * V[12] + 0.5 * V[11]
    r = kruskal_rank(V, 1e-10, sparse="none")
    assert r.kruskal_rank == 3 and set(r.witness) == {10, 11, 12, 13}
    assert kruskal_rank(V, 1e-10, sparse="lp").kruskal_rank == 3


def test_duplicate_parallel_and_zero_vectors():
    rng = np.random.default_rng(1)
    V = rng.standard_normal((8, 5))
    W = V.copy()
    W[6] = -3.5 * W[2]                      # parallel (anti-parallel, scaled)
    r = check_against_brute(W, 1e-10)
    assert r.kruskal_rank == 1 and set(r.witness) == {2, 6}
    W = V.copy()
    W[4] = W[1]                             # duplicate
    assert check_against_brute(W, 1e-10).kruskal_rank == 1
    W = V.copy()
    W[3] = 0.0                              # zero vector
    r = kruskal_rank(W, 1e-10)
    assert r.kruskal_rank == 0 and r.witness == (3,) and r.certified


def test_identical_vectors_like_the_embedding_cls():
    V = np.tile(np.random.default_rng(0).standard_normal(16), (50, 1))
    r = kruskal_rank(V)
    assert r.kruskal_rank == 1 and len(r.witness) == 2


def test_rank_deficient():
    rng = np.random.default_rng(3)
    for r_ in (1, 2, 3, 4):
        V = rng.standard_normal((10, r_)) @ rng.standard_normal((r_, 6))
        r = check_against_brute(V, 1e-10)
        assert r.kruskal_rank <= r_ and r.numerical_rank == r_


def test_scaled_vectors_do_not_change_the_answer():
    rng = np.random.default_rng(4)
    V, _ = planted(rng, 10, 6, 4)
    W = V * 10.0 ** rng.uniform(-6, 6, size=(10, 1))
    a, b = kruskal_rank(V, 1e-10), kruskal_rank(W, 1e-10)
    assert a.kruskal_rank == b.kruskal_rank == 3
    assert set(a.witness) == set(b.witness)
    V = rng.standard_normal((9, 5))
    W = V * 10.0 ** rng.uniform(-6, 6, size=(9, 1))
    assert kruskal_rank(W, 1e-10).margin == pytest.approx(kruskal_rank(V, 1e-10).margin, rel=1e-8)


def test_float32_input_uses_its_tolerance():
    rng = np.random.default_rng(5)
    V, S = planted(rng, 10, 6, 3)
    V32 = V.astype(np.float32)                     # the dependency now holds only to float32 precision
    assert default_tol(V32.dtype) == 1e-5
    r32 = kruskal_rank(V32)
    assert r32.tol == 1e-5 and r32.kruskal_rank == 2 and set(r32.witness) == set(int(i) for i in S)
    # the same numbers read as exact float64 data are (numerically) independent at 1e-10
    k64, _ = brute(V32.astype(np.float64), 1e-10)
    assert kruskal_rank(V32.astype(np.float64), 1e-10).kruskal_rank == k64 > 2
    assert kruskal_rank(torch.from_numpy(V32)).kruskal_rank == 2     # torch input keeps its dtype


def test_tolerance_threshold_is_exact():
    # three unit vectors at a controlled distance from dependence: sigma_min = s0 exactly known by SVD
    rng = np.random.default_rng(6)
    V = rng.standard_normal((7, 5))
    V[6] = V[0] + V[1] + 3e-4 * rng.standard_normal(5)
    s0 = sigma_min(V, (0, 1, 6))
    assert 1e-6 < s0 < 1e-2
    for tau in (s0 * (1 - 1e-6), s0 * (1 + 1e-6), 1e-8, 1e-2):
        check_against_brute(V, tau)
    ks = [kruskal_rank(V, t).kruskal_rank for t in (1e-12, 1e-8, 1e-5, 1e-3, 1e-1, 0.5)]
    assert ks == sorted(ks, reverse=True)          # more tolerance, never a larger Kruskal rank


def test_random_small_cases_against_brute():
    rng = np.random.default_rng(11)
    for trial in range(60):
        T, d = int(rng.integers(2, 11)), int(rng.integers(2, 7))
        V = rng.standard_normal((T, d))
        if trial % 3 == 1 and T >= 3:
            V, _ = planted(rng, T, d, int(rng.integers(2, min(6, T, d + 1) + 1)))
        elif trial % 3 == 2:
            r_ = int(rng.integers(1, d + 1))
            V = rng.standard_normal((T, r_)) @ rng.standard_normal((r_, d))
        check_against_brute(V, 1e-10)


def test_budget_and_time_limit_give_bounds():
    V = np.random.default_rng(8).standard_normal((40, 20))
    r = kruskal_rank(V, max_subsets=1000)
    assert not r.certified and r.kruskal_rank is None and 2 <= r.lower_bound <= r.upper_bound == 20
    r = kruskal_rank(np.random.default_rng(9).standard_normal((26, 13)), time_limit=0.05)
    assert r.kruskal_rank is None or r.kruskal_rank == 13
    json.dumps(r.to_dict())


def test_exact_is_much_faster_than_enumeration():
    # 10 x 20 Gaussian: plain enumeration calls matrix_rank ~617k times (>10 s); the scan takes well under 1 s
    A = np.random.default_rng(0).standard_normal((10, 20))
    r = kruskal_rank(A.T)
    assert r.kruskal_rank == 10 and r.seconds < 3.0
    assert r.subsets_checked >= math.comb(20, 10)


@pytest.mark.parametrize("bad,msg", [
    (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN"),
    (np.array([[1.0, np.inf], [0.0, 1.0]]), "infinite"),
    (np.ones(4), "2-D"),
    (np.ones((2, 2, 2)), "2-D"),
    (np.zeros((0, 3)), "empty"),
    (np.array([["a", "b"]]), "dtype"),
])
def test_bad_vectors(bad, msg):
    with pytest.raises(ConfigError, match=msg):
        kruskal_rank(bad)
    with pytest.raises(ConfigError, match=msg):
        sampled_rank_check(bad, 1)


@pytest.mark.parametrize("tol", [0.0, -1e-3, 1.0, float("nan"), float("inf")])
def test_bad_tolerance(tol):
    with pytest.raises(ConfigError, match="tol"):
        kruskal_rank(np.eye(3), tol)


def test_load_array(tmp_path):
    a = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    assert np.array_equal(load_array(tmp_path / "a.npy"), a)
    torch.save(torch.from_numpy(a), tmp_path / "a.pt")
    assert torch.equal(load_array(tmp_path / "a.pt"), torch.from_numpy(a))
    torch.save({"x": torch.from_numpy(a)}, tmp_path / "d.pt")
    assert load_array(tmp_path / "d.pt").shape == (5, 3)
    torch.save({"x": torch.zeros(2), "y": torch.ones(2)}, tmp_path / "two.pt")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    (tmp_path / "bad.pt").write_bytes(b"not a zip")
    (tmp_path / "a.txt").write_text("1 2 3")
    for name, msg in [("missing.npy", "no such file"), ("obj.npy", "Python objects"), ("bad.npy", "bad.npy"),
                      ("bad.pt", "cannot load"), ("two.pt", "2 tensors"), ("a.txt", "unsupported file type")]:
        with pytest.raises(ConfigError, match=msg):
            load_array(tmp_path / name)


# --------------------------------------------------------------------------------------------------
# sampled check: verdicts and ranks equal per-subset SVD rank at the same tolerance
# --------------------------------------------------------------------------------------------------
def structured(seed=0, T=240, d=48, r=30):
    """Low-rank vectors with duplicates and near-dependencies, stored as float32 (like network features)."""
    rng = np.random.default_rng(seed)
    V = rng.standard_normal((T, r)) @ rng.standard_normal((r, d))
    V[:T // 2] += 1e-3 * rng.standard_normal((T // 2, d))         # half the vectors leave the subspace a little
    V[5] = 2 * V[7]
    V[11] = V[12] - V[13] + 3e-6 * rng.standard_normal(d)          # a near-dependency around the tolerance
    return V.astype(np.float32)


def reference_ranks(V, S, tol):
    U = torch.from_numpy(unit_rows(np.asarray(V, np.float64))[0])
    return np.array([int(torch.linalg.matrix_rank(U[s], atol=tol, rtol=0)) for s in S])


@pytest.mark.parametrize("k", [3, 20, 30, 31, 48, 60])
def test_sampled_equals_per_subset_svd(k):
    V = structured()
    tol = 1e-5
    S = random_subsets(len(V), k, 300, seed=k)
    ref = reference_ranks(V, S, tol)
    for spectra in (False, True):
        c = sampled_rank_check(V, k, tol=tol, subsets=S, spectra=spectra)
        assert np.array_equal(c.ranks, ref)
        assert np.array_equal(c.full_rank, ref == k)
        assert c.n_full_rank == int((ref == k).sum())
    c = sampled_rank_check(V, k, tol=tol, subsets=S, ranks=False)
    assert np.array_equal(c.full_rank, ref == k)
    if 0 < (ref == k).sum() < len(S):
        assert 0 < c.fraction < 1


def test_sampled_rounding_band_falls_back_to_svd():
    # float64 data at the float64 default tolerance: Gram eigenvalues cannot resolve sigma ~ 1e-10,
    # so deficient subsets must be settled by SVD -- and still agree with the reference
    rng = np.random.default_rng(2)
    V = rng.standard_normal((60, 12)) @ rng.standard_normal((12, 20))
    S = random_subsets(60, 14, 120, seed=1)
    c = sampled_rank_check(V, 14, subsets=S)
    assert c.tol == 1e-10 and c.n_svd_fallback > 0
    assert np.array_equal(c.ranks, reference_ranks(V, S, 1e-10))


def test_paper_mode_equals_float32_matrix_rank():
    V = structured(1)
    for k in (20, 31):
        S = random_subsets(len(V), k, 200, seed=3)
        c = sampled_rank_check(V, k, mode="paper", subsets=S)
        V32 = torch.from_numpy(V)
        ref = np.array([int(torch.linalg.matrix_rank(V32[s])) for s in S])
        assert np.array_equal(c.ranks, ref)


def test_sampled_random_subsets_and_exhaustive():
    S = random_subsets(50, 7, 400, seed=0)
    assert S.shape == (400, 7) and (np.diff(S, axis=1) > 0).all() and S.min() >= 0 and S.max() < 50
    assert np.array_equal(S, random_subsets(50, 7, 400, seed=0))
    # every index about equally often (7 * 400 / 50 = 56 per index)
    counts = np.bincount(S.ravel(), minlength=50)
    assert counts.min() > 25 and counts.max() < 100
    # C(9, 3) = 84 <= 500 subsets: all tested once, exact fraction
    V, _ = planted(np.random.default_rng(0), 9, 5, 3)
    c = sampled_rank_check(V, 3, 500)
    assert c.exhaustive and c.n_subsets == 84 and c.n_full_rank == 83 and c.ci_low == c.ci_high == 83 / 84


def test_clopper_pearson():
    lo, hi = clopper_pearson(10, 10, 0.95)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 10))
    lo, hi = clopper_pearson(0, 20, 0.95)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 20))
    lo, hi = clopper_pearson(50, 100)
    assert lo < 0.5 < hi and hi - lo < 0.25
    from scipy.stats import beta                      # the same quantiles as scipy.stats' Beta ppf
    for s_, n, lev in [(1, 7, 0.9), (4725, 5000, 0.95), (3, 10 ** 6, 0.99)]:
        a = 1 - lev
        assert clopper_pearson(s_, n, lev) == (beta.ppf(a / 2, s_, n - s_ + 1), beta.ppf(1 - a / 2, s_ + 1, n - s_))


def test_curve_is_exact_where_it_can_be_and_unbiased_elsewhere():
    rng = np.random.default_rng(0)
    V = rng.standard_normal((30, 10))
    cv = sampled_kruskal_curve(V, n_subsets=300)
    assert cv.ks == tuple(range(1, 11)) and all(f == 1.0 for f in cv.fractions) and cv.estimate == 10
    V[29] = V[3] + V[17]                       # spark 3: P(full) at k = 1 - C(27, k-3) / C(30, k)
    n = 4000
    cv = sampled_kruskal_curve(V, ks=(2, 3, 6, 10), n_subsets=n, seed=1)
    for k, f in zip(cv.ks, cv.fractions):
        p = 1 - (math.comb(27, k - 3) / math.comb(30, k) if k >= 3 else 0)
        assert abs(f - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-12, (k, f, p)
    assert cv.fractions[0] == 1.0
    ind = sampled_kruskal_curve(V, ks=(6, 10), n_subsets=n, nested=False)
    assert abs(ind.fractions[0] - cv.fractions[2]) < 0.03
    # k above the numerical rank: exactly 0
    W = rng.standard_normal((40, 4)) @ rng.standard_normal((4, 9))
    cw = sampled_kruskal_curve(W, ks=(3, 4, 5, 9), n_subsets=200)
    assert cw.numerical_rank == 4 and cw.fractions[2:] == (0.0, 0.0)


def test_sampled_bad_arguments():
    V = np.random.default_rng(0).standard_normal((10, 4))
    for kw, msg in [({"k": 0}, "k=0"), ({"k": 11}, "k=11"), ({"k": 2, "n_subsets": 0}, "n_subsets"),
                    ({"k": 2, "mode": "fast"}, "mode"), ({"k": 2, "ci_level": 1.5}, "ci_level"),
                    ({"k": 2, "subsets": np.array([[0, 0]])}, "repeated"),
                    ({"k": 3, "subsets": np.array([[0, 1, 2], [4, 2, 4]])}, "repeated"),
                    ({"k": 2, "subsets": np.array([[0, 10]])}, "outside"),
                    ({"k": 2, "device": "nonsense"}, "device")]:
        with pytest.raises(ConfigError, match=msg):
            sampled_rank_check(V, **kw)
    with pytest.raises(ConfigError, match="ks"):
        sampled_kruskal_curve(V, ks=(0, 3))


# --------------------------------------------------------------------------------------------------
# the CLI: vitheory kruskal
# --------------------------------------------------------------------------------------------------
def test_cli_kruskal(tmp_path, capsys):
    V, S = planted(np.random.default_rng(0), 12, 6, 3)
    np.save(tmp_path / "v.npy", V)
    assert main(["kruskal", str(tmp_path / "v.npy")]) == 0
    out = capsys.readouterr().out
    assert "Kruskal rank: 2" in out and "witness" in out
    assert main(["kruskal", str(tmp_path / "v.npy"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["kruskal_rank"] == 2 and sorted(d["witness"]) == sorted(int(i) for i in S)
    torch.save(torch.from_numpy(V.T.copy()), tmp_path / "cols.pt")
    assert main(["kruskal", str(tmp_path / "cols.pt"), "--columns", "--samples", "200", "--k", "3"]) == 0
    assert "full rank:" in capsys.readouterr().out
    np.save(tmp_path / "nan.npy", np.array([[np.nan, 1.0]]))
    for argv, msg in [(["kruskal", str(tmp_path / "nan.npy")], "NaN"),
                      (["kruskal", str(tmp_path / "nope.npy")], "no such file"),
                      (["kruskal", str(tmp_path / "v.npy"), "--samples", "10", "--k", "13"], "k=13"),
                      (["kruskal", str(tmp_path / "v.npy"), "--k", "3"], "--samples"),
                      (["kruskal", str(tmp_path / "v.npy"), "--tol", "0"], "tol")]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and msg in err and "\n" not in err

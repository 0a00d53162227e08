"""Bad, extreme and unusual input to vitheory.linalg and its CLI verbs: right answers or one clear error (issue 10)."""
import itertools
import json
import os
import subprocess
import sys
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch

from vitheory.config import ConfigError
from vitheory.linalg import (check_assumptions, check_context_ranks, kruskal_rank, load_array, sampled_kruskal_curve,
                             sampled_rank_check, unit_rows)
from vitheory.linalg import inputs
from vitheory.linalg.exact import _scan_level, _Stats
from vitheory.linalg.rational import PRIME, rank_exact, rank_mod_p

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def timeless(v):
    """``v`` without its wall-clock ``seconds`` entries (at any depth)."""
    if isinstance(v, dict):
        return {k: timeless(x) for k, x in v.items() if k != "seconds"}
    return [timeless(x) for x in v] if isinstance(v, (list, tuple)) else v


def same(a: dict, b: dict) -> bool:
    """Equal results, wall-clock time aside (NaN == NaN)."""
    return json.dumps(timeless(a), sort_keys=True, default=str) == json.dumps(timeless(b), sort_keys=True, default=str)


def run_cli(argv, capsys):
    from vitheory.cli import main
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_error(rc, err, *words):
    assert rc == 2, err
    assert err.startswith("error:") and err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err


# --------------------------------------------------------------------------------------------------
# scale: every finite scale gives the answer of the unscaled data
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1e200, 1e-200, 1e300, 1e-300, 1e-310])
def test_kruskal_rank_at_extreme_scales(scale):
    G = np.random.default_rng(0).standard_normal((12, 6))
    r = kruskal_rank(G * scale)
    assert r.certified and r.kruskal_rank == 6                      # was 0 ("zero vector" / "rank 0")
    assert r.margin == pytest.approx(kruskal_rank(G).margin, rel=1e-6)


def test_powers_of_two_give_bit_identical_results():
    rng = np.random.default_rng(1)
    G = rng.standard_normal((10, 5))
    G[7] = G[1] - 2 * G[3]
    rows = np.ldexp(1.0, rng.integers(-1000, 1000, 10))[:, None]    # one power of two per row, 2^-1000 .. 2^1000
    assert same(kruskal_rank(G * rows).to_dict(), kruskal_rank(G).to_dict())
    assert same(sampled_rank_check(G * rows, 4, 300, spectra=True).to_dict(arrays=True),
                sampled_rank_check(G, 4, 300, spectra=True).to_dict(arrays=True))
    assert same(sampled_kruskal_curve(G * rows, None, 200).to_dict(), sampled_kruskal_curve(G, None, 200).to_dict())
    for e in (-900, -300, 300, 900):                                # paper mode: a global scale (no normalisation)
        Ge = np.ldexp(G, e)
        a = sampled_rank_check(Ge, 4, 300, mode="paper").to_dict(arrays=True)
        b = sampled_rank_check(G, 4, 300, mode="paper").to_dict(arrays=True)
        assert a["full_rank"] == b["full_rank"] and a["ranks"] == b["ranks"]
        assert np.allclose(np.ldexp(b["sigma_min"], e), a["sigma_min"], rtol=0, atol=0)


@pytest.mark.parametrize("scale", [1e200, 1e-200])
@pytest.mark.parametrize("mode", ["float64", "paper"])
def test_assumptions_on_scaled_tokens(scale, mode):
    X = np.random.default_rng(2).standard_normal((30, 5, 8))
    X[3, 2] = 3 * X[3, 1]
    ref = check_assumptions(X, n_subsets=200, mode=mode)
    got = check_assumptions(X * scale, n_subsets=200, mode=mode)
    for a, b in zip(ref.checks, got.checks):
        assert (a.n_satisfied, a.verdict, a.rank_hist) == (b.n_satisfied, b.verdict, b.rank_hist)   # was all False
    assert [c.verdict for c in got.checks] == [True, True, False]


def test_paper_mode_refuses_what_float32_cannot_hold():
    V = np.random.default_rng(3).standard_normal((8, 4))
    V[2] *= 1e-60                                                   # 1e60 apart from the other rows: no float32 scale
    V[5] *= 1e60
    with pytest.raises(ConfigError, match="mode=paper.*float32.*use mode=float64"):
        sampled_rank_check(V, 3, 50, mode="paper")
    with pytest.raises(ConfigError, match="float32"):
        check_context_ranks(V[None], mode="paper")
    assert sampled_rank_check(V, 3, 50).fraction == 1.0            # float64 mode normalises each row


def test_unit_rows_of_tiny_and_huge_rows():
    V = np.array([[3e-320, 4e-320], [3e300, 4e300], [0.0, 0.0]])
    U, norms = unit_rows(V)
    assert np.allclose(U[:2], [[0.6, 0.8], [0.6, 0.8]], atol=1e-3) and (U[2] == 0).all()
    assert norms[2] == 0 and norms[1] == pytest.approx(5e300)


def test_long_double_beyond_float64_is_refused():
    if np.finfo(np.longdouble).max <= np.finfo(np.float64).max:
        pytest.skip("long double is float64 here")
    V = np.ones((3, 2), dtype=np.longdouble)
    V[1, 1] = np.longdouble(10) ** 400
    with pytest.raises(ConfigError, match="beyond the float64 range"):
        kruskal_rank(V)


# --------------------------------------------------------------------------------------------------
# integer input: the exact k-rank
# --------------------------------------------------------------------------------------------------
def rank_q(rows):
    """Rank over Q by Gaussian elimination in fractions (the definition)."""
    M = [[Fraction(int(x)) for x in r] for r in rows]
    r = 0
    for c in range(len(M[0]) if M else 0):
        p = next((i for i in range(r, len(M)) if M[i][c] != 0), None)
        if p is None:
            continue
        M[r], M[p] = M[p], M[r]
        for i in range(len(M)):
            if i != r and M[i][c] != 0:
                f = M[i][c] / M[r][c]
                M[i] = [a - f * b for a, b in zip(M[i], M[r])]
        r += 1
    return r


def krank_q(V):
    T, d = V.shape
    for size in range(1, min(T, d) + 1):
        if any(rank_q(V[list(S)].tolist()) < size for S in itertools.combinations(range(T), size)):
            return size - 1
    return min(T, d)


def test_int64_near_2_62_is_exact():
    V = np.array([[2 ** 62, 1], [2 ** 62, 2]], dtype=np.int64)
    r = kruskal_rank(V)
    assert r.kruskal_rank == 2 and r.certified                      # was 1: sigma_min 1.5e-19 < tol
    assert any("exact arithmetic" in s for s in r.steps)
    assert kruskal_rank(V, tol=1e-10).kruskal_rank == 1             # an explicit tolerance asks for that tolerance
    assert kruskal_rank(V.astype(np.float64)).kruskal_rank == 1     # float data: at tolerance, as documented
    W = np.array([[2 ** 62, 2 ** 62 + 1], [2 ** 62 + 2, 2 ** 62 + 3], [2 ** 62 + 4, 2 ** 62 + 5]], dtype=np.int64)
    assert kruskal_rank(W).kruskal_rank == 2 == krank_q(W)         # pairs exactly independent; any 3 > d = 2
    assert kruskal_rank(torch.from_numpy(W)).kruskal_rank == 2
    assert kruskal_rank(W.astype(np.uint64)).kruskal_rank == 2


def test_integer_kruskal_rank_against_exact_brute_force():
    rng = np.random.default_rng(4)
    for trial in range(40):
        T, d = int(rng.integers(2, 7)), int(rng.integers(1, 5))
        V = rng.integers(-3, 4, (T, d)).astype(np.int64)
        if trial % 3 == 0 and T >= 3:
            V[0] = V[1] + 2 * V[2]
        if trial % 4 == 1:                                          # huge, nearly parallel rows
            V = V + (2 ** 60)
        r = kruskal_rank(V)
        assert r.certified and r.kruskal_rank == krank_q(V), (V, r)
        if r.witness is not None:
            assert rank_q(V[list(r.witness)].tolist()) < len(r.witness)


def test_exact_rank_helpers():
    rng = np.random.default_rng(5)
    for _ in range(200):
        m, n, k = (int(v) for v in rng.integers(1, 7, 3))
        A = rng.integers(-3, 4, (m, k)) @ rng.integers(-3, 4, (k, n)) * int(rng.integers(1, 2 ** 40))
        assert rank_exact(A.tolist()) == rank_q(A.tolist()) >= rank_mod_p(np.mod(A, PRIME))


def test_bool_and_small_ints_agree_with_float():
    V = np.random.default_rng(6).integers(0, 2, (9, 4)).astype(bool)
    assert kruskal_rank(V).kruskal_rank == krank_q(V.astype(int))
    assert same(sampled_rank_check(V, 3, 100).to_dict(), sampled_rank_check(V.astype(float), 3, 100).to_dict())


# --------------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------------
def test_big_endian_arrays(tmp_path, capsys):
    G = np.random.default_rng(7).standard_normal((12, 6))
    np.save(tmp_path / "be.npy", G.astype(">f8"))
    a = load_array(tmp_path / "be.npy")
    assert a.dtype == np.float64 and a.dtype.isnative and (a == G).all()
    assert same(kruskal_rank(G.astype(">f8")).to_dict(), kruskal_rank(G).to_dict())
    np.save(tmp_path / "be_int.npy", np.arange(12).reshape(4, 3).astype(">i4"))
    rc, out, err = run_cli(["kruskal", tmp_path / "be.npy", "--json"], capsys)
    assert rc == 0 and json.loads(out)["kruskal_rank"] == 6
    rc, out, err = run_cli(["kruskal", tmp_path / "be_int.npy", "--json"], capsys)
    assert rc == 0 and json.loads(out)["kruskal_rank"] == 2 == krank_q(np.arange(12).reshape(4, 3))


def test_bad_npy_files(tmp_path, capsys):
    (tmp_path / "text.npy").write_text("hello\n1 2 3\n")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(tmp_path / "ok.npy", np.ones((4, 3)))
    full = (tmp_path / "ok.npy").read_bytes()
    (tmp_path / "trunc.npy").write_bytes(full[:-5])
    (tmp_path / "header_only.npy").write_bytes(full[:40])
    with open(tmp_path / "huge.npy", "wb") as f:                    # a header claiming 149 GiB
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (200000, 100000)})
        f.write(b"\0" * 64)
    np.save(tmp_path / "strings.npy", np.array([["a", "b"]]))
    for name, words in [("text.npy", ["not a .npy file"]), ("obj.npy", ["Python objects", "never unpickled"]),
                        ("trunc.npy", ["truncated"]), ("header_only.npy", ["npy"]),
                        ("huge.npy", ["truncated", "149 GiB"]), ("strings.npy", ["dtype"])]:
        rc, out, err = run_cli(["kruskal", tmp_path / name], capsys)
        assert_one_error(rc, err, *words)
        assert "pickled" not in err or name == "obj.npy"


def test_memory_is_checked_before_allocating(tmp_path, monkeypatch, capsys):
    np.save(tmp_path / "ok.npy", np.ones((400, 300)))
    monkeypatch.setattr(inputs, "available_memory", lambda: 100_000)
    rc, out, err = run_cli(["kruskal", tmp_path / "ok.npy"], capsys)
    assert_one_error(rc, err, "(400, 300)", "938 KiB", "97.7 KiB is available")
    with pytest.raises(ConfigError, match="float64 copy of shape \\(400, 300\\)"):
        kruskal_rank(np.ones((400, 300), dtype=np.float32))


def test_out_of_memory_becomes_one_error(monkeypatch):
    from vitheory.linalg import exact, sampled

    def boom(*a, **k):
        raise MemoryError("Unable to allocate 74.5 GiB for an array with shape (100000, 100000) and data type float64")
    monkeypatch.setattr(exact, "unit_rows", boom)
    with pytest.raises(ConfigError, match="kruskal_rank: out of memory .*74.5 GiB"):
        kruskal_rank(np.ones((3, 2)))

    def cuda_oom(*a, **k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore text")
    monkeypatch.setattr(sampled, "collect_verdicts", cuda_oom)
    with pytest.raises(ConfigError, match="sampled_rank_check: out of memory .*2.00 GiB") as e:
        sampled_rank_check(np.eye(3), 2, 10)
    assert "\n" not in str(e.value)


@pytest.mark.filterwarnings("ignore:Sparse CSR")
def test_pt_files(tmp_path, capsys):
    torch.save(torch.eye(5).to_sparse(), tmp_path / "sparse.pt")
    torch.save(torch.eye(5).to_sparse_csr(), tmp_path / "csr.pt")
    torch.save({"a": torch.ones(2), "b": torch.ones(2)}, tmp_path / "two.pt")
    torch.save(torch.eye(4, dtype=torch.int32), tmp_path / "int.pt")
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp_path / "pickle.pt").write_bytes(b"\x80\x7cgarbage")        # torch warns about "pickle protocol 124"
    for name in ("sparse.pt", "csr.pt"):
        rc, out, err = run_cli(["kruskal", tmp_path / name, "--json"], capsys)
        assert rc == 0 and json.loads(out)["kruskal_rank"] == 5, err
    rc, out, err = run_cli(["kruskal", tmp_path / "int.pt", "--json"], capsys)
    assert rc == 0 and json.loads(out)["kruskal_rank"] == 4
    assert_one_error(*run_cli(["kruskal", tmp_path / "two.pt"], capsys)[::2], "2 tensors")
    assert_one_error(*run_cli(["kruskal", tmp_path / "junk.pt"], capsys)[::2], "cannot load")
    with warnings.catch_warnings():
        warnings.simplefilter("error")                              # a warning would be more lines on stderr
        assert_one_error(*run_cli(["kruskal", tmp_path / "pickle.pt"], capsys)[::2], "not a plain tensor file")


def test_sparse_tensor_argument():
    assert kruskal_rank(torch.eye(4).to_sparse()).kruskal_rank == 4
    assert sampled_rank_check(torch.eye(4).to_sparse(), 2, 10).fraction == 1.0


# --------------------------------------------------------------------------------------------------
# devices and the CLI's output
# --------------------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA")
def test_cuda_on_cpu_torch(tmp_path, capsys):
    np.save(tmp_path / "v.npy", np.random.default_rng(0).standard_normal((6, 3)))
    np.save(tmp_path / "t.npy", np.random.default_rng(0).standard_normal((6, 2, 3)))
    for argv in (["kruskal", tmp_path / "v.npy", "--device", "cuda"],
                 ["kruskal", tmp_path / "v.npy", "--samples", "10", "--k", "2", "--device", "cuda:0"],
                 ["assumptions", tmp_path / "t.npy", "--device", "cuda"]):
        assert_one_error(*run_cli(argv, capsys)[::2], "CUDA is not available")
    assert_one_error(*run_cli(["kruskal", tmp_path / "v.npy", "--device", "mps"], capsys)[::2], "allowed: cpu, cuda")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        sampled_rank_check(np.eye(3), 2, device="cuda")


def test_closed_pipe_is_not_an_error(tmp_path):
    """`vitheory kruskal ... | head -c 10`: the reader goes away mid-output; exit 0, nothing on stderr."""
    np.save(tmp_path / "v.npy", np.random.default_rng(0).standard_normal((400, 3)))
    code = ("import sys; from vitheory import cli_linalg; from vitheory.cli import main; "
            "real = cli_linalg.emit; cli_linalg.emit = lambda text: real(text + 'x' * 2_000_000); "
            f"sys.exit(main(['kruskal', {str(tmp_path / 'v.npy')!r}, '--samples', '20', '--k', '2']))")
    env = dict(os.environ, PYTHONPATH=SRC)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    p.stdout.read(10)
    p.stdout.close()
    err = p.stderr.read().decode()
    p.stderr.close()
    assert p.wait(timeout=60) == 0 and err == "", err


# --------------------------------------------------------------------------------------------------
# the margin bound when the candidate list overflows
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_margin_bound_is_a_lower_bound(seed):
    rng = np.random.default_rng(seed)
    V = rng.standard_normal((16, 8))
    U, _ = unit_rows(V)
    G = U @ U.T
    for L in (3, 5, 8):
        exact = _scan_level(U, G, L, 1e-10, _Stats(None))
        assert exact.margin_exact
        for lb, cap in ((1000, 5), (7, 30)):
            bounded = _scan_level(U, G, L, 1e-10, _Stats(None), leaf_budget=lb, margin_cap=cap)
            assert bounded.complete
            assert bounded.margin <= exact.margin * (1 + 1e-12)    # was above the true margin (e.g. 0.437 > 0.217)


def test_curve_batches_do_not_change_the_orderings():
    # the curve's batch now also budgets the b x T random orderings (it held 4M x T of them at m = 1)
    V = np.random.default_rng(8).standard_normal((40, 6))
    V[3] = V[1] + V[2]
    runs = [sampled_kruskal_curve(V, None, 300, batch_elems=b).to_dict() for b in (100, None, 10 ** 7)]
    assert same(runs[0], runs[1]) and same(runs[1], runs[2])

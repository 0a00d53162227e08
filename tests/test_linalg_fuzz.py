"""Property test of vitheory.linalg and the ``kruskal`` / ``assumptions`` CLI verbs (issue 10).

Random arrays of every dtype (float16/32/64, int8..int64, uint8..uint64, bool) and byte order, with
structure (duplicate, zero, parallel, planted-dependent, low-rank rows, integers near the top of their
range), at scales from 2^-990 to 2^1000 (1e-298 .. 1e301) per vector, and malformed ones (NaN, Inf, empty,
wrong number of dimensions); for the CLI also as .npy / .pt / sparse .pt files, truncated, garbage, text,
missing or a folder, and with in-range and out-of-range option values.

Each case either works, with the result of the unscaled array (scaling a vector, or for paper mode the whole
array, by a power of two is exact, so the results must be identical), and for the exact Kruskal rank the
brute-force answer (integers: in rational arithmetic), or raises ConfigError / exits 2 with one ``error:`` line.
A traceback fails the test.  With ``VITHEORY_FUZZ_SUMMARY=path`` the counts are written there as JSON.
"""
import contextlib
import io
import itertools
import json
import os
import tempfile
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitheory.config import ConfigError
from vitheory.linalg import (check_assumptions, check_context_ranks, default_tol, kruskal_rank,
                             sampled_kruskal_curve, sampled_rank_check, unit_rows)

DTYPES = ["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "bool"]
TORCH_DTYPES = {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"}
STRUCTURES = ["generic", "duplicate", "zero", "parallel", "planted", "lowrank", "top_of_range"]
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TALLY: Counter = Counter()
COVER: Counter = Counter()      # (dtype kind, case kind) -> cases drawn


@pytest.fixture(scope="module", autouse=True)
def summary():
    yield
    out = {f"{k[0]}/{k[1]}": v for k, v in sorted(TALLY.items())}
    out["cases"] = sum(TALLY.values())
    out["wrong_results"] = out["tracebacks"] = 0    # any of either fails its test before this point
    out["drawn"] = {f"{k[0]}/{k[1]}": v for k, v in sorted(COVER.items())}
    print("\nlinalg fuzz:", json.dumps(out))
    path = os.environ.get("VITHEORY_FUZZ_SUMMARY")
    if path:
        with open(path, "w") as f:
            json.dump(out, f, indent=1)


# --------------------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------------------
def make_base(seed: int, dtype: str, shape: tuple, structure: str) -> np.ndarray:
    """A native-order array of ``dtype`` whose rows (last axis) are the vectors."""
    rng = np.random.default_rng(seed)
    d = shape[-1]
    kind = np.dtype(dtype).kind
    if kind == "f":
        B = rng.standard_normal(shape)
    elif kind == "b":
        B = rng.integers(0, 2, shape)
    else:
        B = rng.integers(0 if kind == "u" else -4, 9 if kind == "u" else 5, shape)
    R = B.reshape(-1, d)                      # a view: the vectors
    n = len(R)
    a, b, c = rng.permutation(max(n, 3))[:3] % n
    if structure == "duplicate" or (structure == "parallel" and kind == "b"):
        R[a] = R[b]
    elif structure == "zero":
        R[a] = 0
    elif structure == "parallel":
        R[a] = (-2.5 if kind == "f" else 2) * R[b]
    elif structure == "planted" and n >= 3 and kind != "b":
        R[a] = R[b] + (0.5 if kind == "f" else 1) * R[c]
    elif structure == "lowrank" and d >= 2 and kind != "b":
        r = int(rng.integers(1, d))
        lo = 0 if kind == "u" else -2
        R[:] = rng.integers(lo, 3, (n, r)) @ rng.integers(lo, 3, (r, d)) if kind != "f" else \
            rng.standard_normal((n, r)) @ rng.standard_normal((r, d))
    if structure == "top_of_range" and kind in "iu":
        top = np.iinfo(dtype).max
        return np.array(top, dtype) - (np.abs(B) % 8).astype(dtype)
    return B.astype(dtype)


def scaled(x: np.ndarray, rng: np.random.Generator, per_row: bool) -> tuple[np.ndarray, int]:
    """``x`` times powers of two (one per vector, or one ``2^e`` for the array) that keep every value exact,
    and ``e`` (0 when per vector)."""
    shape = x.shape[:-1] + (1,) if per_row else (1,) * x.ndim
    kind = x.dtype.kind
    if kind == "f":
        lo, hi = {"float16": (0, 8), "float32": (-100, 100), "float64": (-990, 1000)}[x.dtype.name]
        e = rng.integers(lo, hi + 1, shape)
        e = np.where(rng.random(shape) < 0.5, e, np.where(rng.random(shape) < 0.5, lo, hi))   # the extremes often
        return np.ldexp(x, e).astype(x.dtype), 0 if per_row else int(e.flat[0])
    if kind == "b":
        return x, 0
    big = int(np.max(np.abs(x.astype(np.int64)))) if x.dtype != np.uint64 else int(np.max(x))
    room = np.iinfo(x.dtype).bits - (kind == "i") - max(big, 1).bit_length()
    j = rng.integers(0, max(room, 0) + 1, shape)
    factor = (2 ** j).astype(np.uint64 if kind == "u" else np.int64)
    return (x * factor).astype(x.dtype), 0 if per_row else int(j.flat[0])


#: how often each dtype and each kind of case is drawn (float64 and scaled cases most: that is where it breaks)
DTYPE_WEIGHTS = {"float64": 6, "float32": 2.5, "float16": 1.5, **{t: 1 for t in DTYPES if t[0] in "iub"}}
KIND_WEIGHTS = {"clean": 1.5, "scale": 4.5, "nan": 0.8, "inf": 0.8, "empty": 1, "wrong_ndim": 1.4}


def pick(rng, weights: dict) -> str:
    p = np.array(list(weights.values()), dtype=float)
    return list(weights)[int(rng.choice(len(p), p=p / p.sum()))]


@st.composite
def cases(draw, ndim: int, per_row: bool):
    """(base array, the array to test, malformed?, seed, e): hypothesis draws the shape and a seed; the seed picks
    dtype, structure and kind with the weights above (hypothesis' own choices crowd at their first options)."""
    shape = tuple(draw(st.integers(1, m)) for m in ((7, 5) if ndim == 2 else (6, 4, 5)))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    seed = int(np.random.default_rng([seed, *shape]).integers(2 ** 32))   # hypothesis reuses seeds across shapes
    pr = np.random.default_rng([seed, 7])
    dtype = pick(pr, DTYPE_WEIGHTS)
    base = make_base(seed, dtype, shape, STRUCTURES[int(pr.integers(len(STRUCTURES)))])
    kind = pick(pr, KIND_WEIGHTS)
    if kind in ("nan", "inf") and base.dtype.kind != "f":
        kind = "scale"
    rng = np.random.default_rng(seed + 1)
    x, e = base, 0
    if kind == "scale":
        x, e = scaled(base, rng, per_row)
    elif kind in ("nan", "inf"):
        x = base.copy()
        x.flat[int(rng.integers(x.size))] = np.nan if kind == "nan" else -np.inf
    elif kind == "empty":
        x = np.zeros(shape[:-1] + (0,) if rng.random() < 0.5 else (0,) + shape[1:], dtype=dtype)
    elif kind == "wrong_ndim":
        x = base.reshape(-1) if rng.random() < 0.5 or ndim == 3 else base[None]
    if pr.random() < 0.4 and x.dtype.itemsize > 1:
        x = x.astype(x.dtype.newbyteorder(">"))
    COVER[(x.dtype.kind, kind)] += 1
    return base, x, kind in ("nan", "inf", "empty", "wrong_ndim"), seed, e


def timeless(v):
    """``v`` without its wall-clock ``seconds`` entries (at any depth)."""
    if isinstance(v, dict):
        return {k: timeless(x) for k, x in v.items() if k != "seconds"}
    return [timeless(x) for x in v] if isinstance(v, (list, tuple)) else v


def same(a: dict, b: dict) -> bool:
    """Equal results, wall-clock time aside (NaN == NaN)."""
    return json.dumps(timeless(a), sort_keys=True, default=str) == json.dumps(timeless(b), sort_keys=True, default=str)


def times_2_to(v, e: int, keys=("margin", "sigma_min", "sigma_min_median")):
    """Paper mode reports singular values in the input's units: those of ``x * 2^e`` are ``2^e`` times larger."""
    if isinstance(v, dict):
        return {k: (np.ldexp(np.asarray(x, dtype=float), e).tolist() if k in keys and x is not None
                    else times_2_to(x, e, keys)) for k, x in v.items()}
    return v


def assert_one_line(e: BaseException):
    msg = str(e)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg


# --------------------------------------------------------------------------------------------------
# brute force (the definitions)
# --------------------------------------------------------------------------------------------------
def rank_q(rows) -> int:
    M = [[Fraction(int(v)) for v in r] for r in rows]
    r = 0
    for c in range(len(M[0]) if M else 0):
        p = next((i for i in range(r, len(M)) if M[i][c] != 0), None)
        if p is None:
            continue
        M[r], M[p] = M[p], M[r]
        for i in range(r + 1, len(M)):
            if M[i][c] != 0:
                f = M[i][c] / M[r][c]
                M[i] = [a - f * b for a, b in zip(M[i], M[r])]
        r += 1
    return r


def brute_krank(base: np.ndarray) -> int:
    T, d = base.shape
    if base.dtype.kind in "iub":
        rows = base.astype(object) if base.dtype.kind != "b" else base.astype(int)
        dependent = (lambda S: rank_q(rows[list(S)].tolist()) < len(S))
    else:
        U, norms = unit_rows(base.astype(np.float64))
        if (norms == 0).any():
            return 0
        tau = default_tol(base.dtype)
        dependent = (lambda S: np.linalg.svd(U[list(S)], compute_uv=False)[-1] <= tau)
    for size in range(1, min(T, d) + 1):
        if any(len(S) > d or dependent(S) for S in itertools.combinations(range(T), size)):
            return size - 1
    return min(T, d)


# --------------------------------------------------------------------------------------------------
# the API
# --------------------------------------------------------------------------------------------------
FUNCS_2D = ["kruskal", "sampled", "sampled_paper", "curve"]
FUNCS_3D = ["assumptions", "assumptions_paper", "context"]


def call(fn: str, x, k: int, q: int, flag: bool):
    if fn == "kruskal":
        return kruskal_rank(x).to_dict()
    if fn == "sampled":
        return sampled_rank_check(x, k, 40, seed=3, spectra=flag).to_dict(arrays=True)
    if fn == "sampled_paper":
        return sampled_rank_check(x, k, 40, seed=3, mode="paper").to_dict(arrays=True)
    if fn == "curve":
        return sampled_kruskal_curve(x, None, 30, seed=1, nested=flag).to_dict()
    if fn == "assumptions":
        return check_assumptions(x, q, n_subsets=30, curve=flag).to_dict()
    if fn == "assumptions_paper":
        return check_assumptions(x, q, n_subsets=30, mode="paper").to_dict()
    return check_context_ranks(x, spectra=flag).to_dict()


@settings(max_examples=400, **SETTINGS)
@given(st.data())
def test_api(data):
    fn = data.draw(st.sampled_from(FUNCS_2D + FUNCS_3D))
    ndim = 2 if fn in FUNCS_2D else 3
    base, x, malformed, seed, e = data.draw(cases(ndim, per_row="paper" not in fn))
    k = data.draw(st.integers(1, base.shape[0]))
    q = data.draw(st.integers(-base.shape[1], base.shape[1] - 1)) if ndim == 3 else 0
    flag = data.draw(st.booleans())
    if malformed:
        with pytest.raises(ConfigError) as e:
            call(fn, x, k, q, flag)
        assert_one_line(e.value)
        TALLY[("api", "refused")] += 1
        return
    got = call(fn, x, k, q, flag)
    ref = call(fn, base, k, q, flag)
    if "paper" in fn:
        ref = times_2_to(ref, e)
    assert same(got, ref), (fn, base, x)                      # scale- and byte-order-invariant, bit for bit
    if fn == "kruskal":
        assert got["certified"] and got["kruskal_rank"] == brute_krank(base), (base, got)
    TALLY[("api", "correct")] += 1


@settings(max_examples=60, **SETTINGS)
@given(st.integers(2, 6), st.integers(1, 4), st.integers(0, 2 ** 32 - 1), st.integers(0, 61),
       st.sampled_from(["int64", "uint64", "int32"]), st.booleans())
def test_integer_kruskal_rank_is_exact(T, d, seed, offset_bits, dtype, plant):
    """Integer vectors near the top of their range are nearly parallel (sigma_min far below any tolerance)
    but exactly independent: the k-rank must be the one of rational arithmetic."""
    rng = np.random.default_rng(seed)
    V = rng.integers(0 if dtype[0] == "u" else -3, 4, (T, d)).astype(object)
    if plant and T >= 3:
        V[0] = V[1] + V[2]
    top = np.iinfo(dtype).max
    off = min(2 ** offset_bits, (top - 16) // 2)
    X = np.array((V + off).tolist(), dtype=dtype)
    r = kruskal_rank(X)
    assert r.certified and r.kruskal_rank == brute_krank(X), (X, r)
    TALLY[("integers", "correct")] += 1


# --------------------------------------------------------------------------------------------------
# the CLI verbs
# --------------------------------------------------------------------------------------------------
VERBS = ["kruskal", "kruskal_sampled", "kruskal_curve", "assumptions", "assumptions_paper"]
DAMAGE = ["none", "none", "none", "truncate", "garbage", "text", "wrong_ext", "folder", "missing"]


def run_main(argv):
    """``vitheory ARGV``: (exit code, stdout, stderr), with warnings shown on stderr as a user would see them."""
    import warnings
    from vitheory.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda m, c, f, n, file=None, line=None: err.write(f"{c.__name__}: {m}\n")
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def write(x: np.ndarray, folder: str, fmt: str, damage: str, rng) -> str:
    path = os.path.join(folder, "x.pt" if fmt.startswith("pt") else "x.npy")
    if fmt == "npy":
        np.save(path, x)
    else:
        t = torch.from_numpy(np.ascontiguousarray(x.astype(x.dtype.newbyteorder("="))))
        torch.save(t.to_sparse() if fmt == "pt_sparse" else t, path)
    if damage == "truncate":
        data = open(path, "rb").read()
        open(path, "wb").write(data[:int(rng.integers(0, len(data)))])
    elif damage == "garbage":       # half of it looks like a pickle (protocol byte), which makes torch warn
        head = bytes([0x80, int(rng.integers(0, 256))]) if rng.random() < 0.5 else b""
        open(path, "wb").write(head + rng.bytes(int(rng.integers(0, 300))))
    elif damage == "text":
        open(path, "w").write("1 2 3\n4 5 6\n")
    elif damage == "wrong_ext":
        os.rename(path, path + ".txt")
        path += ".txt"
    elif damage == "folder":
        os.remove(path)
        os.mkdir(path)
    elif damage == "missing":
        os.remove(path)
    return path


@settings(max_examples=250, **SETTINGS)
@given(st.data())
def test_cli(data):
    verb = data.draw(st.sampled_from(VERBS))
    ndim = 3 if verb.startswith("assumptions") else 2
    base, x, malformed, seed, e = data.draw(cases(ndim, per_row="paper" not in verb))
    fmt = data.draw(st.sampled_from(["npy", "npy", "pt", "pt_sparse"]))
    if fmt.startswith("pt") and (x.dtype.name not in TORCH_DTYPES or x.ndim == 0):
        fmt = "npy"
    if fmt == "pt_sparse" and (x.dtype.kind != "f" or x.size == 0):
        fmt = "pt"
    damage = data.draw(st.sampled_from(DAMAGE))
    k = data.draw(st.integers(1, base.shape[0]))
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as folder:
        path = write(x, folder, fmt, damage, rng)
        argv = {"kruskal": ["kruskal", path],
                "kruskal_sampled": ["kruskal", path, "--samples", "30", "--k", str(k)],
                "kruskal_curve": ["kruskal", path, "--samples", "20"],
                "assumptions": ["assumptions", path, "--samples", "30"],
                "assumptions_paper": ["assumptions", path, "--samples", "30", "--mode", "paper"]}[verb]
        rc, out, err = run_main(argv + ["--json"])
    if rc != 0:
        assert rc == 2 and err.startswith("error:") and err.count("\n") == 1, (rc, err)
        assert malformed or damage != "none", (verb, fmt, x.dtype, err)     # a valid file must work
        TALLY[("cli", "refused")] += 1
        return
    assert not malformed and err == "", err
    res = json.loads(out)
    if verb == "kruskal":
        ref = kruskal_rank(base)
        assert (res["kruskal_rank"], res["witness"]) == (ref.kruskal_rank, list(ref.witness or []) or None)
    elif verb == "kruskal_sampled":
        ref = sampled_rank_check(base, k, 30, seed=0)
        hist = {str(a): b for a, b in ref.rank_hist.items()}
        assert (res["n_full_rank"], res["rank_hist"]) == (ref.n_full_rank, hist)
    elif verb == "kruskal_curve":
        assert res["fractions"] == list(sampled_kruskal_curve(base, None, 20).fractions)
    else:
        ref = check_assumptions(base, 0, n_subsets=30, mode="paper" if verb.endswith("paper") else "float64")
        assert [res[c.name]["n_satisfied"] for c in ref.checks] == [c.n_satisfied for c in ref.checks]
        assert [res[c.name]["verdict"] for c in ref.checks] == [c.verdict for c in ref.checks]
    TALLY[("cli", "correct")] += 1


OPTIONS = {
    "kruskal": {"--samples": [-1, 0, 1, 5, 40, 10 ** 8], "--k": [-1, 0, 1, 3, 100], "--seed": [-1, 0, 2 ** 70],
                "--tol": ["nan", "inf", -1, 0, 1e-300, 1e-12, 0.5, 1, 2], "--max-subsets": [0, 1, 10],
                "--time-limit": [-1, 0, "nan", 1e-9, 5], "--mode": ["float64", "paper"], "--columns": None,
                "--margins": None, "--exact": None, "--device": ["cpu", "cuda", "cuda:7", "meta", "nonsense"]},
    "assumptions": {"--samples": [-1, 0, 1, 40, 10 ** 8], "--tol": ["nan", "inf", -1, 0, 1e-300, 1e-12, 0.5, 2],
                    "--pass-fraction": ["nan", 0, 1e-9, 0.5, 1, 1.5], "--query-index": [-100, -2, 0, 1, 100],
                    "--mode": ["float64", "paper"], "--curve": None, "--no-margins": None, "--seed": [-1, 0, 2 ** 70],
                    "--device": ["cpu", "cuda", "meta"]},
}


@settings(max_examples=150, **SETTINGS)
@given(st.sampled_from(sorted(OPTIONS)), st.data())
def test_cli_options(verb, data):
    """In-range and out-of-range option values on a valid file: a result, or exit 2 with one ``error:`` line."""
    opts = OPTIONS[verb]
    chosen = data.draw(st.lists(st.sampled_from(sorted(opts)), max_size=4, unique=True))
    argv = [verb]
    for flag in chosen:
        argv.append(flag)
        if opts[flag] is not None:
            argv.append(str(data.draw(st.sampled_from(opts[flag]))))
    if verb == "assumptions" and "--samples" not in chosen:
        argv += ["--samples", "30"]
    x = np.random.default_rng(0).standard_normal((8, 3, 5) if verb == "assumptions" else (8, 5))
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "x.npy")
        np.save(path, x)
        rc, out, err = run_main(argv[:1] + [path] + argv[1:] + ["--json"])
    if rc != 0:
        assert rc == 2 and err.startswith("error:") and err.count("\n") == 1, (argv, rc, err)
        TALLY[("options", "refused")] += 1
        return
    assert err == "" and isinstance(json.loads(out), dict), (argv, err)
    TALLY[("options", "worked")] += 1

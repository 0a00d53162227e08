"""Kruskal rank of a finite set of vectors: exact (with a certificate) and sampled (the paper's check).

Definitions
-----------
Vectors are the **rows** of a ``(T, d)`` array: ``T`` vectors in ``R^d``.

* The **Kruskal rank** (k-rank) of ``{z_1, ..., z_T}`` is the largest ``k`` such that *every* subset of ``k``
  vectors is linearly independent.  So ``krank <= rank <= min(T, d)``; it is 0 when some vector is zero and
  at most 1 when two vectors are parallel.  The **spark** is the size of the smallest dependent subset,
  ``spark = krank + 1`` (when a dependent subset exists).  Computing it is NP-hard (Tillmann & Pfetsch 2014).
* **Numerical independence (project convention).**  Every vector is cast to float64 and scaled to unit
  Euclidean norm (the k-rank does not change under per-vector scaling).  A subset ``S`` is *independent at
  tolerance tau* when the smallest singular value of the ``|S| x d`` matrix of its unit vectors is ``> tau``;
  a subset of more than ``d`` vectors is always dependent.  Because deleting a vector never decreases the
  smallest singular value (interlacing), dependence at tolerance is inherited by supersets, as in exact
  arithmetic; so the k-rank at tolerance is well defined.
* The **margin** of a certified k-rank ``k`` is ``min over all k-subsets S of sigma_min(U_S)``: the
  smallest singular value met among the subsets that had to be certified.  It is the tau-robust Kruskal
  rank notion of Bhaskara-Charikar-Vijayaraghavan (2014): the k-rank would stay ``k`` for every tolerance
  below the margin.

Default tolerances (project choice, a knob everywhere)
------------------------------------------------------
``tau`` depends on the precision the input carries: :data:`DEFAULT_TOL`.  1e-10 for float64 input (about
5e5 machine epsilons: far above the round-off of unit vectors of moderate size, ~sqrt(d) * 2.2e-16, and far
below the smallest singular values of generic data at the sizes where exact enumeration is feasible, e.g.
~6e-8 over all 12-subsets of 24 Gaussian vectors in R^12); 1e-5 for float32 input (about 80 float32
epsilons; data computed in float32 carries ~1e-7 relative noise); 1e-2 for 16-bit input.  Integer input is
exact and gets the float64 value.  Always report results over a sweep of tolerances when a verdict matters
(``vitheory kruskal --tol``).

Exact algorithm (:func:`kruskal_rank`)
--------------------------------------
1. Zero vectors: k-rank 0, witness the zero vector.
2. Numerical rank ``r`` (SVD of all unit vectors): if ``r < min(T, d)`` every ``(r+1)``-subset is dependent
   (``sigma_{r+1}(U_S) <= sigma_{r+1}(U) <= tau``), so ``krank <= r`` with a witness.
3. Pairs from one Gram matrix: a parallel pair gives ``krank <= 1``; otherwise every pair is certified
   independent (near-parallel candidates are settled exactly), and the mutual coherence ``mu`` gives the
   Gershgorin lower bound ``lambda_min(G_S) >= 1 - (|S|-1) mu``.
4. Sparse null vectors by orthogonal matching pursuit (optionally an L1 linear program): a dependent set of
   size ``s`` gives ``krank <= s - 1``.  Every dependent set found is verified by SVD and shrunk to a
   circuit (a dependent set whose every proper subset is independent).
5. Level test, top-down: to certify ``krank >= L`` every ``L``-subset must be independent.  They are
   enumerated depth-first in lexicographic order with prefix sharing: each node of the prefix tree carries
   the Cholesky factor of its *shifted* Gram block ``G_S - (tau^2 + guard) I`` in "Schur complement" form
   (the projections of every later vector on the prefix), so a child costs one row update and a leaf one
   lookup.  A positive pivot certifies independence; a non-positive pivot is settled by the SVD of that
   subset (a dependent subset ends the level: it is shrunk to a circuit and the next, smaller level is
   tested).  Subsets whose Gram-based certificate is inconclusive are decided by SVD, so the answer is the
   one per-subset SVD at the same tolerance gives.

Sampled check (:func:`sampled_rank_check`, :func:`sampled_kruskal_curve`)
------------------------------------------------------------------------
The paper's Monte-Carlo test: the fraction of ``s`` uniformly random ``k``-subsets that have full rank
``k`` (with a Clopper-Pearson interval), the distribution of their ranks, and the curve of the fraction
over ``k``.  A fraction of 1.0 is *not* a certificate.  Speed comes from one Gram matrix of the unit
vectors, batched gathers of its ``k x k`` blocks, and a batched Cholesky of ``G_S - (tau^2 + guard) I``
(success certifies full rank); only failures get eigenvalues, and only eigenvalues inside the rounding
band ``tau^2 +- guard`` are settled by the SVD of the subset itself.  ``mode="paper"`` reproduces the
notebook's convention instead: float32 vectors, no normalisation, ``torch.linalg.matrix_rank`` default
tolerance ``sigma_max * max(k, d) * eps_float32``.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import math
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from vitheory.config import ConfigError

EPS64 = float(np.finfo(np.float64).eps)
EPS32 = float(np.finfo(np.float32).eps)

#: default tolerance on the smallest singular value of unit-normalised subsets, by input dtype (project choice)
DEFAULT_TOL = {"float64": 1e-10, "float32": 1e-5, "float16": 1e-2, "bfloat16": 1e-2}

#: multiplier of the rounding-error model of Gram-based certificates (see :func:`gram_guard`)
GUARD_C = 8.0
#: paper mode: singular values within PAPER_BAND * eps_float32 * sigma_max of the threshold are decided by float32 SVD
PAPER_BAND = 32.0


# --------------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------------
def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _dtype_name(x: Any) -> str:
    if _is_torch(x):
        return str(x.dtype).replace("torch.", "")
    return str(np.asarray(x).dtype) if not hasattr(x, "dtype") else str(x.dtype)


def default_tol(dtype: Any) -> float:
    """The default tolerance for input of this dtype (a numpy/torch dtype or its name)."""
    name = str(dtype).replace("torch.", "")
    if name in DEFAULT_TOL:
        return DEFAULT_TOL[name]
    if name.startswith(("int", "uint", "bool")):
        return DEFAULT_TOL["float64"]
    if name.startswith("float") or name.startswith("bfloat"):
        return DEFAULT_TOL["float64"] if name.endswith(("64", "128")) else DEFAULT_TOL["float32"]
    raise ConfigError(f"vectors have dtype {name}; need a real (float, int or bool) array")


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if _is_torch(x):
        import torch
        if x.is_complex():
            raise ConfigError(f"{name} is complex; need a real array")
        return x.detach().to("cpu", torch.float64).numpy()
    try:
        a = np.asarray(x)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{name} is not a numeric array ({e})") from None
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise ConfigError(f"{name} has dtype {a.dtype}; need a real numeric array")
    if np.iscomplexobj(a):
        raise ConfigError(f"{name} is complex; need a real array")
    return a


def as_vectors(x: Any, name: str = "vectors", *, ndim: int = 2, keep_dtype: bool = False) -> tuple[Any, str]:
    """Validate ``x`` as an array of vectors (rows) and return ``(float64 array, input dtype name)``
    (with ``keep_dtype``: ``x`` itself, so that later calls still see its dtype).

    Raises :class:`ConfigError` (one line naming the problem) for a wrong number of dimensions, an empty
    set, NaN or infinite entries, or a non-numeric dtype.
    """
    dtype = _dtype_name(x)
    a = _to_numpy(x, name)
    if a.ndim != ndim:
        want = "(T vectors, d dims)" if ndim == 2 else "(T examples, n tokens, d dims)"
        raise ConfigError(f"{name} must be a {ndim}-D array {want}; got shape {tuple(a.shape)}")
    if a.size == 0 or 0 in a.shape:
        raise ConfigError(f"{name} is empty (shape {tuple(a.shape)}); need at least one vector of dimension >= 1")
    a = np.ascontiguousarray(a, dtype=np.float64)
    bad = ~np.isfinite(a)
    if bad.any():
        n_nan = int(np.isnan(a).sum())
        raise ConfigError(f"{name} contains {n_nan} NaN and {int(bad.sum()) - n_nan} infinite entries; "
                          "all entries must be finite")
    return (x, dtype) if keep_dtype else (a, dtype)


def check_tol(tol: float, name: str = "tol") -> float:
    if tol is None or isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating)) \
            or not math.isfinite(tol) or not 0.0 < tol < 1.0:
        raise ConfigError(f"{name}={tol!r} is out of range; allowed range: (0, 1) (a tolerance on the smallest "
                          "singular value of unit-norm vectors)")
    return float(tol)


def unit_rows(V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows scaled to unit norm (zero rows stay zero) and the original norms."""
    norms = np.linalg.norm(V, axis=1)
    U = V / np.where(norms > 0, norms, 1.0)[:, None]
    return U, norms


def load_array(path: str | os.PathLike, name: str | None = None) -> np.ndarray | Any:
    """Load vectors from ``.npy`` (``allow_pickle=False``) or ``.pt``/``.pth`` (``torch.load(weights_only=True)``).

    A ``.pt`` file may hold a tensor, or a dict / list with exactly one tensor.  Raises ConfigError with the
    path for a missing, unreadable or corrupt file.
    """
    p = os.fspath(path)
    label = name or p
    if not os.path.exists(p):
        raise ConfigError(f"{label}: no such file")
    if not os.path.isfile(p):
        raise ConfigError(f"{label}: not a file")
    ext = os.path.splitext(p)[1].lower()
    if ext == ".npy":
        try:
            return np.load(p, allow_pickle=False)
        except ValueError as e:
            msg = str(e).splitlines()[0] if str(e) else "unreadable"
            if "pickle" in msg.lower():
                msg = "holds Python objects (pickled); save a plain numeric array"
            raise ConfigError(f"{label}: not a readable numeric .npy file ({msg})") from None
        except (OSError, EOFError) as e:
            raise ConfigError(f"{label}: corrupt .npy file ({e.__class__.__name__}: {e})") from None
    if ext in (".pt", ".pth"):
        import torch
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types (UnpicklingError, RuntimeError, EOFError ...)
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ConfigError(f"{label}: cannot load as a tensor file ({e.__class__.__name__}: {first[:160]})") from None
        if isinstance(obj, torch.Tensor):
            return obj
        vals = list(obj.values()) if isinstance(obj, dict) else list(obj) if isinstance(obj, (list, tuple)) else []
        tensors = [v for v in vals if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return tensors[0]
        raise ConfigError(f"{label}: holds a {type(obj).__name__} with {len(tensors)} tensors; "
                          "need a single tensor (or a dict/list holding exactly one)")
    raise ConfigError(f"{label}: unsupported file type {ext or '(none)'!r}; use .npy or .pt")


# --------------------------------------------------------------------------------------------------
# shared numerical helpers
# --------------------------------------------------------------------------------------------------
def gram_guard(k: int, d: int, norm_bound: float | np.ndarray) -> float | np.ndarray:
    """Half-width of the band around ``tau^2`` in which a Gram-based eigenvalue / Cholesky decision of a
    ``k``-subset of unit vectors in ``R^d`` is not trusted.

    Model: entries of ``G = U U^T`` carry rounding errors of order ``sqrt(d) eps`` and a backward-stable
    Cholesky / eigensolver adds ``~sqrt(k) eps ||G_S||`` (probabilistic rounding-error growth, Higham & Mary
    2019), so ``guard = C eps (k sqrt(d) + sqrt(k) ||G_S||)`` with ``C = GUARD_C = 8``.  Decisions inside the
    band are made by the SVD of the subset, so the constant only trades speed for safety.
    """
    return GUARD_C * EPS64 * (k * math.sqrt(d) + math.sqrt(k) * norm_bound)


def _sigma_min_exact(U: np.ndarray, subsets: np.ndarray, chunk_elems: int = 1 << 23) -> np.ndarray:
    """Smallest singular value of each subset matrix ``U[S]`` by LAPACK SVD (0 for ``|S| > d``)."""
    subsets = np.asarray(subsets, dtype=np.int64)
    n, k = subsets.shape
    d = U.shape[1]
    out = np.zeros(n)
    if n == 0 or k > d:
        return out
    step = max(1, chunk_elems // max(1, k * d))
    for i in range(0, n, step):
        out[i:i + step] = np.linalg.svd(U[subsets[i:i + step]], compute_uv=False)[:, -1]
    return out


def clopper_pearson(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided confidence interval of a binomial proportion."""
    from scipy.stats import beta
    if n <= 0:
        return (0.0, 1.0)
    a = 1.0 - level
    lo = 0.0 if successes == 0 else float(beta.ppf(a / 2, successes, n - successes + 1))
    hi = 1.0 if successes == n else float(beta.ppf(1 - a / 2, successes + 1, n - successes))
    return lo, hi


# --------------------------------------------------------------------------------------------------
# exact Kruskal rank
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KruskalResult:
    """Result of :func:`kruskal_rank`.

    kruskal_rank : the certified k-rank, or None when the search budget ran out (then see the bounds)
    lower_bound, upper_bound : certified bounds (equal when certified)
    witness : indices of ``upper_bound + 1`` vectors that are dependent at ``tol`` (None when the upper bound
        is ``min(T, d)``, where no dependent subset of that size need exist or any ``d+1`` vectors will do)
    witness_sigma_min : smallest singular value of the witness's unit vectors (<= tol)
    margin : min over all k-subsets of the smallest singular value (None when not computed); with
        ``margin_exact`` False it is a certified lower bound only
    margin_subset : a k-subset attaining the margin
    """
    kruskal_rank: int | None
    lower_bound: int
    upper_bound: int
    certified: bool
    witness: tuple[int, ...] | None
    witness_sigma_min: float | None
    margin: float | None
    margin_exact: bool
    margin_subset: tuple[int, ...] | None
    tol: float
    n_vectors: int
    dim: int
    numerical_rank: int
    subsets_checked: int
    exact_svds: int
    seconds: float
    steps: tuple[str, ...] = ()

    @property
    def spark(self) -> int | None:
        """Size of the smallest dependent subset (k-rank + 1); None if no dependent subset is certified."""
        if not self.certified or self.witness is None:
            return None
        return len(self.witness)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["witness"] = list(self.witness) if self.witness is not None else None
        d["margin_subset"] = list(self.margin_subset) if self.margin_subset is not None else None
        d["steps"] = list(self.steps)
        return d


class _Stats:
    def __init__(self, deadline: float | None):
        self.subsets = 0
        self.svds = 0
        self.deadline = deadline
        self.steps: list[str] = []

    def timed_out(self) -> bool:
        return self.deadline is not None and time.perf_counter() > self.deadline


def _is_dependent(U: np.ndarray, S: Sequence[int], tau: float, stats: _Stats) -> tuple[bool, float]:
    S = np.asarray(S, dtype=np.int64)
    stats.svds += 1
    if len(S) > U.shape[1]:
        return True, 0.0
    s = float(np.linalg.svd(U[S], compute_uv=False)[-1])
    return s <= tau, s


def _shrink_to_circuit(U: np.ndarray, S: Sequence[int], tau: float, stats: _Stats,
                       max_single: int = 96) -> tuple[int, ...]:
    """A dependent subset of ``S`` that is as small as affordable: a circuit (every proper subset independent)
    when ``|S| <= max_single`` after the bulk phase."""
    d = U.shape[1]
    S = np.array(sorted(set(int(i) for i in S)), dtype=np.int64)
    if len(S) > d + 1:
        S = S[:d + 1]
    # bulk phase: keep the vectors that carry the null vector (largest coefficients), by bisection
    while len(S) > max_single:
        M = U[S]
        if len(S) > d:
            # left null space of M^T has dimension >= |S| - d: take the vector of the smallest singular value
            y = np.linalg.svd(M, full_matrices=True)[0][:, -1]
        else:
            y = np.linalg.svd(M, full_matrices=False)[0][:, -1]
        stats.svds += 1
        order = np.argsort(-np.abs(y))
        lo, hi = 1, len(S)          # smallest m with S[order[:m]] dependent lies in [lo, hi]
        while lo < hi:
            m = (lo + hi) // 2
            if _is_dependent(U, S[order[:m]], tau, stats)[0]:
                hi = m
            else:
                lo = m + 1
        if hi >= len(S):
            break
        S = np.sort(S[order[:hi]])
    if len(S) <= max_single:
        # single-removal pass, least important vectors first
        M = U[S]
        if len(S) <= d:
            y = np.linalg.svd(M, full_matrices=False)[0][:, -1]
        else:
            y = np.linalg.svd(M, full_matrices=True)[0][:, -1]
        stats.svds += 1
        keep = list(S[np.argsort(np.abs(y))])
        i = 0
        while i < len(keep):
            trial = keep[:i] + keep[i + 1:]
            if trial and _is_dependent(U, trial, tau, stats)[0]:
                keep = trial
            else:
                i += 1
        S = np.array(sorted(keep), dtype=np.int64)
    return tuple(int(i) for i in S)


def _omp_dependencies(U: np.ndarray, tau: float, max_size: int, stats: _Stats, time_budget: float) -> list[tuple[int, ...]]:
    """Dependent sets of size <= ``max_size`` found by orthogonal matching pursuit from each vector."""
    T, d = U.shape
    if max_size < 2:
        return []
    found: list[tuple[int, ...]] = []
    t_end = time.perf_counter() + time_budget
    steps = min(max_size - 1, d, T - 1, 64)     # OMP is for sparse dependencies; larger ones are the scan's job
    for i in range(T):
        if time.perf_counter() > t_end or stats.timed_out():
            stats.steps.append(f"OMP stopped after {i} of {T} targets (time budget)")
            break
        target = U[i]
        support: list[int] = []
        resid = target.copy()
        Q = np.zeros((d, 0))
        for _ in range(steps):
            if time.perf_counter() > t_end:
                break
            corr = np.abs(U @ resid)
            corr[i] = -1.0
            corr[support] = -1.0
            j = int(np.argmax(corr))
            if corr[j] <= 0:
                break
            support.append(j)
            # incremental orthonormal basis of span(U[support]) (two Gram-Schmidt passes)
            v = U[j] - Q @ (Q.T @ U[j])
            v -= Q @ (Q.T @ v)
            nv = np.linalg.norm(v)
            if nv <= 0:
                break
            Q = np.column_stack([Q, v / nv])
            resid = target - Q @ (Q.T @ target)
            if np.linalg.norm(resid) > 1e3 * tau:       # sigma_min <= ||resid|| / ||(x, -1)||: not yet small
                continue
            x = np.linalg.lstsq(U[support].T, target, rcond=None)[0]
            bound = np.linalg.norm(target - U[support].T @ x) / math.sqrt(1.0 + float(x @ x))
            if bound <= tau:
                found.append(tuple(sorted(support + [i])))
                break
    return found


def _lp_dependencies(U: np.ndarray, tau: float, max_size: int, stats: _Stats, time_budget: float) -> list[tuple[int, ...]]:
    """Dependent sets from L1-minimal representations ``min ||x||_1 s.t. sum_j x_j u_j = u_i`` (HiGHS)."""
    from scipy.optimize import linprog
    T, d = U.shape
    found = []
    t_end = time.perf_counter() + time_budget
    for i in range(T):
        if time.perf_counter() > t_end or stats.timed_out():
            break
        others = np.delete(np.arange(T), i)
        A = U[others].T
        res = linprog(np.ones(2 * len(others)), A_eq=np.hstack([A, -A]), b_eq=U[i], bounds=(0, None), method="highs")
        if res.status != 0:
            continue
        x = res.x[:len(others)] - res.x[len(others):]
        supp = np.flatnonzero(np.abs(x) > 1e-9 * max(1.0, np.abs(x).max()))
        if 0 < len(supp) < max_size:
            found.append(tuple(sorted([int(j) for j in others[supp]] + [i])))
    return found


class _LevelOutcome:
    def __init__(self):
        self.dependent: tuple[int, ...] | None = None
        self.dep_sigma: float | None = None
        self.complete = False
        self.margin: float | None = None
        self.margin_exact = False
        self.margin_subset: tuple[int, ...] | None = None


class _Nodes:
    """Prefix-tree nodes of one level that share their last index ``last``.

    For a prefix ``S`` (sorted, last element ``last``) with shifted Gram ``A = G - s I`` and Cholesky factor
    ``A[S,S] = R^T R``: ``Z = (R^{-T} A[S, W])^T`` (shape ``(B, |W|, j)``) for the window ``W = last+1 .. T-1``
    of later vectors,
    ``r2 = diag(A)[W] - sum(Z**2, 0)`` (the next pivot of each candidate), ``logdet = log det A[S,S]``,
    ``minp2`` the smallest pivot so far and ``tr = trace A[S,S]``.
    """
    __slots__ = ("idx", "Z", "r2", "logdet", "minp2", "tr")

    def __init__(self, idx, Z, r2, logdet, minp2, tr):
        self.idx, self.Z, self.r2, self.logdet, self.minp2, self.tr = idx, Z, r2, logdet, minp2, tr

    def __len__(self):
        return len(self.idx)

    def rows(self, sel):
        return _Nodes(self.idx[sel], self.Z[sel], self.r2[sel], self.logdet[sel], self.minp2[sel], self.tr[sel])

    @staticmethod
    def cat(parts):
        if len(parts) == 1:
            return parts[0]
        return _Nodes(*(np.concatenate([getattr(p, a) for p in parts]) for a in _Nodes.__slots__))


def _scan_level(U: np.ndarray, G: np.ndarray, L: int, tau: float, stats: _Stats,
                leaf_budget: int = 1 << 21, margin_cap: int = 200_000) -> _LevelOutcome:
    """Are all ``L``-subsets independent at ``tau``?  Early exit at the first dependent one.

    The prefix tree is explored breadth-first inside subtrees of at most ``leaf_budget`` leaves; nodes of a
    level are grouped by their last index so that each group carries a column window of uniform width.
    """
    T, d = U.shape
    out = _LevelOutcome()
    if L <= 1:
        out.complete = True
        out.margin, out.margin_exact, out.margin_subset = 1.0, True, (0,)
        stats.subsets += T
        return out
    s = tau * tau + gram_guard(L, d, float(L))
    A = G.copy()
    A[np.diag_indices(T)] -= s
    diagA = np.diag(A).copy()
    lfac = (L - 1) * math.log(L - 1)

    st = {"best_ub": math.inf, "exact": (math.inf, None), "overflow": False, "n_cand": 0}
    cand_sets: list[np.ndarray] = []
    cand_lb: list[np.ndarray] = []

    class _Found(Exception):
        pass

    def exact_or_found(subsets: np.ndarray) -> np.ndarray:
        """sigma_min of each subset by SVD; raises _Found (recording the witness) on a dependent one."""
        sig = _sigma_min_exact(U, subsets)
        stats.svds += len(subsets)
        dep = np.flatnonzero(sig <= tau)
        if len(dep):
            out.dependent = tuple(int(i) for i in subsets[dep[0]])
            out.dep_sigma = float(sig[dep[0]])
            raise _Found
        return sig

    def settle(subsets: np.ndarray) -> None:
        """Exact SVD of subsets whose Gram certificate failed; raises _Found on a dependent one."""
        sig = exact_or_found(subsets)
        j = int(np.argmin(sig))
        if sig[j] < st["exact"][0]:
            st["exact"] = (float(sig[j]), tuple(int(i) for i in subsets[j]))

    def band_subtree(prefix: np.ndarray) -> None:
        """Every L-subset extending an independent prefix that the shifted factor cannot carry: by SVD."""
        j = len(prefix)
        rest = range(int(prefix[-1]) + 1, T)
        need = L - j
        stats.subsets += math.comb(len(rest), need)
        it = itertools.combinations(rest, need)
        while True:
            block = list(itertools.islice(it, 4096))
            if not block:
                return
            if stats.timed_out():
                raise _Found  # handled as "incomplete" by the caller via out.complete
            arr = np.concatenate([np.broadcast_to(prefix, (len(block), j)),
                                  np.asarray(block, dtype=np.int64).reshape(len(block), need)], axis=1)
            settle(arr)

    def leaves(nb: _Nodes, last: int) -> None:
        W = T - 1 - last
        if W <= 0 or len(nb) == 0:
            return
        p2 = nb.r2[:, :W]
        stats.subsets += p2.size
        bad = p2 <= 0
        if bad.any():
            bi, qi = np.nonzero(bad)
            settle(np.concatenate([nb.idx[bi], (last + 1 + qi)[:, None]], axis=1))
            p2 = np.where(bad, np.inf, p2)
        ub = np.minimum(nb.minp2[:, None], p2)
        m = float(ub.min())
        if not math.isfinite(m):
            return
        if m < st["best_ub"]:
            st["best_ub"] = m
        # lambda_min(A_S) >= det(A_S) ((L-1)/tr A_S)^(L-1)   (AM-GM on the other eigenvalues)
        tr = nb.tr[:, None] + diagA[last + 1:][None, :]
        log_lb = nb.logdet[:, None] + np.log(p2) + lfac - (L - 1) * np.log(tr)
        sel = log_lb <= math.log(st["best_ub"]) if st["best_ub"] > 0 else np.zeros_like(bad)
        if sel.any() and not st["overflow"]:
            bi, qi = np.nonzero(sel)
            cand_sets.append(np.concatenate([nb.idx[bi], (last + 1 + qi)[:, None]], axis=1))
            cand_lb.append(np.exp(log_lb[bi, qi]))
            st["n_cand"] += len(bi)
            if st["n_cand"] > margin_cap:
                lbs = np.concatenate(cand_lb)
                keep = lbs <= st["best_ub"]
                sets = np.concatenate(cand_sets)[keep]
                cand_sets[:] = [sets]
                cand_lb[:] = [lbs[keep]]
                st["n_cand"] = len(sets)
                if st["n_cand"] > margin_cap:
                    st["overflow"] = True

    def expand_level(groups: dict, j: int) -> dict:
        """Children of level-j node groups, regrouped by their last index (two passes: count, then fill)."""
        hi = T - L + j                     # largest admissible child index
        plan = []
        counts: dict = {}
        for last in sorted(groups):
            nb = groups[last]
            for c in range(last + 1, hi + 1):
                q = c - last - 1
                ok = nb.r2[:, q] > 0
                n_ok = int(ok.sum())
                if n_ok < len(nb):
                    bad = np.flatnonzero(~ok)
                    subs = np.concatenate([nb.idx[bad], np.full((len(bad), 1), c)], axis=1)
                    exact_or_found(subs)
                    for row in subs:
                        band_subtree(row)
                if n_ok:
                    plan.append((last, c, None if n_ok == len(nb) else ok, n_ok))
                    counts[c] = counts.get(c, 0) + n_ok
        keep_z = j + 1 < L - 1            # nodes of level L-1 only feed leaves, which need r2 alone
        new = {c: _Nodes(np.empty((n, j + 1), np.int64), np.empty((n, T - 1 - c, j + 1 if keep_z else 0)),
                         np.empty((n, T - 1 - c)),
                         np.empty(n), np.empty(n), np.empty(n)) for c, n in counts.items()}
        offs = dict.fromkeys(counts, 0)
        for last, c, ok, n in plan:
            nb = groups[last]
            q = c - last - 1
            if ok is not None:
                Zc, r2, idx = nb.Z[ok], nb.r2[ok], nb.idx[ok]
                logdet, minp2, tr = nb.logdet[ok], nb.minp2[ok], nb.tr[ok]
            else:
                Zc, r2, idx, logdet, minp2, tr = nb.Z, nb.r2, nb.idx, nb.logdet, nb.minp2, nb.tr
            p2 = r2[:, q]
            dst, o = new[c], offs[c]
            sl = slice(o, o + n)
            offs[c] = o + n
            if j:
                zdst = np.matmul(Zc[:, q + 1:, :], Zc[:, q, :, None])[:, :, 0]
                np.subtract(A[c, c + 1:], zdst, out=zdst)
            else:
                zdst = np.broadcast_to(A[c, c + 1:], (n, T - 1 - c)).copy()
            zdst /= np.sqrt(p2)[:, None]
            if keep_z:
                dst.Z[sl, :, j] = zdst
                dst.Z[sl, :, :j] = Zc[:, q + 1:, :]
            np.subtract(r2[:, q + 1:], zdst * zdst, out=dst.r2[sl])
            dst.idx[sl, :j] = idx
            dst.idx[sl, j] = c
            np.add(logdet, np.log(p2), out=dst.logdet[sl])
            np.minimum(minp2, p2, out=dst.minp2[sl])
            np.add(tr, diagA[c], out=dst.tr[sl])
        return new

    def n_leaves(groups: dict, j: int) -> int:
        return sum(len(nb) * math.comb(T - 1 - last, L - j) for last, nb in groups.items())

    def explore(j: int, groups: dict) -> None:
        if stats.timed_out():
            raise _Found
        if not groups:
            return
        if n_leaves(groups, j) > leaf_budget and j < L - 1:
            if len(groups) > 1:
                for last in sorted(groups):
                    explore(j, {last: groups[last]})
                return
            (last, nb), = groups.items()
            if len(nb) > 1:
                half = len(nb) // 2
                explore(j, {last: nb.rows(slice(0, half))})
                explore(j, {last: nb.rows(slice(half, None))})
                return
            children = expand_level({last: nb}, j)
            for c in sorted(children):
                explore(j + 1, {c: children[c]})
            return
        # breadth-first inside this subtree
        while j < L - 1:
            groups = expand_level(groups, j)
            j += 1
            if stats.timed_out():
                raise _Found
        for last in sorted(groups):
            leaves(groups[last], last)

    root = _Nodes(np.zeros((1, 0), np.int64), np.zeros((1, T, 0)), diagA[None, :].copy(),
                  np.zeros(1), np.full(1, np.inf), np.zeros(1))
    try:
        explore(0, {-1: root})
    except _Found:
        return out  # dependent subset found (out.dependent set) or time limit (out.complete False)
    out.complete = True
    exact_best = st["exact"]
    best_ub = st["best_ub"]
    if cand_sets and not st["overflow"]:
        sets = np.concatenate(cand_sets)
        lbs = np.concatenate(cand_lb)
        sets = sets[lbs <= best_ub]
        if len(sets):
            sig = _sigma_min_exact(U, sets)
            stats.svds += len(sets)
            i = int(np.argmin(sig))
            if sig[i] < exact_best[0]:
                exact_best = (float(sig[i]), tuple(int(v) for v in sets[i]))
        out.margin, out.margin_exact, out.margin_subset = exact_best[0], True, exact_best[1]
    elif st["overflow"]:
        lbs = np.concatenate(cand_lb)
        lo = math.sqrt(max(0.0, s + float(lbs.min())))
        out.margin, out.margin_exact = min(lo, exact_best[0]), False
    else:
        out.margin, out.margin_exact, out.margin_subset = exact_best[0], True, exact_best[1]
    if out.margin is not None and not math.isfinite(out.margin):
        out.margin, out.margin_exact, out.margin_subset = None, False, None
    return out


def kruskal_rank(vectors: Any, tol: float | None = None, *, max_subsets: int = 200_000_000,
                 time_limit: float | None = None, sparse: str = "omp") -> KruskalResult:
    """Exact Kruskal rank of the rows of ``vectors`` (shape ``(T, d)``) at tolerance ``tol``, with a certificate.

    Parameters
    ----------
    vectors : array-like or torch tensor, shape (T, d); rows are the vectors
    tol : tolerance on the smallest singular value of unit-normalised subsets (default: :func:`default_tol`
        of the input dtype)
    max_subsets : a level with more subsets than this is not enumerated; the result is then uncertified
        (``kruskal_rank=None``) with ``lower_bound`` / ``upper_bound``
    time_limit : seconds; stop with bounds when exceeded
    sparse : sparse null-vector search for early upper bounds: "omp" (default), "lp", "both" or "none"

    Returns a :class:`KruskalResult`; ``witness`` (when ``k < min(T, d)``) is a set of ``k + 1`` vectors that
    is dependent at ``tol`` (verified by SVD) and ``margin`` the smallest singular value over all ``k``-subsets.
    """
    t0 = time.perf_counter()
    V, dtype = as_vectors(vectors)
    tau = check_tol(default_tol(dtype) if tol is None else tol)
    if sparse not in ("omp", "lp", "both", "none"):
        raise ConfigError(f"sparse={sparse!r} is not allowed; choose one of omp, lp, both, none")
    if not isinstance(max_subsets, int) or max_subsets < 1:
        raise ConfigError(f"max_subsets={max_subsets!r} is out of range; allowed range: [1, inf)")
    if time_limit is not None and not (time_limit > 0):
        raise ConfigError(f"time_limit={time_limit!r} is out of range; allowed range: (0, inf) seconds")
    stats = _Stats(None if time_limit is None else t0 + time_limit)
    T, d = V.shape
    U, norms = unit_rows(V)

    def result(k, lo, hi, witness=None, wsig=None, margin=None, mexact=False, msub=None, rank=-1):
        return KruskalResult(k, int(lo), int(hi), k is not None, witness, wsig, margin, mexact, msub, tau, T, d,
                             int(rank), int(stats.subsets), int(stats.svds), time.perf_counter() - t0, tuple(stats.steps))

    zero = np.flatnonzero(norms == 0)
    if len(zero):
        stats.steps.append(f"zero vector at index {int(zero[0])}: k-rank 0")
        return result(0, 0, 0, (int(zero[0]),), 0.0, None, False, None,
                      int((np.linalg.svd(U, compute_uv=False) > tau).sum()))

    sv = np.linalg.svd(U, compute_uv=False)
    r = int((sv > tau).sum())
    upper, lower = min(T, d), 1
    witness: tuple[int, ...] | None = None
    wsig: float | None = None

    def take_witness(S, shrink=True):
        nonlocal upper, witness, wsig
        C = _shrink_to_circuit(U, S, tau, stats) if shrink else tuple(int(i) for i in S)
        dep, sig = _is_dependent(U, C, tau, stats)
        if not dep:  # pragma: no cover - every caller passes a set verified dependent
            raise RuntimeError("internal error: witness is not dependent")
        if len(C) - 1 < upper or (len(C) - 1 == upper and witness is None):
            upper, witness, wsig = len(C) - 1, C, sig

    if r < min(T, d):
        # sigma_{r+1}(U_S) <= sigma_{r+1}(U) <= tol for every (r+1)-subset S (interlacing)
        stats.steps.append(f"numerical rank {r} < min(T, d) = {min(T, d)}: any {r + 1} vectors are dependent")
        upper = r

    # pairs and coherence, from the Gram matrix (blocked for large T)
    G = U @ U.T if T <= 8192 else None
    mu = 0.0
    if T >= 2 and upper >= 2:
        slack = 2 * tau * tau + 64 * math.sqrt(d) * EPS64
        best_pair, best_sig = None, math.inf
        for a in range(0, T, 2048):
            blk = (G[a:a + 2048] if G is not None else U[a:a + 2048] @ U.T).copy()
            rows = np.arange(a, min(T, a + 2048))
            blk[rows - a, rows] = 0.0
            absb = np.abs(blk)
            mu = max(mu, float(absb.max()))
            ii, jj = np.nonzero(absb >= 1.0 - slack)
            keep = ii + a < jj
            ii, jj = ii[keep] + a, jj[keep]
            # near-parallel candidates, settled exactly: sigma_min([u, v]) = ||u - sign(u.v) v|| / sqrt(2)
            for c0 in range(0, len(ii), 4096):
                ci, cj = ii[c0:c0 + 4096], jj[c0:c0 + 4096]
                sgn = np.sign(blk[ci - a, cj])[:, None]
                sig = np.linalg.norm(U[ci] - np.where(sgn == 0, 1.0, sgn) * U[cj], axis=1) / math.sqrt(2.0)
                j_ = int(np.argmin(sig))
                if sig[j_] < best_sig:
                    best_pair, best_sig = (int(ci[j_]), int(cj[j_])), float(sig[j_])
                if best_sig <= tau:
                    break
            if best_sig <= tau:
                break
        if best_pair is not None and best_sig <= tau:
            stats.steps.append(f"parallel pair {best_pair} (sigma_min {best_sig:.3g}): k-rank <= 1")
            upper, witness, wsig = 1, best_pair, best_sig
        else:
            lower = 2 if T >= 2 and d >= 2 else 1
    stats.subsets += T * (T - 1) // 2
    # Gershgorin lower bound from the coherence: lambda_min(G_S) >= 1 - (|S|-1) mu (minus rounding)
    if upper > lower and mu < 1.0:
        gb = lower
        for L in range(lower + 1, upper + 1):
            if 1.0 - (L - 1) * (mu + 64 * math.sqrt(d) * EPS64) > tau * tau + gram_guard(L, d, float(L)):
                gb = L
            else:
                break
        if gb > lower:
            stats.steps.append(f"coherence {mu:.3g}: every {gb}-subset independent (Gershgorin)")
            lower = gb

    if upper > lower and sparse != "none":
        budget = 2.0 if time_limit is None else 0.1 * time_limit
        sets: list[tuple[int, ...]] = []
        if sparse in ("omp", "both"):
            sets += _omp_dependencies(U, tau, upper, stats, budget)
        if sparse in ("lp", "both"):
            sets += _lp_dependencies(U, tau, upper, stats, budget)
        for S in sorted(set(sets), key=len):
            if len(S) <= upper and _is_dependent(U, S, tau, stats)[0]:
                take_witness(S)
        if sets:
            stats.steps.append(f"sparse null vectors: {len(set(sets))} dependent sets, best upper bound {upper}")

    if witness is None and upper == r < min(T, d):
        # the rank bound's witness: the first r+1 vectors, shrunk to a circuit when a level scan may follow
        take_witness(range(r + 1), shrink=upper > lower and math.comb(T, upper) <= max_subsets)
    if G is None and upper > lower:
        G = U @ U.T
    margin = mexact = msub = None
    if lower == upper:
        if upper <= 1:
            margin, mexact, msub = 1.0, True, (0,)
        elif upper == 2 and G is not None:
            Gz = np.abs(G - np.diag(np.diag(G)))
            i_, j_ = np.unravel_index(int(np.argmax(Gz)), Gz.shape)
            margin = float(np.linalg.svd(U[[i_, j_]], compute_uv=False)[-1])
            mexact, msub = True, (int(min(i_, j_)), int(max(i_, j_)))
    while lower < upper or (margin is None and lower == upper and lower >= 3):
        L = upper
        n_sub = math.comb(T, L)
        if n_sub > max_subsets:
            stats.steps.append(f"level {L}: C({T},{L}) = {n_sub:.3g} subsets > max_subsets={max_subsets}; "
                               "stopped with bounds")
            if lower == upper:  # certified by bounds, margin only bounded
                mu_lb = 1.0 - (L - 1) * mu
                margin, mexact = (math.sqrt(mu_lb) if mu_lb > 0 else None), False
                break
            return result(None, lower, upper, witness, wsig, rank=r)
        oc = _scan_level(U, G, L, tau, stats)
        if oc.dependent is not None:
            stats.steps.append(f"level {L}: dependent subset found after {stats.subsets} subsets")
            take_witness(oc.dependent)
            lower = min(lower, upper)
            continue
        if not oc.complete:
            stats.steps.append(f"level {L}: time limit reached")
            return result(None, lower, upper, witness, wsig, rank=r)
        stats.steps.append(f"level {L}: all {n_sub} subsets independent")
        lower = upper = L
        margin, mexact, msub = oc.margin, oc.margin_exact, oc.margin_subset
        break
    k = upper
    if k == min(T, d) and witness is not None and len(witness) != k + 1:
        witness, wsig = None, None
    return result(k, k, k, witness, wsig, margin, bool(mexact), msub, r)


# --------------------------------------------------------------------------------------------------
# sampled check (the paper's Monte-Carlo test)
# --------------------------------------------------------------------------------------------------
MODES = ("float64", "paper")


@dataclass(frozen=True)
class SampledCheck:
    """Result of :func:`sampled_rank_check`: how many random ``k``-subsets have full rank ``k``.

    fraction, ci_low, ci_high : satisfied fraction and its Clopper-Pearson interval (degenerate when
        ``exhaustive``: every ``k``-subset was tested, so the fraction is exact)
    rank_hist : rank -> number of subsets, over the ``n_ranked`` subsets whose rank was computed
    margin : smallest ``sigma_min`` among the full-rank subsets (needs ``spectra=True``), i.e. how far the
        verdicts are from the tolerance; ``sigma_min_median`` over all subsets
    n_svd_fallback : subsets whose Gram-based decision fell in the rounding band and was settled by SVD
    """
    k: int
    n_vectors: int
    dim: int
    n_subsets: int
    n_full_rank: int
    fraction: float
    ci_low: float
    ci_high: float
    ci_level: float
    exhaustive: bool
    rank_hist: dict
    rank_min: int | None
    rank_max: int | None
    n_ranked: int
    margin: float | None
    sigma_min_median: float | None
    tol: float
    mode: str
    seed: int
    n_svd_fallback: int
    seconds: float
    full_rank: np.ndarray = field(repr=False, compare=False, default=None)
    ranks: np.ndarray | None = field(repr=False, compare=False, default=None)
    sigma_min: np.ndarray | None = field(repr=False, compare=False, default=None)

    def to_dict(self, arrays: bool = False) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("full_rank", "ranks", "sigma_min")}
        d["rank_hist"] = {int(k): int(v) for k, v in sorted(self.rank_hist.items())}
        if arrays:
            d["full_rank"] = self.full_rank.tolist()
            d["ranks"] = None if self.ranks is None else self.ranks.tolist()
            d["sigma_min"] = None if self.sigma_min is None else self.sigma_min.tolist()
        return d


def _check_int(name: str, v: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo or (hi is not None and v > hi):
        rng_ = f"[{lo}, {hi if hi is not None else 'inf'}]"
        raise ConfigError(f"{name}={v!r} is out of range; allowed range: {rng_} (an integer)")
    return int(v)


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r} is not allowed; choose one of {', '.join(MODES)}")
    return mode


def _check_level(ci_level: float) -> float:
    if not isinstance(ci_level, (int, float)) or not 0.0 < ci_level < 1.0:
        raise ConfigError(f"ci_level={ci_level!r} is out of range; allowed range: (0, 1)")
    return float(ci_level)


def random_subsets(T: int, k: int, n: int, seed: int = 0) -> np.ndarray:
    """``n`` uniformly random ``k``-subsets of ``range(T)`` (sorted rows), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, k), dtype=np.int64)
    step = max(1, (1 << 22) // max(T, 1))
    for i in range(0, n, step):
        m = min(step, n - i)
        keys = rng.random((m, T))
        part = np.argpartition(keys, k - 1, axis=1)[:, :k] if k < T else np.tile(np.arange(T), (m, 1))
        out[i:i + m] = np.sort(part, axis=1)
    return out


def _device(device: Any):
    import torch
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={device!r} is not a valid torch device (e.g. cpu, cuda, cuda:0)") from None


@contextlib.contextmanager
def small_lapack_threads(device):
    """Run batched small factorisations single-threaded on CPU and yield the previous thread count, which the
    caller uses as its number of worker threads over batches (project choice, measured: on a busy 2-core machine
    torch's own 2-thread batched Cholesky of 197 x 197 blocks was 14x slower than 1 thread, while two workers
    each running 1-thread batches were 1.4x faster than one).  Restores the thread count afterwards."""
    import torch
    if getattr(device, "type", str(device)) != "cpu":
        yield 1
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield n
    finally:
        torch.set_num_threads(n)


class _Prepared:
    """Vectors on the device in the form a mode needs, plus the Gram matrix when it fits."""

    def __init__(self, V: np.ndarray, mode: str, device, gram_limit: int = 16384):
        import torch
        self.mode = mode
        self.T, self.d = V.shape
        if mode == "float64":
            U, _ = unit_rows(V)
        else:  # paper: the notebook's float32 vectors, no normalisation
            U = V.astype(np.float32).astype(np.float64)
        self.U = torch.from_numpy(U).to(device)
        self.G = self.U @ self.U.T if self.T <= gram_limit else None
        self.Gflat_np = self.G.numpy().ravel() if (self.G is not None and self.G.device.type == "cpu") else None
        self._local = threading.local()

    def gram(self, idx):
        """(b, k, k) Gram blocks of the subsets ``idx`` (a (b, k) long tensor on the device).

        On CPU the blocks are gathered with numpy's ``take`` into buffers reused across batches (fresh
        allocations of this size cost as much as the gather itself in page faults); the returned tensor is
        only valid until the next call."""
        import torch
        if self.G is not None:
            if self.Gflat_np is not None:
                ii = idx.numpy()
                b, k = ii.shape
                buf = getattr(self._local, "buf", None)      # per worker thread
                if buf is None or buf["shape"][0] < b or buf["shape"][1] != k:
                    buf = self._local.buf = {"shape": (b, k), "i": np.empty((b, k, k), np.int64),
                                             "g": np.empty((b, k, k))}
                ib, gb = buf["i"][:b], buf["g"][:b]
                np.multiply(ii[:, :, None], self.T, out=ib)
                ib += ii[:, None, :]
                np.take(self.Gflat_np, ib, out=gb)
                return torch.from_numpy(gb)
            return torch.take(self.G, idx[:, :, None] * self.T + idx[:, None, :])
        US = self.U[idx]
        return US @ US.transpose(1, 2)


def _rank_band(lam, lo, hi):
    """Ranks certain outside the band (lo, hi]: (rank_if_certain, certain_mask)."""
    r_hi = (lam > lo[:, None]).sum(-1)
    r_lo = (lam > hi[:, None]).sum(-1)
    return r_lo, r_lo == r_hi


def decide_float64(Gs, matrices, k: int, d: int, tau: float, want_rank: bool = True, spectra: bool = False):
    """Full-rank verdicts of ``b`` matrices of ``k`` unit vectors in ``R^d`` from their Gram blocks.

    Gs : (b, k, k) float64 Gram blocks (or ``None`` when ``k > d``)
    matrices : callable ``sel -> (len(sel), k, d)`` float64 tensor of the unit vectors (for the SVD fallback)
    Returns ``(full, rank, sigma_min, n_svd)``: rank is -1 where not computed (``want_rank=False`` and
    full rank not certified) and -2 where only "deficient" is certain; sigma_min is nan where not computed.
    A matrix has full rank iff its smallest singular value is > tau; every decision inside the rounding band
    ``tau^2 +- guard`` of the Gram eigenvalues is made by ``torch.linalg.svdvals`` of the matrix itself.
    """
    import torch
    t2 = tau * tau
    if k > d:  # more vectors than dimensions: never full rank; rank from the d x d Gram
        M = matrices(None)
        b = M.shape[0]
        dev = M.device
        rank = torch.full((b,), -2, dtype=torch.long, device=dev)
        n_fb = 0
        if want_rank:
            Gd = M.transpose(1, 2) @ M
            guard = torch.full((b,), GUARD_C * EPS64 * (d * math.sqrt(k) + math.sqrt(d) * k), dtype=torch.float64,
                               device=dev)
            lam = torch.linalg.eigvalsh(Gd)
            r_lo, certain = _rank_band(lam, t2 - guard, t2 + guard)
            rank = torch.where(certain, r_lo, torch.full_like(r_lo, -1))
            if (~certain).any():
                sel = torch.nonzero(~certain).flatten()
                rank[sel] = (torch.linalg.svdvals(M[sel]) > tau).sum(-1)
                n_fb += len(sel)
        return (torch.zeros(b, dtype=torch.bool, device=dev), rank,
                torch.zeros(b, dtype=torch.float64, device=dev), n_fb)
    b = Gs.shape[0]
    dev = Gs.device
    rank = torch.full((b,), -1, dtype=torch.long, device=dev)
    smin = torch.full((b,), float("nan"), dtype=torch.float64, device=dev)
    # unit vectors: ||G_S||_2 <= trace(G_S) <= k, so one guard serves the whole batch
    guard = torch.full((b,), gram_guard(k, d, float(k)), dtype=torch.float64, device=dev)
    diag = Gs.diagonal(dim1=-2, dim2=-1)
    if spectra:
        lam = torch.linalg.eigvalsh(Gs)
        r_lo, certain = _rank_band(lam, t2 - guard, t2 + guard)
        rank = torch.where(certain, r_lo, rank)
        smin = lam[:, 0].clamp_min(0).sqrt()
        unsure = ~certain
    else:
        diag -= t2 + guard[0]                      # shift in place (Gs is a fresh gather), restored below
        _, info = torch.linalg.cholesky_ex(Gs)
        diag += t2 + guard[0]
        ok = info == 0
        rank = torch.where(ok, torch.full_like(rank, k), rank)
        unsure = ~ok
        if unsure.any():
            sel = torch.nonzero(unsure).flatten()
            if want_rank:
                lam = torch.linalg.eigvalsh(Gs[sel])
                r_lo, certain = _rank_band(lam, t2 - guard[sel], t2 + guard[sel])
                rank[sel] = torch.where(certain, r_lo, rank[sel])
                unsure = torch.zeros_like(unsure)
                unsure[sel] = ~certain
            else:
                low = t2 - guard[sel]
                pos = low > 0
                if pos.any():
                    s2 = sel[pos]
                    G2 = Gs[s2]
                    G2.diagonal(dim1=-2, dim2=-1).sub_(low[pos][:, None])
                    _, info2 = torch.linalg.cholesky_ex(G2)
                    dead = info2 != 0          # certainly deficient (rank < k, value not computed)
                    rank[s2[dead]] = -2
                    unsure = torch.zeros_like(unsure)
                    unsure[sel] = True
                    unsure[s2[dead]] = False
    n_fb = 0
    if unsure.any():
        sel = torch.nonzero(unsure).flatten()
        sv = torch.linalg.svdvals(matrices(sel))
        rank[sel] = (sv > tau).sum(-1)
        smin[sel] = sv[:, -1]
        n_fb = len(sel)
    return rank == k, rank, smin, n_fb


def decide_paper(Gs, matrices32, k: int, d: int):
    """The notebook's verdicts: ``torch.linalg.matrix_rank`` of float32 matrices at its default tolerance
    ``sigma_max * max(k, d) * eps_float32``, computed from float64 Gram eigenvalues of the float32 values;
    singular values within ``PAPER_BAND * eps_float32 * sigma_max`` of the threshold are settled by calling
    ``torch.linalg.matrix_rank`` on the float32 matrix itself; outside that band the float64 value decides.
    Measured float32 SVD errors on 197 x 768 ViT features were at most 5.4 ``eps_float32 sigma_max``; the band
    (32) leaves a factor 6 of safety, and the benchmark checks the verdicts against the reference.

    Gs : (b, k, k) float64 Gram blocks, or (b, d, d) ``M^T M`` when ``k > d``
    """
    import torch
    lam = torch.linalg.eigvalsh(Gs)
    lmax = lam[:, -1].clamp_min(0)
    smax = lmax.sqrt()
    thr = max(k, d) * EPS32 * smax
    half = PAPER_BAND * EPS32 * smax
    r_lo, certain = _rank_band(lam, (thr - half).clamp_min(0) ** 2, (thr + half) ** 2)
    rank = torch.where(certain, r_lo, torch.full_like(r_lo, -1))
    n_fb = 0
    if (~certain).any():
        sel = torch.nonzero(~certain).flatten()
        rank[sel] = torch.linalg.matrix_rank(matrices32(sel)).to(torch.long)
        n_fb = len(sel)
    smin = lam[:, 0].clamp_min(0).sqrt() if k <= d else torch.zeros_like(lmax)
    return rank == k, rank, smin, n_fb


def _batch_decide(prep: _Prepared, idx, tau: float, want_rank: bool, spectra: bool):
    """Verdict, rank and sigma_min for a batch of subsets ``idx`` ((b, k) long tensor) of prepared vectors."""
    b, k = idx.shape
    d = prep.d

    def mats(sel):
        return prep.U[idx] if sel is None else prep.U[idx[sel]]
    if prep.mode == "paper":
        if k <= d:
            Gs = prep.gram(idx)
        else:
            M = prep.U[idx]
            Gs = M.transpose(1, 2) @ M
        return decide_paper(Gs, lambda sel: prep.U[idx[sel]].float(), k, d)
    return decide_float64(prep.gram(idx) if k <= d else None, mats, k, d, tau, want_rank, spectra)


def _subsets_for(T: int, k: int, n_subsets: int, seed: int, subsets) -> tuple[np.ndarray, bool]:
    if subsets is not None:
        S = np.asarray(subsets)
        if S.ndim != 2 or S.shape[1] != k or not np.issubdtype(S.dtype, np.integer):
            raise ConfigError(f"subsets must be an integer array of shape (s, k={k}); got {S.dtype} {S.shape}")
        if S.size and (S.min() < 0 or S.max() >= T):
            raise ConfigError(f"subsets has indices outside [0, {T - 1}]")
        if any(len(set(row)) != k for row in S.tolist()):
            raise ConfigError("subsets has a row with repeated indices; each subset needs k distinct vectors")
        return S.astype(np.int64), False
    total = math.comb(T, k)
    if total <= n_subsets:
        return np.array(list(itertools.combinations(range(T), k)), dtype=np.int64).reshape(total, k), True
    return random_subsets(T, k, n_subsets, seed), False


def rank_histogram(ranks: np.ndarray) -> dict[int, int]:
    """rank -> number of subsets (or matrices) with that rank."""
    return {int(v): int(c) for v, c in zip(*np.unique(ranks, return_counts=True))}


def sampled_rank_check(vectors: Any, k: int, n_subsets: int = 5000, tol: float | None = None, *,
                       seed: int = 0, mode: str = "float64", ranks: bool = True, spectra: bool = False,
                       ci_level: float = 0.95, device: Any = "cpu", subsets: Any = None,
                       batch_elems: int | None = None) -> SampledCheck:
    """The paper's sampled Kruskal check: the fraction of ``n_subsets`` random ``k``-subsets of the rows of
    ``vectors`` that have full rank ``k``.

    mode "float64" (default): unit-normalised float64 vectors, a subset has full rank iff its smallest
        singular value is ``> tol`` (default :func:`default_tol` of the input dtype); verdicts and ranks equal
        those of ``torch.linalg.matrix_rank(U_S, atol=tol, rtol=0)`` on the same unit vectors.
    mode "paper": the notebook's convention, ``torch.linalg.matrix_rank`` of the float32 vectors at its
        default tolerance (``tol`` is ignored).
    ranks : also compute the rank of every deficient subset (the rank histogram); full-rank subsets have rank k
    spectra : compute the smallest singular value of every subset (``margin``, ``sigma_min``); slower
    subsets : explicit subsets to test (an ``(s, k)`` integer array) instead of random ones
    When ``C(T, k) <= n_subsets`` every subset is tested once (``exhaustive=True``, exact fraction).
    """
    import torch
    t0 = time.perf_counter()
    V, dtype = as_vectors(vectors)
    T, d = V.shape
    mode = _check_mode(mode)
    k = _check_int("k", k, 1, T)
    n_subsets = _check_int("n_subsets", n_subsets, 1, 10_000_000)
    seed = _check_int("seed", seed, 0)
    ci_level = _check_level(ci_level)
    tau = check_tol(default_tol(dtype) if tol is None else tol)
    dev = _device(device)
    S, exhaustive = _subsets_for(T, k, n_subsets, seed, subsets)
    n = len(S)
    full = np.zeros(n, dtype=bool)
    rank = np.full(n, -1, dtype=np.int64)
    smin = np.full(n, np.nan)
    n_fb = 0
    if mode == "float64" and not ranks and not spectra:
        # every k-subset is deficient when k exceeds the numerical rank of all the vectors (interlacing):
        # sigma_k(U_S) <= sigma_k(U) <= tol
        r_all = int((np.linalg.svd(unit_rows(V)[0], compute_uv=False) > tau).sum())
        if k > r_all:
            rank[:] = -2
            lo, hi = (0.0, 0.0) if exhaustive else clopper_pearson(0, n, ci_level)
            return SampledCheck(k, T, d, n, 0, 0.0, lo, hi, ci_level, exhaustive, {}, None, None, 0, None, None,
                                tau, mode, seed, 0, time.perf_counter() - t0, full, rank, None)
    prep = _Prepared(V, mode, dev)
    per = max(k, 1) * max(min(k, d), 1) if k > d else k * k
    budget = batch_elems or ((1 << 27) if dev.type == "cuda" else (1 << 22))
    step = max(1, budget // per)
    St = torch.from_numpy(S).to(dev)

    def one(i):
        with torch.no_grad():
            return i, _batch_decide(prep, St[i:i + step], tau, bool(ranks), bool(spectra))
    with small_lapack_threads(dev) as threads:
        starts = range(0, n, step)
        workers = min(threads, 4, len(starts))
        if workers > 1:   # batches in parallel, each single-threaded (gathers and LAPACK release the GIL)
            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(one, starts))
        else:
            results = [one(i) for i in starts]
    for i, (f, r, s_, fb) in results:
        full[i:i + step] = f.cpu().numpy()
        rank[i:i + step] = r.cpu().numpy()
        smin[i:i + step] = s_.cpu().numpy()
        n_fb += fb
    n_full = int(full.sum())
    known = rank >= 0
    hist = rank_histogram(rank[known])
    lo, hi = (n_full / n, n_full / n) if exhaustive else clopper_pearson(n_full, n, ci_level)
    have_s = np.isfinite(smin)
    margin = float(smin[full & have_s].min()) if (full & have_s).any() and (spectra or mode == "paper") else None
    med = float(np.median(smin[have_s])) if have_s.all() and (spectra or mode == "paper") else None
    return SampledCheck(k, T, d, n, n_full, n_full / n, lo, hi, ci_level, exhaustive, hist,
                        int(rank[known].min()) if known.any() else None,
                        int(rank[known].max()) if known.any() else None, int(known.sum()),
                        margin, med, tau if mode == "float64" else float("nan"), mode, seed, n_fb,
                        time.perf_counter() - t0, full, rank, smin if (spectra or mode == "paper") else None)


# --------------------------------------------------------------------------------------------------
# sampled Kruskal-rank curve
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KruskalCurve:
    """Satisfied fraction of random ``k``-subsets for each ``k`` in ``ks``.

    estimate : the largest ``k`` in ``ks`` such that the fraction is ``>= pass_fraction`` at it and at every
        smaller ``k`` of the grid: a Monte-Carlo *estimate* of the Kruskal rank, not a certificate
    nested : True when each trial is one random ordering and subset ``k`` is its first ``k`` vectors (each
        ``k`` still sees a uniformly random ``k``-subset; the points are correlated across ``k``)
    numerical_rank : rank of all the vectors at ``tol``; every ``k`` above it has fraction 0 exactly
    """
    ks: tuple[int, ...]
    fractions: tuple[float, ...]
    ci_low: tuple[float, ...]
    ci_high: tuple[float, ...]
    n_full: tuple[int, ...]
    n_subsets: int
    estimate: int | None
    pass_fraction: float
    tol: float
    nested: bool
    numerical_rank: int
    n_vectors: int
    dim: int
    seed: int
    n_svd_fallback: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def default_curve_ks(kmax: int, step: int | None = None, extra: Iterable[int] = ()) -> tuple[int, ...]:
    """The paper's grid ``1, 1+step, 1+2 step, ... <= kmax`` plus ``kmax`` and any ``extra`` values
    (default step: 10 as in the notebook, or 1 when ``kmax <= 100``)."""
    step = step or (1 if kmax <= 100 else 10)
    return tuple(sorted({*range(1, kmax + 1, step), kmax, *(e for e in extra if 1 <= e <= kmax)}))


def _curve_estimate(ks, fr, pass_fraction):
    est = None
    for k_, f in zip(ks, fr):
        if f >= pass_fraction:
            est = k_
        else:
            break
    return est


def sampled_kruskal_curve(vectors: Any, ks: Sequence[int] | None = None, n_subsets: int = 5000,
                          tol: float | None = None, *, seed: int = 0, ci_level: float = 0.95,
                          pass_fraction: float = 0.99, nested: bool = True, device: Any = "cpu",
                          batch_elems: int | None = None) -> KruskalCurve:
    """Sampled Kruskal-rank curve: for each ``k`` in ``ks`` the fraction of random ``k``-subsets of full rank.

    With ``nested=True`` (default, a project choice) each of the ``n_subsets`` trials draws one random
    ordering and one Cholesky factorisation of the shifted Gram block of its first ``max(ks)`` vectors
    decides every prefix at once (a prefix is full rank iff its leading block is positive definite); with
    ``nested=False`` every ``k`` draws fresh subsets, as the paper's notebook did (costlier).  Decisions in the
    rounding band are settled by SVD, so each verdict equals the per-subset SVD verdict at ``tol``.
    """
    import torch
    t0 = time.perf_counter()
    V, dtype = as_vectors(vectors)
    T, d = V.shape
    kmax_all = min(T, d)
    if ks is None:
        ks = default_curve_ks(kmax_all)
    ks = tuple(sorted({_check_int("ks", int(k_) if isinstance(k_, (int, np.integer)) else k_, 1, T) for k_ in ks}))
    if not ks:
        raise ConfigError(f"ks is empty; give at least one subset size in [1, {T}]")
    n_subsets = _check_int("n_subsets", n_subsets, 1, 10_000_000)
    seed = _check_int("seed", seed, 0)
    ci_level = _check_level(ci_level)
    if not isinstance(pass_fraction, (int, float)) or not 0.0 < pass_fraction <= 1.0:
        raise ConfigError(f"pass_fraction={pass_fraction!r} is out of range; allowed range: (0, 1]")
    tau = check_tol(default_tol(dtype) if tol is None else tol)
    dev = _device(device)
    U, _ = unit_rows(V)
    r = int((np.linalg.svd(U, compute_uv=False) > tau).sum())

    if not nested:
        fr, lo_, hi_, nf, fb = [], [], [], [], 0
        for k_ in ks:
            if k_ > r:
                fr.append(0.0), nf.append(0)
                lo_.append(0.0), hi_.append(0.0 if math.comb(T, k_) <= n_subsets else clopper_pearson(0, n_subsets, ci_level)[1])
                continue
            c = sampled_rank_check(V, k_, n_subsets, tau, seed=seed + k_, ranks=False, ci_level=ci_level,
                                   device=dev, batch_elems=batch_elems)
            fr.append(c.fraction), lo_.append(c.ci_low), hi_.append(c.ci_high), nf.append(c.n_full_rank)
            fb += c.n_svd_fallback
        return KruskalCurve(ks, tuple(fr), tuple(lo_), tuple(hi_), tuple(nf), n_subsets,
                            _curve_estimate(ks, fr, pass_fraction), float(pass_fraction), tau, False, r, T, d, seed,
                            fb, time.perf_counter() - t0)

    m = min(max(ks), r, d)          # longer prefixes are deficient for certain (interlacing)
    prep = _Prepared(V, "float64", dev)
    n = n_subsets
    mfull = np.zeros(n, dtype=np.int64)   # per trial: the longest full-rank prefix length (resolved on ks)
    ks_arr = np.array(ks)
    n_fb = 0
    rng = np.random.default_rng(seed)
    budget = batch_elems or ((1 << 27) if dev.type == "cuda" else (1 << 22))
    step = max(1, budget // max(1, m * m))
    t2 = tau * tau
    if m >= 1:
        with torch.no_grad(), small_lapack_threads(dev):
            for i in range(0, n, step):
                b = min(step, n - i)
                P = np.argsort(rng.random((b, T)), axis=1)[:, :m]
                Pt = torch.from_numpy(P).to(dev)
                Gs = prep.gram(Pt)
                guard = torch.full((b,), gram_guard(m, d, float(m)), dtype=torch.float64, device=dev)
                eye = torch.eye(m, dtype=Gs.dtype, device=dev)
                _, info = torch.linalg.cholesky_ex(Gs - (t2 + guard)[:, None, None] * eye)
                info = info.cpu().numpy()
                hi_ok = np.where(info == 0, m, info - 1)          # prefixes up to this length: certified full
                low = (t2 - guard).cpu().numpy()
                dead_from = np.full(b, m + 1)                      # prefixes from this length on: certified deficient
                need = np.flatnonzero(hi_ok < m)
                pos = need[low[need] > 0]
                if len(pos):
                    _, info2 = torch.linalg.cholesky_ex(Gs[torch.from_numpy(pos).to(dev)]
                                                        - torch.from_numpy(low[pos]).to(dev)[:, None, None] * eye)
                    info2 = info2.cpu().numpy()
                    dead_from[pos] = np.where(info2 == 0, m + 1, info2)
                for t in range(b):
                    full_len = int(hi_ok[t])
                    if full_len < m:
                        # ks strictly between the certified-full and certified-deficient lengths: SVD, bisection
                        amb = ks_arr[(ks_arr > full_len) & (ks_arr < dead_from[t]) & (ks_arr <= m)]
                        lo_i, hi_i = 0, len(amb)
                        while lo_i < hi_i:
                            mid = (lo_i + hi_i) // 2
                            kk = int(amb[mid])
                            sv = np.linalg.svd(U[P[t, :kk]], compute_uv=False)
                            n_fb += 1
                            if sv[-1] > tau:
                                lo_i = mid + 1
                            else:
                                hi_i = mid
                        if lo_i > 0:
                            full_len = max(full_len, int(amb[lo_i - 1]))
                    mfull[i + t] = full_len
    nf = tuple(int((mfull >= k_).sum()) if k_ <= m else 0 for k_ in ks)
    fr = tuple(c / n for c in nf)
    cis = [clopper_pearson(c, n, ci_level) for c in nf]
    return KruskalCurve(ks, fr, tuple(c[0] for c in cis), tuple(c[1] for c in cis), nf, n,
                        _curve_estimate(ks, fr, pass_fraction), float(pass_fraction), tau, True, r, T, d, seed,
                        n_fb, time.perf_counter() - t0)

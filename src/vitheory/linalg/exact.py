"""Exact Kruskal rank of a finite set of vectors, with a certificate.

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
  arithmetic; so the k-rank at tolerance is well defined.  Default tolerances: :mod:`vitheory.linalg.inputs`.
* **Integer and bool input** (without an explicit ``tol``) is exact data and gets its exact k-rank: float64
  certifies independence as above, and every subset it calls dependent is checked in rational arithmetic
  (:mod:`vitheory.linalg.rational`); e.g. ``(2^62, 1), (2^62, 2)`` have k-rank 2, although the smallest
  singular value of their unit vectors is 1.5e-19.
* The **margin** of a certified k-rank ``k`` is ``min over all k-subsets S of sigma_min(U_S)``: the
  smallest singular value met among the subsets that had to be certified.  It is the tau-robust Kruskal
  rank notion of Bhaskara-Charikar-Vijayaraghavan (2014): the k-rank would stay ``k`` for every tolerance
  below the margin.

Algorithm (:func:`kruskal_rank`)
--------------------------------
1. Zero vectors: k-rank 0, witness the zero vector.
2. Numerical rank ``r`` (SVD of all unit vectors): if ``r < min(T, d)`` every ``(r+1)``-subset is dependent
   (``sigma_{r+1}(U_S) <= sigma_{r+1}(U) <= tau``), so ``krank <= r`` with a witness.
3. Pairs from one Gram matrix: a parallel pair gives ``krank <= 1``; otherwise every pair is certified
   independent (near-parallel candidates are settled exactly), and the mutual coherence ``mu`` gives the
   Gershgorin lower bound ``lambda_min(G_S) >= 1 - (|S|-1) mu``.
4. Sparse null vectors by orthogonal matching pursuit (optionally an L1 linear program): a dependent set of
   size ``s`` gives ``krank <= s - 1``.  Every dependent set found is verified by SVD and shrunk to a
   circuit (a dependent set whose every proper subset is independent).
5. Level test, top-down (:class:`_LevelScan`): to certify ``krank >= L`` every ``L``-subset must be
   independent.  They are enumerated depth-first in lexicographic order with prefix sharing: each node of the
   prefix tree carries the Cholesky factor of its *shifted* Gram block ``G_S - (tau^2 + guard) I`` in "Schur
   complement" form (the projections of every later vector on the prefix), so a child costs one row update
   and a leaf one lookup.  A positive pivot certifies independence; a non-positive pivot is settled by the
   SVD of that subset (a dependent subset ends the level: it is shrunk to a circuit and the next, smaller
   level is tested).  Subsets whose Gram-based certificate is inconclusive are decided by SVD, so the answer
   is the one per-subset SVD at the same tolerance gives.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from vitheory.config import ConfigError
from vitheory.linalg.inputs import (EPS64, as_vectors, available_memory, check_memory, check_tol, default_tol,
                                    gram_guard, memory_errors, unit_rows)
from vitheory.linalg.rational import IntegerDependence, is_integer_dtype


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
    """Counters, deadline and notes of one search; ``exact`` decides dependence for integer input."""

    def __init__(self, deadline: float | None, exact: IntegerDependence | None = None):
        self.subsets = 0
        self.svds = 0
        self.deadline = deadline
        self.steps: list[str] = []
        self.exact = exact

    def confirm(self, S: Sequence[int]) -> bool:
        """Is ``S``, which float64 calls dependent, dependent?  Always for float input; exactly for integers."""
        if self.exact is None:
            return True
        v = self.exact.dependent(S)
        return True if v is None else v

    def timed_out(self) -> bool:
        return self.deadline is not None and time.perf_counter() > self.deadline


def _is_dependent(U: np.ndarray, S: Sequence[int], tau: float, stats: _Stats) -> tuple[bool, float]:
    S = np.asarray(S, dtype=np.int64)
    stats.svds += 1
    if len(S) > U.shape[1]:
        return True, 0.0
    s = float(np.linalg.svd(U[S], compute_uv=False)[-1])
    return s <= tau and stats.confirm(S), s


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


class _Stop(Exception):
    """Ends a level scan early: a dependent subset was found (recorded in the outcome) or the time limit hit."""


class _LevelScan:
    """One level test: are all ``L``-subsets of the unit vectors ``U`` independent at ``tau``?

    The ``L``-subsets are the leaves of the prefix tree of sorted index tuples.  Each node carries the
    Cholesky data of its shifted Gram block ``A = G - s I``, ``s = tau^2 + guard`` (see :class:`_Nodes`), so a
    child costs one row update and a leaf one lookup: a positive pivot certifies independence, a non-positive
    one is settled by the SVD of that subset, and the first dependent subset ends the scan (:class:`_Stop`).

    Margin bookkeeping along the way (the smallest ``sigma_min`` over all ``L``-subsets):
    ``best_ub`` the smallest leaf pivot seen (an upper bound on ``min_S lambda_min(A_S)``), ``exact`` the
    smallest ``sigma_min`` among subsets decided by SVD, and the candidate subsets whose AM-GM lower bound on
    ``lambda_min(A_S)`` does not exceed ``best_ub`` (at most ``margin_cap`` kept; beyond that the margin is
    only bounded, ``overflow``, by the smallest AM-GM bound over all leaves, ``min_log_lb``).
    """

    def __init__(self, U: np.ndarray, G: np.ndarray, L: int, tau: float, stats: _Stats,
                 leaf_budget: int, margin_cap: int):
        self.U, self.L, self.tau, self.stats = U, L, tau, stats
        self.T, d = U.shape
        self.leaf_budget, self.margin_cap = leaf_budget, margin_cap
        self.shift = tau * tau + gram_guard(L, d, float(L))
        self.A = G.copy()
        self.A[np.diag_indices(self.T)] -= self.shift
        self.diagA = np.diag(self.A).copy()
        self.lfac = (L - 1) * math.log(L - 1)
        self.out = _LevelOutcome()
        self.best_ub = math.inf
        self.exact: tuple[float, tuple[int, ...] | None] = (math.inf, None)
        self.overflow = False
        self.n_cand = 0
        self.min_log_lb = math.inf              # smallest AM-GM lower bound over every leaf seen
        self.cand_sets: list[np.ndarray] = []
        self.cand_lb: list[np.ndarray] = []

    def run(self) -> _LevelOutcome:
        root = _Nodes(np.zeros((1, 0), np.int64), np.zeros((1, self.T, 0)), self.diagA[None, :].copy(),
                      np.zeros(1), np.full(1, np.inf), np.zeros(1))
        try:
            self.explore(0, {-1: root})
        except _Stop:
            return self.out  # dependent subset found (out.dependent set) or time limit (out.complete False)
        self.out.complete = True
        self.finish_margin()
        return self.out

    # ---- subsets decided by SVD -------------------------------------------------------------------
    def svd_or_stop(self, subsets: np.ndarray) -> np.ndarray:
        """sigma_min of each subset by SVD; stops the scan (recording the witness) at a dependent one."""
        sig = _sigma_min_exact(self.U, subsets)
        self.stats.svds += len(subsets)
        for i in np.flatnonzero(sig <= self.tau):
            if self.stats.confirm(subsets[i]):
                self.out.dependent = tuple(int(v) for v in subsets[i])
                self.out.dep_sigma = float(sig[i])
                raise _Stop
        return sig

    def settle(self, subsets: np.ndarray) -> None:
        """Leaves whose Gram certificate failed: decided by SVD, the smallest sigma_min kept for the margin."""
        sig = self.svd_or_stop(subsets)
        j = int(np.argmin(sig))
        if sig[j] < self.exact[0]:
            self.exact = (float(sig[j]), tuple(int(i) for i in subsets[j]))

    def band_subtree(self, prefix: np.ndarray) -> None:
        """Every L-subset extending an independent prefix that the shifted factor cannot carry: by SVD."""
        j = len(prefix)
        rest = range(int(prefix[-1]) + 1, self.T)
        need = self.L - j
        self.stats.subsets += math.comb(len(rest), need)
        it = itertools.combinations(rest, need)
        while True:
            block = list(itertools.islice(it, 4096))
            if not block:
                return
            if self.stats.timed_out():
                raise _Stop  # out.complete stays False: "incomplete"
            arr = np.concatenate([np.broadcast_to(prefix, (len(block), j)),
                                  np.asarray(block, dtype=np.int64).reshape(len(block), need)], axis=1)
            self.settle(arr)

    # ---- the prefix tree --------------------------------------------------------------------------
    def n_leaves(self, groups: dict, j: int) -> int:
        return sum(len(nb) * math.comb(self.T - 1 - last, self.L - j) for last, nb in groups.items())

    def explore(self, j: int, groups: dict) -> None:
        """Every leaf below the level-``j`` node ``groups`` (last index -> :class:`_Nodes`): breadth-first
        inside subtrees of at most ``leaf_budget`` leaves, splitting larger ones by group, then by rows, then
        one level down."""
        if self.stats.timed_out():
            raise _Stop
        if not groups:
            return
        if self.n_leaves(groups, j) > self.leaf_budget and j < self.L - 1:
            if len(groups) > 1:
                for last in sorted(groups):
                    self.explore(j, {last: groups[last]})
                return
            (last, nb), = groups.items()
            if len(nb) > 1:
                half = len(nb) // 2
                self.explore(j, {last: nb.rows(slice(0, half))})
                self.explore(j, {last: nb.rows(slice(half, None))})
                return
            children = self.expand(groups, j)
            for c in sorted(children):
                self.explore(j + 1, {c: children[c]})
            return
        while j < self.L - 1:
            groups = self.expand(groups, j)
            j += 1
            if self.stats.timed_out():
                raise _Stop
        for last in sorted(groups):
            self.leaves(groups[last], last)

    def expand(self, groups: dict, j: int) -> dict:
        """Children of level-``j`` node groups, regrouped by their last index (two passes: count, then fill)."""
        plan, counts = self.plan_children(groups, j)
        return self.fill_children(groups, j, plan, counts)

    def plan_children(self, groups: dict, j: int) -> tuple[list, dict]:
        """For each node group and child index ``c``: the rows whose pivot at ``c`` is positive (children to
        build) and their count per ``c``; prefixes with a non-positive pivot are settled by SVD here."""
        hi = self.T - self.L + j                # largest admissible child index
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
                    self.svd_or_stop(subs)
                    for row in subs:
                        self.band_subtree(row)
                if n_ok:
                    plan.append((last, c, None if n_ok == len(nb) else ok, n_ok))
                    counts[c] = counts.get(c, 0) + n_ok
        return plan, counts

    def fill_children(self, groups: dict, j: int, plan: list, counts: dict) -> dict:
        """The level-``j+1`` nodes of ``plan``: one Cholesky row update each."""
        T, A, diagA = self.T, self.A, self.diagA
        keep_z = j + 1 < self.L - 1            # nodes of level L-1 only feed leaves, which need r2 alone
        new = {c: _Nodes(np.empty((n, j + 1), np.int64), np.empty((n, T - 1 - c, j + 1 if keep_z else 0)),
                         np.empty((n, T - 1 - c)),
                         np.empty(n), np.empty(n), np.empty(n)) for c, n in counts.items()}
        offs = dict.fromkeys(counts, 0)
        for last, c, ok, n in plan:
            nb = groups[last] if ok is None else groups[last].rows(ok)
            q = c - last - 1
            p2 = nb.r2[:, q]
            dst, o = new[c], offs[c]
            sl = slice(o, o + n)
            offs[c] = o + n
            if j:
                zdst = np.matmul(nb.Z[:, q + 1:, :], nb.Z[:, q, :, None])[:, :, 0]
                np.subtract(A[c, c + 1:], zdst, out=zdst)
            else:
                zdst = np.broadcast_to(A[c, c + 1:], (n, T - 1 - c)).copy()
            zdst /= np.sqrt(p2)[:, None]
            if keep_z:
                dst.Z[sl, :, j] = zdst
                dst.Z[sl, :, :j] = nb.Z[:, q + 1:, :]
            np.subtract(nb.r2[:, q + 1:], zdst * zdst, out=dst.r2[sl])
            dst.idx[sl, :j] = nb.idx
            dst.idx[sl, j] = c
            np.add(nb.logdet, np.log(p2), out=dst.logdet[sl])
            np.minimum(nb.minp2, p2, out=dst.minp2[sl])
            np.add(nb.tr, diagA[c], out=dst.tr[sl])
        return new

    def leaves(self, nb: _Nodes, last: int) -> None:
        """The L-subsets ``nb.idx + (c,)`` for every later index ``c``: a positive last pivot certifies one."""
        W = self.T - 1 - last
        if W <= 0 or len(nb) == 0:
            return
        p2 = nb.r2[:, :W]
        self.stats.subsets += p2.size
        bad = p2 <= 0
        if bad.any():
            bi, qi = np.nonzero(bad)
            self.settle(np.concatenate([nb.idx[bi], (last + 1 + qi)[:, None]], axis=1))
            p2 = np.where(bad, np.inf, p2)
        self.margin_candidates(nb, last, p2, bad)

    # ---- the margin -------------------------------------------------------------------------------
    def margin_candidates(self, nb: _Nodes, last: int, p2: np.ndarray, bad: np.ndarray) -> None:
        """Keep the leaves that may attain the smallest lambda_min(A_S): those whose lower bound
        ``lambda_min(A_S) >= det(A_S) ((L-1)/tr A_S)^(L-1)`` (AM-GM on the other eigenvalues) is not above
        the smallest pivot seen (``lambda_min <= every pivot``)."""
        ub = np.minimum(nb.minp2[:, None], p2)
        m = float(ub.min())
        if not math.isfinite(m):
            return
        if m < self.best_ub:
            self.best_ub = m
        L = self.L
        tr = nb.tr[:, None] + self.diagA[last + 1:][None, :]
        log_lb = nb.logdet[:, None] + np.log(p2) + self.lfac - (L - 1) * np.log(tr)
        self.min_log_lb = min(self.min_log_lb, float(log_lb.min()))
        sel = log_lb <= math.log(self.best_ub) if self.best_ub > 0 else np.zeros_like(bad)
        if sel.any() and not self.overflow:
            bi, qi = np.nonzero(sel)
            self.cand_sets.append(np.concatenate([nb.idx[bi], (last + 1 + qi)[:, None]], axis=1))
            self.cand_lb.append(np.exp(log_lb[bi, qi]))
            self.n_cand += len(bi)
            if self.n_cand > self.margin_cap:
                lbs = np.concatenate(self.cand_lb)
                keep = lbs <= self.best_ub
                sets = np.concatenate(self.cand_sets)[keep]
                self.cand_sets[:] = [sets]
                self.cand_lb[:] = [lbs[keep]]
                self.n_cand = len(sets)
                if self.n_cand > self.margin_cap:
                    self.overflow = True

    def finish_margin(self) -> None:
        """The margin of a complete level: the SVD of the surviving candidates, or a bound on overflow."""
        out = self.out
        exact_best = self.exact
        if self.cand_sets and not self.overflow:
            sets = np.concatenate(self.cand_sets)
            lbs = np.concatenate(self.cand_lb)
            sets = sets[lbs <= self.best_ub]
            if len(sets):
                sig = _sigma_min_exact(self.U, sets)
                self.stats.svds += len(sets)
                i = int(np.argmin(sig))
                if sig[i] < exact_best[0]:
                    exact_best = (float(sig[i]), tuple(int(v) for v in sets[i]))
            out.margin, out.margin_exact, out.margin_subset = exact_best[0], True, exact_best[1]
        elif self.overflow:
            # the bound must cover every leaf, also those met after the candidate list stopped growing
            lo = math.sqrt(max(0.0, self.shift + math.exp(self.min_log_lb)))
            out.margin, out.margin_exact = min(lo, exact_best[0]), False
        else:
            out.margin, out.margin_exact, out.margin_subset = exact_best[0], True, exact_best[1]
        if out.margin is not None and not math.isfinite(out.margin):
            out.margin, out.margin_exact, out.margin_subset = None, False, None


def _scan_level(U: np.ndarray, G: np.ndarray, L: int, tau: float, stats: _Stats,
                leaf_budget: int = 1 << 21, margin_cap: int = 200_000) -> _LevelOutcome:
    """Are all ``L``-subsets independent at ``tau``?  Early exit at the first dependent one
    (see :class:`_LevelScan`)."""
    if L <= 1:
        out = _LevelOutcome()
        out.complete = True
        out.margin, out.margin_exact, out.margin_subset = 1.0, True, (0,)
        stats.subsets += U.shape[0]
        return out
    return _LevelScan(U, G, L, tau, stats, leaf_budget, margin_cap).run()


def _pairs_and_coherence(U: np.ndarray, G: np.ndarray | None, tau: float,
                         stats: _Stats) -> tuple[float, tuple[int, int] | None, float]:
    """Mutual coherence ``mu = max_{i != j} |u_i . u_j|`` and the pair of smallest ``sigma_min`` among the
    near-parallel candidates (``|u_i . u_j| >= 1 - slack``), stopping at the first pair dependent at ``tau``
    (for integer input: exactly parallel; the others are independent and not candidates).
    ``G`` is the Gram matrix, or None to compute it in blocks of 2048 rows."""
    T, d = U.shape
    slack = 2 * tau * tau + 64 * math.sqrt(d) * EPS64
    mu = 0.0
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
            if stats.exact is not None:
                low = np.flatnonzero(sig <= tau)
                hit = next((q for q in low[np.argsort(sig[low], kind="stable")]
                            if stats.confirm((int(ci[q]), int(cj[q])))), None)
                sig[low[low != hit]] = np.inf          # exactly independent (or not the first exact hit)
            j_ = int(np.argmin(sig))
            if sig[j_] < best_sig:
                best_pair, best_sig = (int(ci[j_]), int(cj[j_])), float(sig[j_])
            if best_sig <= tau:
                break
        if best_sig <= tau:
            break
    return mu, best_pair, best_sig


@memory_errors
def kruskal_rank(vectors: Any, tol: float | None = None, *, max_subsets: int = 200_000_000,
                 time_limit: float | None = None, sparse: str = "omp") -> KruskalResult:
    """Exact Kruskal rank of the rows of ``vectors`` (shape ``(T, d)``) at tolerance ``tol``, with a certificate.

    Parameters
    ----------
    vectors : array-like or torch tensor, shape (T, d); rows are the vectors
    tol : tolerance on the smallest singular value of unit-normalised subsets (default: :func:`default_tol`
        of the input dtype).  Integer and bool input without ``tol`` get their exact k-rank: every subset that
        float64 calls dependent is checked in exact arithmetic (:mod:`vitheory.linalg.rational`)
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
    # integer data are exact: unless a tolerance is asked for, their dependence is decided exactly
    exact = IntegerDependence(_integer_values(vectors)) if is_integer_dtype(dtype) and tol is None else None
    stats = _Stats(None if time_limit is None else t0 + time_limit, exact)
    T, d = V.shape
    U, norms = unit_rows(V)

    def result(k, lo, hi, witness=None, wsig=None, margin=None, mexact=False, msub=None, rank=-1):
        return KruskalResult(k, int(lo), int(hi), k is not None, witness, wsig, margin, mexact, msub, tau, T, d,
                             int(rank), int(stats.subsets), int(stats.svds), time.perf_counter() - t0,
                             tuple(stats.steps) + ((exact.summary(),) if exact is not None else ()))

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

    if r < min(T, d) and exact is None:
        # sigma_{r+1}(U_S) <= sigma_{r+1}(U) <= tol for every (r+1)-subset S (interlacing)
        stats.steps.append(f"numerical rank {r} < min(T, d) = {min(T, d)}: any {r + 1} vectors are dependent")
        upper = r
    elif r < min(T, d) and _is_dependent(U, range(r + 1), tau, stats)[0]:
        stats.steps.append(f"numerical rank {r} < min(T, d) = {min(T, d)}: vectors 0..{r} are dependent")
        upper = r

    # pairs and coherence, from the Gram matrix (blocked for large T)
    avail = available_memory()
    G = U @ U.T if T <= 8192 and (avail is None or 2 * T * T * 8 <= avail) else None
    mu = 0.0
    if T >= 2 and upper >= 2:
        mu, best_pair, best_sig = _pairs_and_coherence(U, G, tau, stats)
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
        if G is None:
            check_memory(2 * T * T * 8, f"the level scan's {T} x {T} Gram matrices")
            G = U @ U.T
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


def _integer_values(vectors: Any) -> np.ndarray:
    """The integer entries of integer (or bool) input as a numpy array (rows are the vectors)."""
    if hasattr(vectors, "detach"):                      # a torch tensor
        import torch
        t = vectors.detach().cpu()
        return (t.to_dense() if t.layout != torch.strided else t).numpy()
    a = np.asarray(vectors)
    return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))


"""Exact linear dependence of integer vectors (rank over the rationals), for the exact Kruskal rank of integer
and bool input.

Integer data are exact, so their Kruskal rank has an exact answer: two integer vectors such as
``(2^62, 1)`` and ``(2^62, 2)`` are independent although the smallest singular value of their unit vectors,
1.5e-19, lies far below any floating-point tolerance.  :func:`~vitheory.linalg.exact.kruskal_rank` keeps
float64 for the search and for every *independence* verdict (``sigma_min > tau`` with ``tau >= 1e-16`` cannot
come from rounding: converting an integer to float64 moves each unit vector by at most ``sqrt(d) 2^-53``), and
asks :class:`IntegerDependence` about every subset float64 calls *dependent* (unless a tolerance is given
explicitly, which asks for dependence at that tolerance):

1. rank modulo the prime ``p = 2^31 - 1`` (numpy, int64): ``rank_p <= rank_Q``, so ``rank_p = |S|`` proves
   independence;
2. otherwise the fraction-free (Bareiss) elimination in Python integers gives ``rank_Q`` exactly.

Step 2 costs ``|S|^2 d`` big-integer operations; above :data:`EXACT_BUDGET` of them the float64 verdict stands
(and is counted, so the result can say so).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

#: the prime of the modular rank: products of two residues fit in int64
PRIME = 2_147_483_647
#: largest |S|^2 d of an exact (Bareiss) rank; larger dependent-looking subsets keep the float64 verdict
EXACT_BUDGET = 1 << 22
#: largest |S|^2 d of a modular rank (numpy work; ~0.3 s at this size)
MODULAR_BUDGET = 1 << 26


def is_integer_dtype(name: str) -> bool:
    return name.startswith(("int", "uint", "bool"))


def rank_mod_p(M: np.ndarray, p: int = PRIME) -> int:
    """Rank of the integer matrix ``M`` (entries already reduced to ``[0, p)``, int64) over ``GF(p)``."""
    M = np.array(M, dtype=np.int64)
    k, d = M.shape
    r = 0
    for c in range(d):
        if r == k:
            break
        nz = np.flatnonzero(M[r:, c])
        if not len(nz):
            continue
        piv = r + int(nz[0])
        if piv != r:
            M[[r, piv]] = M[[piv, r]]
        M[r] = (M[r] * pow(int(M[r, c]), p - 2, p)) % p
        f = M[r + 1:, c].copy()
        M[r + 1:] = (M[r + 1:] - (f[:, None] * M[r][None, :]) % p) % p
        r += 1
    return r


def rank_exact(rows: Sequence[Sequence[int]]) -> int:
    """Rank over the rationals of a matrix of Python integers (fraction-free Gaussian elimination, Bareiss 1968:
    every entry stays an integer minor of the input, so each division is exact)."""
    M = [list(r) for r in rows]
    if not M:
        return 0
    m, n = len(M), len(M[0])
    rank, prev = 0, 1
    for c in range(n):
        if rank == m:
            break
        piv = next((i for i in range(rank, m) if M[i][c] != 0), None)
        if piv is None:
            continue
        M[rank], M[piv] = M[piv], M[rank]
        pr = M[rank]
        a = pr[c]
        for i in range(rank + 1, m):
            row = M[i]
            b = row[c]
            M[i] = [(a * row[j] - b * pr[j]) // prev for j in range(n)]
        prev = a
        rank += 1
    return rank


class IntegerDependence:
    """Exact dependence of subsets of the rows of an integer array ``V`` (``(T, d)``)."""

    def __init__(self, V: np.ndarray):
        V = np.asarray(V)
        V = V.astype(np.uint64 if V.dtype == np.uint64 else np.int64)   # every integer dtype fits one of them
        self.d = V.shape[1]
        self.rows = V.tolist()                                  # Python ints: no overflow in the elimination
        self.mod = np.mod(V, PRIME).astype(np.int64)
        self.checked = 0          # subsets float64 called dependent that were decided here
        self.independent = 0      # ... of which exactly independent
        self.unchecked = 0        # ... too large: the float64 verdict stands

    def dependent(self, S: Sequence[int]) -> bool | None:
        """True / False: ``S`` is / is not linearly dependent over the rationals; None: too large to decide."""
        S = [int(i) for i in S]
        k = len(S)
        if k > self.d:
            return True
        cost = k * k * self.d
        if cost <= MODULAR_BUDGET and rank_mod_p(self.mod[S]) == k:
            self.checked += 1
            self.independent += 1
            return False
        if cost > EXACT_BUDGET:
            self.unchecked += 1
            return None
        self.checked += 1
        dep = rank_exact([self.rows[i] for i in S]) < k
        self.independent += not dep
        return dep

    def summary(self) -> str:
        s = (f"integer input: dependence decided in exact arithmetic ({self.checked} subset(s) that float64 called "
             f"dependent checked, {self.independent} of them independent)")
        if self.unchecked:
            s += f"; {self.unchecked} subset(s) too large for exact arithmetic kept the float64 verdict"
        return s

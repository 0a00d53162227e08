"""The data assumptions of Mahdavi, Liao & Thrampoulidis (ICLR 2024), checked on token matrices.

Input: an array of token matrices of shape ``(T, n, d)`` (``T`` examples, ``n`` tokens each, dimension ``d``)
and a query index ``q``.  Example ``t`` has the query vector ``e_t = tokens[t, q]`` and the context matrix
``E_t = tokens[t]`` (all ``n`` tokens, the query token included, as in the paper's ViT check where the
``[CLS]`` token is the query and the context is the full ``197 x 768`` token matrix).

* **General Position (GP)**: the query vectors have Kruskal rank ``min(T, d)`` -- every ``min(T, d)`` of them
  are linearly independent (the notebook tested ``k = d = 768`` with ``T = 1973``).
* **Assumption 1**: the query vectors have Kruskal rank at least ``n`` -- any ``n`` of them are independent.
* **Assumption 2**: every context matrix ``E_t`` has full rank ``n`` (needs ``n <= d``).

GP and Assumption 1 are tested the paper's way, by sampling ``n_subsets`` random subsets
(:func:`~vitheory.linalg.sampled.sampled_rank_check`); when there are at most ``n_subsets`` subsets all of them
are tested and the answer is exact.  Assumption 2 is tested on every example.

Verdict rules (project choices, stated in each result's ``rule``): a sampled check is satisfied when its
satisfied fraction is ``>= pass_fraction`` (default 0.99, so the paper's 0.9982 for the pretrained ViT counts as
satisfied, as the notebook's table implies); an exhaustive check and Assumption 2 need every subset / example
to have full rank.  Numerics: see :mod:`vitheory.linalg.sampled` (``mode="float64"``: unit vectors, full rank
iff ``sigma_min > tol``; ``mode="paper"``: float32 ``torch.linalg.matrix_rank`` default tolerance).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from vitheory.config import ConfigError
from vitheory.linalg.inputs import (as_vectors, check_int, check_tol, default_tol, memory_errors, scale_rows,
                                    torch_device)
from vitheory.linalg.sampled import (KruskalCurve, SampledCheck, batch_size, check_mode, collect_verdicts,
                                     decide_float64, decide_paper, default_curve_ks, paper_scale, rank_histogram,
                                     sampled_kruskal_curve, sampled_rank_check)

DEFINITIONS = {
    "general_position": "every min(T, d) query vectors are linearly independent (Kruskal rank = min(T, d))",
    "assumption_1": "every n query vectors are linearly independent (Kruskal rank >= n)",
    "assumption_2": "every context matrix E_t (n x d) has full rank n",
}


@dataclass(frozen=True)
class AssumptionCheck:
    """One column of the paper's table for one representation.

    k : subset size tested (GP: min(T, d); Assumption 1: n) or, for Assumption 2, the rank required (n)
    n_tested : subsets (GP, Assumption 1) or examples (Assumption 2) tested; n_satisfied of them full rank
    rank_hist : rank -> count over the tested subsets / examples whose rank was computed
    margin : smallest sigma_min among the full-rank ones (distance of the verdicts from the tolerance)
    verdict : True / False, or None when it cannot be tested (e.g. n > d for Assumption 2 is False, not None)
    """
    name: str
    definition: str
    k: int
    n_tested: int
    n_satisfied: int
    fraction: float
    ci_low: float
    ci_high: float
    exhaustive: bool
    rank_hist: dict
    rank_min: int | None
    rank_max: int | None
    margin: float | None
    verdict: bool | None
    rule: str
    notes: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def mark(self) -> str:
        return {True: "✓", False: "✗", None: "?"}[self.verdict]

    @property
    def rank_range(self) -> str:
        if self.rank_min is None:
            return "–"
        return str(self.rank_min) if self.rank_min == self.rank_max else f"{self.rank_min}–{self.rank_max}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rank_hist"] = {int(k): int(v) for k, v in sorted(self.rank_hist.items())}
        d["notes"] = list(self.notes)
        return d


@dataclass(frozen=True)
class AssumptionReport:
    """GP, Assumption 1 and Assumption 2 (and optionally the sampled Kruskal-rank curve) of one token array."""
    T: int
    n: int
    d: int
    query_index: int
    tol: float
    mode: str
    seed: int
    n_subsets: int
    pass_fraction: float
    general_position: AssumptionCheck
    assumption_1: AssumptionCheck
    assumption_2: AssumptionCheck
    curve: KruskalCurve | None = None
    seconds: float = 0.0

    @property
    def checks(self) -> tuple[AssumptionCheck, AssumptionCheck, AssumptionCheck]:
        return (self.general_position, self.assumption_1, self.assumption_2)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("general_position", "assumption_1",
                                                                    "assumption_2", "curve")}
        for c in self.checks:
            out[c.name] = c.to_dict()
        out["curve"] = self.curve.to_dict() if self.curve is not None else None
        return out

    def summary(self) -> str:
        """A markdown table: one row per assumption."""
        lines = [f"T = {self.T} examples, n = {self.n} tokens, d = {self.d}, query index {self.query_index}, "
                 f"mode {self.mode}" + (f", tol {self.tol:g}" if self.mode == "float64" else "") + "", "",
                 "| assumption | k | tested | full rank | fraction | 95% CI | ranks | margin | verdict |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for c in self.checks:
            ci = "exact" if c.exhaustive or c.name == "assumption_2" else f"[{c.ci_low:.4f}, {c.ci_high:.4f}]"
            mg = "–" if c.margin is None else f"{c.margin:.3g}"
            lines.append(f"| {c.name} | {c.k} | {c.n_tested} | {c.n_satisfied} | {c.fraction:.4f} | {ci} | "
                         f"{c.rank_range} | {mg} | {c.mark} |")
        if self.curve is not None:
            lines += ["", f"Sampled Kruskal-rank estimate of the query vectors: {self.curve.estimate} "
                          f"(largest k with fraction >= {self.curve.pass_fraction} on the grid; "
                          f"numerical rank {self.curve.numerical_rank})"]
        return "\n".join(lines)


def _sampled_to_check(name: str, c: SampledCheck, pass_fraction: float, notes=()) -> AssumptionCheck:
    if c.exhaustive:
        verdict = c.n_full_rank == c.n_subsets
        rule = f"all {c.n_subsets} subsets of size {c.k} tested: satisfied iff every one has full rank"
    else:
        verdict = c.fraction >= pass_fraction
        rule = f"{c.n_subsets} random subsets of size {c.k}: satisfied iff fraction >= {pass_fraction}"
    return AssumptionCheck(name, DEFINITIONS[name], c.k, c.n_subsets, c.n_full_rank, c.fraction, c.ci_low, c.ci_high,
                           c.exhaustive, dict(c.rank_hist), c.rank_min, c.rank_max, c.margin, bool(verdict), rule,
                           tuple(notes), c.seconds)


@memory_errors
def check_context_ranks(tokens: Any, tol: float | None = None, *, mode: str = "float64", spectra: bool = True,
                        device: Any = "cpu", batch_elems: int | None = None) -> AssumptionCheck:
    """Assumption 2: does every context matrix ``tokens[t]`` (``n x d``) have full rank ``n``?

    Tokens are unit-normalised in float64 and a matrix has full rank iff its smallest singular value is
    ``> tol`` (``mode="float64"``), or the float32 ``torch.linalg.matrix_rank`` default is used
    (``mode="paper"``).  ``margin`` = the smallest such singular value over the full-rank examples.
    """
    t0 = time.perf_counter()
    X, dtype = as_vectors(tokens, "tokens", ndim=3)
    return _context_ranks(X, dtype, tol, mode, spectra, device, batch_elems, t0)


def _context_ranks(X: np.ndarray, dtype: str, tol, mode, spectra, device, batch_elems, t0) -> AssumptionCheck:
    import torch
    T, n, d = X.shape
    mode = check_mode(mode)
    tau = check_tol(default_tol(dtype) if tol is None else tol)
    dev = torch_device(device)

    exponent = 0
    if mode == "paper":
        X, exponent = paper_scale(X)

    def decide(i, j):
        if mode == "float64":
            E = torch.from_numpy(scale_rows(X[i:j])).to(dev)     # (b, n, d), tokens scaled by powers of two
            nrm = E.norm(dim=2, keepdim=True)
            E = E / torch.where(nrm > 0, nrm, torch.ones_like(nrm))
            Gs = E @ E.transpose(1, 2) if n <= d else None
            return decide_float64(Gs, lambda sel: E if sel is None else E[sel], n, d, tau, True, spectra)
        E = torch.from_numpy(X[i:j]).to(dev).float().double()
        Gs = E @ E.transpose(1, 2) if n <= d else E.transpose(1, 2) @ E
        return decide_paper(Gs, lambda sel: E[sel].float(), n, d)
    full, rank, smin, n_fb = collect_verdicts(T, batch_size(dev, n * max(n, d), batch_elems), decide, dev)
    smin = np.ldexp(smin, exponent)
    n_full = int(full.sum())
    known = rank >= 0
    hist = rank_histogram(rank[known])
    have = full & np.isfinite(smin)
    notes = []
    if n > d:
        notes.append(f"n = {n} > d = {d}: an n x d matrix cannot have rank n")
    if n_fb:
        notes.append(f"{n_fb} examples decided by SVD (Gram eigenvalues within the rounding band)")
    return AssumptionCheck("assumption_2", DEFINITIONS["assumption_2"], n, T, n_full, n_full / T,
                           n_full / T, n_full / T, True, hist,
                           int(rank[known].min()) if known.any() else None,
                           int(rank[known].max()) if known.any() else None,
                           float(smin[have].min()) if have.any() and spectra else None,
                           n_full == T, f"all {T} examples tested: satisfied iff every context matrix has rank n = {n}",
                           tuple(notes), time.perf_counter() - t0)


@memory_errors
def check_assumptions(tokens: Any, query_index: int = 0, *, n_subsets: int = 5000, tol: float | None = None,
                      seed: int = 0, mode: str = "float64", pass_fraction: float = 0.99,
                      curve: bool | Sequence[int] = False, curve_subsets: int | None = None,
                      spectra: bool = True, device: Any = "cpu") -> AssumptionReport:
    """General Position, Assumption 1 and Assumption 2 of ``tokens`` (shape ``(T, n, d)``), query ``query_index``.

    n_subsets : random subsets per sampled check (the paper: 5000)
    tol : tolerance on sigma_min of unit vectors (default by input dtype; ignored in ``mode="paper"``)
    pass_fraction : a sampled check is satisfied when its fraction is >= this (project choice, 0.99)
    curve : also compute the sampled Kruskal-rank curve of the query vectors (True: the paper's grid
        ``1, 11, 21, ...`` plus ``n`` and ``min(T, d)``; or a list of subset sizes), with ``curve_subsets``
        subsets per point (default ``n_subsets``)
    spectra : compute smallest singular values (margins) of every subset; slower
    """
    t0 = time.perf_counter()
    X, dtype = as_vectors(tokens, "tokens", ndim=3)
    T, n, d = X.shape
    if isinstance(query_index, bool) or not isinstance(query_index, (int, np.integer)) \
            or not -n <= query_index < n:
        raise ConfigError(f"query_index={query_index!r} is out of range; allowed range: [{-n}, {n - 1}] "
                          f"(the token axis has n = {n} tokens)")
    qi = int(query_index) % n
    n_subsets = check_int("n_subsets", n_subsets, 1, 10_000_000)
    seed = check_int("seed", seed, 0)
    mode = check_mode(mode)
    if not isinstance(pass_fraction, (int, float)) or isinstance(pass_fraction, bool) or not 0.0 < pass_fraction <= 1.0:
        raise ConfigError(f"pass_fraction={pass_fraction!r} is out of range; allowed range: (0, 1]")
    tau = check_tol(default_tol(dtype) if tol is None else tol)
    Q = np.ascontiguousarray(X[:, qi, :])

    def sampled(name, k):
        if k > T:
            return AssumptionCheck(name, DEFINITIONS[name], k, 0, 0, 0.0, 0.0, 0.0, True, {}, None, None, None, False,
                                   f"needs at least k = {k} examples", (f"T = {T} < k = {k}: the Kruskal rank of "
                                                                        f"{T} vectors is at most {T}",))
        c = sampled_rank_check(Q, k, n_subsets, tau, seed=seed, mode=mode, ranks=True, spectra=spectra,
                               device=device)
        notes = [f"{c.n_svd_fallback} subsets decided by SVD"] if c.n_svd_fallback else []
        return _sampled_to_check(name, c, pass_fraction, notes)

    gp = sampled("general_position", min(T, d))
    a1 = sampled("assumption_1", n)
    a2 = _context_ranks(X, dtype, tau, mode, spectra, device, None, time.perf_counter())
    cv = None
    if curve is not False and curve is not None:
        kmax = min(T, d)
        ks = default_curve_ks(kmax, extra=(n,)) if curve is True else tuple(curve)
        cv = sampled_kruskal_curve(Q, ks, curve_subsets or n_subsets, tau, seed=seed + 1,
                                   pass_fraction=pass_fraction, device=device)
    return AssumptionReport(T, n, d, qi, tau if mode == "float64" else float("nan"), mode, seed, n_subsets,
                            float(pass_fraction), gp, a1, a2, cv, time.perf_counter() - t0)


def merge_context_checks(parts: Sequence[AssumptionCheck]) -> AssumptionCheck:
    """Combine Assumption-2 checks of consecutive batches of examples into one (counts add, margins take the min)."""
    if not parts:
        raise ConfigError("no Assumption-2 checks to merge")
    n_tested = sum(p.n_tested for p in parts)
    n_sat = sum(p.n_satisfied for p in parts)
    hist: dict[int, int] = {}
    for p in parts:
        for r, c in p.rank_hist.items():
            hist[int(r)] = hist.get(int(r), 0) + int(c)
    mins = [p.rank_min for p in parts if p.rank_min is not None]
    maxs = [p.rank_max for p in parts if p.rank_max is not None]
    margins = [p.margin for p in parts if p.margin is not None]
    notes = tuple(dict.fromkeys(n for p in parts for n in p.notes if not n[0].isdigit()))
    n_fb = sum(int(n.split()[0]) for p in parts for n in p.notes if n[0].isdigit())
    if n_fb:
        notes += (f"{n_fb} examples decided by SVD (Gram eigenvalues within the rounding band)",)
    k = parts[0].k
    return AssumptionCheck("assumption_2", DEFINITIONS["assumption_2"], k, n_tested, n_sat, n_sat / n_tested,
                           n_sat / n_tested, n_sat / n_tested, True, hist, min(mins) if mins else None,
                           max(maxs) if maxs else None, min(margins) if margins else None, n_sat == n_tested,
                           f"all {n_tested} examples tested: satisfied iff every context matrix has rank n = {k}",
                           notes, sum(p.seconds for p in parts))

"""Sampled rank checks: the paper's Monte-Carlo test of the Kruskal rank, and the machinery it shares with
the per-example check of Assumption 2 (batched Gram / Cholesky decisions, the batch loop).

:func:`sampled_rank_check` gives the fraction of ``s`` uniformly random ``k``-subsets of the rows that have
full rank ``k`` (with a Clopper-Pearson interval) and the distribution of their ranks;
:func:`sampled_kruskal_curve` that fraction over ``k``.  A fraction of 1.0 is *not* a certificate (the exact
k-rank is :func:`vitheory.linalg.exact.kruskal_rank`).

Speed comes from one Gram matrix of the unit vectors, batched gathers of its ``k x k`` blocks, and a batched
Cholesky of ``G_S - (tau^2 + guard) I`` (success certifies full rank); only failures get eigenvalues, and only
eigenvalues inside the rounding band ``tau^2 +- guard`` (:func:`~vitheory.linalg.inputs.gram_guard`) are
settled by the SVD of the subset itself.  ``mode="paper"`` reproduces the notebook's convention instead:
float32 vectors, no normalisation, ``torch.linalg.matrix_rank`` default tolerance
``sigma_max * max(k, d) * eps_float32``, after scaling the whole array by a power of two so that float32 can
hold it (:func:`paper_scale`).  Integer input is decided at tolerance here, like float input.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from vitheory.config import ConfigError
from vitheory.linalg.inputs import (EPS32, EPS64, GUARD_C, as_vectors, check_int, check_level, check_memory,
                                    check_tol, default_tol, gram_guard, memory_errors, torch_device, unit_rows)

MODES = ("float64", "paper")

#: paper mode: singular values within PAPER_BAND * eps_float32 * sigma_max of the threshold are decided by float32 SVD
PAPER_BAND = 32.0
#: power iterations for the lower bound on sigma_max of the Cholesky certificates of paper mode (project choice)
PAPER_POWER_ITERS = 8

#: elements of the largest tensor of one batch (project choice): 2^22 float64 = 32 MiB on CPU (fits the caches
#: of the batched factorisations), 2^27 = 1 GiB on CUDA (enough work per kernel launch)
BATCH_ELEMS_CPU = 1 << 22
BATCH_ELEMS_CUDA = 1 << 27


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r} is not allowed; choose one of {', '.join(MODES)}")
    return mode


def clopper_pearson(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided confidence interval of a binomial proportion.

    The quantiles of Beta(a, b) are ``scipy.special.betaincinv`` (what ``scipy.stats.beta.ppf`` computes; importing
    scipy.special alone costs less than half of scipy.stats, which was ~1 s of a sampled check on a busy machine)."""
    from scipy.special import betaincinv
    if n <= 0:
        return (0.0, 1.0)
    a = 1.0 - level
    lo = 0.0 if successes == 0 else float(betaincinv(successes, n - successes + 1, a / 2))
    hi = 1.0 if successes == n else float(betaincinv(successes + 1, n - successes, 1 - a / 2))
    return lo, hi


def paper_scale(V: np.ndarray) -> tuple[np.ndarray, int]:
    """``(V * 2^-E, E)`` with the largest ``|entry|`` of ``V`` in ``[0.5, 1)``: the array paper mode casts to
    float32.

    The notebook cast the vectors to float32 as they were, which overflows to inf above 3.4e38 and flushes
    entries below 1.2e-38 to (nearly) zero.  Its verdicts (``torch.linalg.matrix_rank``, tolerance relative to
    ``sigma_max``) do not change when the whole array is multiplied by a power of two, which is exact, so paper
    mode scales first and multiplies singular values back by ``2^E``: the same verdicts at every scale.  A row
    still below float32's smallest normal number (2^-126) after that scaling cannot be held in float32 at all:
    ConfigError."""
    m = float(np.max(np.abs(V))) if V.size else 0.0
    if m == 0.0:
        return V, 0
    E = int(np.frexp(m)[1])
    W = np.ldexp(V, -E)
    rows = np.max(np.abs(W), axis=-1)
    tiny = (rows > 0) & (rows < 2.0 ** -126)
    if tiny.any():
        i = np.unravel_index(int(np.argmax(tiny)), tiny.shape)
        raise ConfigError(f"mode=paper casts the vectors to float32, which cannot hold both the largest entry "
                          f"({m:.3g}) and vector {tuple(int(j) for j in i) if len(i) > 1 else int(i[0])} (largest "
                          f"entry {float(np.max(np.abs(V[i]))):.3g}): they differ by more than float32's range "
                          "(2^126); use mode=float64")
    return W, E


# --------------------------------------------------------------------------------------------------
# batched full-rank decisions
# --------------------------------------------------------------------------------------------------
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
        self.exponent = 0           # sigma_min of U = 2^-exponent * sigma_min of the input (paper mode)
        if mode == "float64":
            U, _ = unit_rows(V)
        else:  # paper: the notebook's float32 vectors, no normalisation (scaled by 2^-E, see paper_scale)
            W, self.exponent = paper_scale(V)
            U = W.astype(np.float32).astype(np.float64)
        self.U = torch.from_numpy(U).to(device)
        if self.T <= gram_limit:
            check_memory(self.T * self.T * 8, f"the {self.T} x {self.T} Gram matrix of the vectors")
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
        # factor the transposed view: G_S is symmetric up to the rounding of the Gram entries, which the guard
        # covers, and in column-major order LAPACK reads it without the transposing copy (~18 % faster here)
        _, info = torch.linalg.cholesky_ex(Gs.transpose(-2, -1))
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


def _paper_certify(Gs, k: int, d: int):
    """Verdicts of :func:`decide_paper` that two shifted Cholesky factorisations certify without eigenvalues.

    With ``c = max(k, d) eps_float32`` and ``h = PAPER_BAND eps_float32`` the notebook's threshold is
    ``thr = c sigma_max`` and the band ``thr +- h sigma_max``.  ``sigma_max^2 = lambda_max(G_S)`` lies in
    ``[lo, hi]``: ``lo`` = the larger of the largest diagonal entry and the Rayleigh quotient after
    ``PAPER_POWER_ITERS`` power iterations, ``hi`` = the largest absolute row sum (Gershgorin).  Then
    ``chol(G_S - ((c + h)^2 hi + g) I)`` succeeding certifies ``sigma_min > thr + h sigma_max`` (full rank k),
    and ``chol(G_S - ((c - h)^2 lo - g) I)`` failing certifies ``sigma_min < thr - h sigma_max`` (deficient),
    with ``g`` the rounding guard of :func:`~vitheory.linalg.inputs.gram_guard` for rows of norm up to
    ``sqrt(max diag)``.  Returns ``(full, deficient)`` boolean (b,) tensors; neither = undecided."""
    import torch
    b = Gs.shape[0]
    diag = Gs.diagonal(dim1=-2, dim2=-1)
    r2 = diag.max(-1).values
    v = torch.ones(b, k, 1, dtype=Gs.dtype, device=Gs.device)
    for _ in range(PAPER_POWER_ITERS):
        v = Gs @ v
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-300)
    lo = torch.maximum((v.transpose(1, 2) @ (Gs @ v)).flatten(), r2)
    hi = Gs.abs().sum(-1).max(-1).values
    c, h = max(k, d) * EPS32, PAPER_BAND * EPS32
    g = GUARD_C * EPS64 * (k * math.sqrt(d) * r2 + math.sqrt(k) * hi)
    eye = torch.eye(k, dtype=Gs.dtype, device=Gs.device)
    _, info = torch.linalg.cholesky_ex(Gs - ((c + h) ** 2 * hi + g)[:, None, None] * eye)
    full = info == 0
    deficient = torch.zeros_like(full)
    s_def = (c - h) ** 2 * lo - g if c > h else torch.full_like(lo, -1.0)
    sel = torch.nonzero(~full & (s_def > 0)).flatten()
    if len(sel):
        _, info2 = torch.linalg.cholesky_ex(Gs[sel] - s_def[sel][:, None, None] * eye)
        deficient[sel] = info2 != 0
    return full, deficient


def decide_paper(Gs, matrices32, k: int, d: int, want_rank: bool = True):
    """The notebook's verdicts: ``torch.linalg.matrix_rank`` of float32 matrices at its default tolerance
    ``sigma_max * max(k, d) * eps_float32``, computed from float64 Gram eigenvalues of the float32 values;
    singular values within ``PAPER_BAND * eps_float32 * sigma_max`` of the threshold are settled by calling
    ``torch.linalg.matrix_rank`` on the float32 matrix itself; outside that band the float64 value decides.
    Measured float32 SVD errors on 197 x 768 ViT features were at most 5.4 ``eps_float32 sigma_max``; the band
    (32) leaves a factor 6 of safety, and the benchmark checks the verdicts against the reference.
    With ``want_rank=False`` (and ``k <= d``) the verdicts that :func:`_paper_certify` certifies skip the
    eigenvalues (rank ``k`` or ``-2`` = deficient, sigma_min nan); only the rest get them.

    Gs : (b, k, k) float64 Gram blocks, or (b, d, d) ``M^T M`` when ``k > d``
    """
    import torch
    if not want_rank and k <= d:
        full, deficient = _paper_certify(Gs, k, d)
        rank = torch.where(full, torch.full(full.shape, k, dtype=torch.long, device=Gs.device),
                           torch.full(full.shape, -2, dtype=torch.long, device=Gs.device))
        smin = torch.full(full.shape, float("nan"), dtype=torch.float64, device=Gs.device)
        rest = torch.nonzero(~full & ~deficient).flatten()
        n_fb = 0
        if len(rest):
            f2, r2, s2, n_fb = decide_paper(Gs[rest], lambda sel: matrices32(rest[sel]), k, d)
            rank[rest], smin[rest] = r2, s2
        return rank == k, rank, smin, n_fb
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
        return decide_paper(Gs, lambda sel: prep.U[idx[sel]].float(), k, d, want_rank or spectra)
    return decide_float64(prep.gram(idx) if k <= d else None, mats, k, d, tau, want_rank, spectra)


# --------------------------------------------------------------------------------------------------
# the batch loop (sampled subsets and Assumption 2's context matrices)
# --------------------------------------------------------------------------------------------------
def batch_size(device, per_item: int, batch_elems: int | None = None) -> int:
    """Items per batch when one item needs ``per_item`` elements (``batch_elems``: the budget, default by device)."""
    budget = batch_elems or (BATCH_ELEMS_CUDA if device.type == "cuda" else BATCH_ELEMS_CPU)
    return max(1, budget // per_item)


def collect_verdicts(n: int, step: int, decide: Callable[[int, int], tuple], device
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Run ``decide(i, j)`` on the batches ``[i, j)`` of ``n`` items (``step`` per batch) and gather its
    ``(full, rank, sigma_min, n_svd)`` (the output of :func:`decide_float64` / :func:`decide_paper`) into
    ``(full (n,) bool, rank (n,) int64, sigma_min (n,) float64, n_svd)``.

    On CPU, batches run in up to 4 worker threads with single-threaded LAPACK (:func:`small_lapack_threads`;
    the gathers and factorisations release the GIL); every batch is computed alone, so the verdicts do not
    depend on the number of workers."""
    import torch
    full = np.zeros(n, dtype=bool)
    rank = np.full(n, -1, dtype=np.int64)
    smin = np.full(n, np.nan)
    n_fb = 0

    def one(i):
        with torch.no_grad():
            return i, decide(i, min(i + step, n))
    with small_lapack_threads(device) as threads:
        starts = range(0, n, step)
        workers = min(threads, 4, len(starts))
        if workers > 1:
            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(one, starts))
        else:
            results = [one(i) for i in starts]
    for i, (f, r, s_, fb) in results:
        full[i:i + step] = f.cpu().numpy()
        rank[i:i + step] = r.cpu().numpy()
        smin[i:i + step] = s_.cpu().numpy()
        n_fb += fb
    return full, rank, smin, n_fb


# --------------------------------------------------------------------------------------------------
# the sampled check
# --------------------------------------------------------------------------------------------------
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


def subsets_for(T: int, k: int, n_subsets: int, seed: int, subsets) -> tuple[np.ndarray, bool]:
    """The ``k``-subsets a sampled check tests and whether they are all of them: the given ``subsets``
    (checked), every subset when ``C(T, k) <= n_subsets``, else ``n_subsets`` random ones from ``seed``."""
    if subsets is not None:
        S = np.asarray(subsets)
        if S.ndim != 2 or S.shape[1] != k or not np.issubdtype(S.dtype, np.integer):
            raise ConfigError(f"subsets must be an integer array of shape (s, k={k}); got {S.dtype} {S.shape}")
        if S.size and (S.min() < 0 or S.max() >= T):
            raise ConfigError(f"subsets has indices outside [0, {T - 1}]")
        if k > 1 and S.size and bool((np.diff(np.sort(S, axis=1), axis=1) == 0).any()):
            raise ConfigError("subsets has a row with repeated indices; each subset needs k distinct vectors")
        return S.astype(np.int64), False
    total = math.comb(T, k)
    check_memory(min(total, n_subsets) * k * 8 * 2, f"{min(total, n_subsets)} subsets of size k={k} (int64)")
    if total <= n_subsets:
        flat = np.fromiter(itertools.chain.from_iterable(itertools.combinations(range(T), k)), dtype=np.int64,
                           count=total * k)
        return flat.reshape(total, k), True
    return random_subsets(T, k, n_subsets, seed), False


def rank_histogram(ranks: np.ndarray) -> dict[int, int]:
    """rank -> number of subsets (or matrices) with that rank."""
    return {int(v): int(c) for v, c in zip(*np.unique(ranks, return_counts=True))}


@memory_errors
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
    mode = check_mode(mode)
    k = check_int("k", k, 1, T)
    n_subsets = check_int("n_subsets", n_subsets, 1, 10_000_000)
    seed = check_int("seed", seed, 0)
    ci_level = check_level(ci_level)
    tau = check_tol(default_tol(dtype) if tol is None else tol)
    dev = torch_device(device)
    S, exhaustive = subsets_for(T, k, n_subsets, seed, subsets)
    n = len(S)
    if mode == "float64" and not ranks and not spectra:
        # every k-subset is deficient when k exceeds the numerical rank of all the vectors (interlacing):
        # sigma_k(U_S) <= sigma_k(U) <= tol
        r_all = int((np.linalg.svd(unit_rows(V)[0], compute_uv=False) > tau).sum())
        if k > r_all:
            full, rank = np.zeros(n, dtype=bool), np.full(n, -2, dtype=np.int64)
            lo, hi = (0.0, 0.0) if exhaustive else clopper_pearson(0, n, ci_level)
            return SampledCheck(k, T, d, n, 0, 0.0, lo, hi, ci_level, exhaustive, {}, None, None, 0, None, None,
                                tau, mode, seed, 0, time.perf_counter() - t0, full, rank, None)
    prep = _Prepared(V, mode, dev)
    step = batch_size(dev, k * min(k, d) if k > d else k * k, batch_elems)
    St = torch.from_numpy(S).to(dev)
    full, rank, smin, n_fb = collect_verdicts(
        n, step, lambda i, j: _batch_decide(prep, St[i:j], tau, bool(ranks), bool(spectra)), dev)
    smin = np.ldexp(smin, prep.exponent)
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


@memory_errors
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
    ks = tuple(sorted({check_int("ks", int(k_) if isinstance(k_, (int, np.integer)) else k_, 1, T) for k_ in ks}))
    if not ks:
        raise ConfigError(f"ks is empty; give at least one subset size in [1, {T}]")
    n_subsets = check_int("n_subsets", n_subsets, 1, 10_000_000)
    seed = check_int("seed", seed, 0)
    ci_level = check_level(ci_level)
    if not isinstance(pass_fraction, (int, float)) or not 0.0 < pass_fraction <= 1.0:
        raise ConfigError(f"pass_fraction={pass_fraction!r} is out of range; allowed range: (0, 1]")
    tau = check_tol(default_tol(dtype) if tol is None else tol)
    dev = torch_device(device)
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
    # one batch holds b random orderings of T indices and b Gram blocks of m x m (the orderings are drawn
    # row after row from one generator, so the batch size does not change them)
    step = batch_size(dev, max(1, m * m, 2 * T), batch_elems)
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
                            # torch, not numpy: inside small_lapack_threads this SVD is single-threaded
                            # (numpy's BLAS threads oversubscribe a busy machine: measured 865 s vs 190 s CPU)
                            sv = torch.linalg.svdvals(prep.U[torch.from_numpy(P[t, :kk]).to(dev)])
                            n_fb += 1
                            if float(sv[-1]) > tau:
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

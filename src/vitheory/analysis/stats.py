"""Small statistics shared by the experiments' analyses: linear and log-log fits with intervals, rank
correlation, a plateau (hinge) fit and an isotonic (non-decreasing) fit."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def linear_fit(x: Sequence[float], y: Sequence[float], level: float = 0.95, *, skip_constant: bool = False) -> dict:
    """Least squares y = a x + b with R^2 and a ``level`` t-interval on the slope.

    Needs >= 3 points and x not constant, else only ``n_points`` is returned; with ``skip_constant`` a constant
    y returns no fit either (its R^2 is undefined).
    """
    from scipy import stats
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or (skip_constant and np.ptp(y) == 0):
        return {"n_points": int(len(x))}
    r = stats.linregress(x, y)
    t = stats.t.ppf(0.5 + level / 2, len(x) - 2)
    return {"n_points": int(len(x)), "slope": float(r.slope), "intercept": float(r.intercept),
            "slope_lo": float(r.slope - t * r.stderr), "slope_hi": float(r.slope + t * r.stderr),
            "r2": float(r.rvalue ** 2)}


def loglog_fit(x: Sequence[float], y: Sequence[float], level: float = 0.95) -> dict:
    """Least-squares slope of log y on log x with a ``level`` t-interval (needs >= 3 points).

    When log x or log y is constant the fit is ``degenerate`` (slope 0, no interval)."""
    from scipy import stats
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    out = {"n_points": int(len(x))}
    if len(x) < 3:
        return out
    if np.ptp(np.log(y)) == 0 or np.ptp(np.log(x)) == 0:
        out.update(slope=0.0, slope_lo=float("nan"), slope_hi=float("nan"), loglog_r2=float("nan"), degenerate=True)
        return out
    r = stats.linregress(np.log(x), np.log(y))
    t = stats.t.ppf(0.5 + level / 2, len(x) - 2)
    out.update(slope=float(r.slope), slope_lo=float(r.slope - t * r.stderr), slope_hi=float(r.slope + t * r.stderr),
               loglog_r2=float(r.rvalue ** 2))
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho (None with fewer than 3 points or when undefined)."""
    from scipy import stats
    if len(x) < 3 or np.ptp(np.asarray(x, float)) == 0 or np.ptp(np.asarray(y, float)) == 0:
        return None                    # a constant input: rho is undefined (and scipy would warn)
    rho = stats.spearmanr(x, y).statistic
    # rounded so that a rank correlation that is exactly a threshold (e.g. 0.9 = 1 - 6*2/120) compares as such
    return None if rho is None or not np.isfinite(rho) else round(float(rho), 10)


def hinge_fit(x: Sequence[float], y: Sequence[float]) -> dict:
    """Piecewise-linear fit with a plateau: y = a + b * min(x, kappa), kappa scanned over a fine grid in
    [second smallest x, max x] (so at least two points lie on the rising part; kappa = max x is a straight
    line).  Returns kappa, a, b and the residual sum of squares (plus the straight-line SSE)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    xs = np.unique(x)
    if len(xs) < 3:
        return {}
    best = None
    for kappa in np.linspace(xs[1], xs[-1], 401):
        X = np.stack([np.ones_like(x), np.minimum(x, kappa)], 1)
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        sse = float(((X @ coef - y) ** 2).sum())
        if best is None or sse < best["sse"] - 1e-12:
            best = {"kappa": float(kappa), "a": float(coef[0]), "b": float(coef[1]), "sse": sse}
    X = np.stack([np.ones_like(x), x], 1)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    best["sse_line"] = float(((X @ coef - y) ** 2).sum())
    return best


def isotonic_increasing(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares non-decreasing fit (pool adjacent violators)."""
    blocks = [[float(v), float(wt), 1] for v, wt in zip(y, w)]
    i = 0
    while i < len(blocks) - 1:
        if blocks[i][0] > blocks[i + 1][0]:
            a, b = blocks[i], blocks[i + 1]
            wt = a[1] + b[1]
            blocks[i] = [(a[0] * a[1] + b[0] * b[1]) / wt, wt, a[2] + b[2]]
            del blocks[i + 1]
            i = max(i - 1, 0)
        else:
            i += 1
    return np.concatenate([[v] * n for v, _, n in blocks])

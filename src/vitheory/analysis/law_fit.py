"""Which power law describes a phase boundary: N_min = a x^p + b for p in {1, 2, 4}, x = alpha_*^-1.

Theorem 1 of Li et al. (ICLR 2023) says the ViT's N_min is *linear in alpha_*^-2* (p = 2, any intercept b; the
paper's own Figure 1a boundary has b < 0), Proposition 1 that a CNN's is linear in alpha_*^-4 (p = 4).  A
log-log slope is a different statement (a line with an intercept has no constant log-log slope), so the laws are
compared as models of the same boundary points (x_i, N_i), each fitted by least squares with two parameters:

* AIC = n ln(RSS/n) + 2k and BIC = n ln(RSS/n) + k ln n (k = 3: a, b and the residual variance; equal for every
  law, so the comparison is that of RSS, and the AIC weights exp(-dAIC/2) / sum say how strongly);
* leave-one-out cross-validated RMSE: each point predicted by the fit to the others.

The preferred law is the one with the lowest AIC; it is *distinguished* from another when its AIC is lower by
more than ``min_delta`` (default 2, the usual "substantial support" threshold) -- else the grid cannot tell the
two apart.  Right-censored points (N_min beyond the grid) are not used; the caller says how many there were.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

POWERS = (1, 2, 4)


def fit_power(x: np.ndarray, N: np.ndarray, p: float) -> dict:
    """Least squares N = a x^p + b with AIC, BIC and leave-one-out RMSE (needs >= 3 points, x not constant)."""
    X = np.stack([x ** p, np.ones_like(x)], 1)
    coef, *_ = np.linalg.lstsq(X, N, rcond=None)
    resid = N - X @ coef
    n = len(x)
    rss = float(resid @ resid)
    # RSS = 0 (an exact fit) would give -inf: floor it at a tiny fraction of the data's scale
    rss_eff = max(rss, 1e-12 * float(N @ N) + 1e-300)
    k = 3
    loo = []
    for i in range(n):
        keep = np.arange(n) != i
        c, *_ = np.linalg.lstsq(X[keep], N[keep], rcond=None)
        loo.append(float(N[i] - X[i] @ c))
    ss_tot = float(((N - N.mean()) ** 2).sum())
    return {"p": p, "a": float(coef[0]), "b": float(coef[1]), "rss": rss,
            "r2": float(1 - rss / ss_tot) if ss_tot > 0 else float("nan"),
            "aic": float(n * np.log(rss_eff / n) + 2 * k), "bic": float(n * np.log(rss_eff / n) + k * np.log(n)),
            "loo_rmse": float(np.sqrt(np.mean(np.square(loo))))}


def compare_laws(inv_alpha: Sequence[float], N_min: Sequence[float], powers: Sequence[float] = POWERS,
                 min_delta: float = 2.0) -> dict:
    """Fit N_min = a alpha_*^-p + b for each p and compare them (see the module doc).

    Returns ``{"n_points", "fits": [per p], "best_aic", "best_bic", "best_loo", "delta_aic": {p: AIC_p - AIC_min},
    "weights": {p: Akaike weight}, "distinguished": bool}`` or only ``n_points`` with fewer than 3 points.
    ``distinguished``: the best-AIC law beats every other by more than ``min_delta``.
    """
    x = np.asarray(inv_alpha, float)
    N = np.asarray(N_min, float)
    ok = np.isfinite(x) & np.isfinite(N)
    x, N = x[ok], N[ok]
    out: dict = {"n_points": int(len(x))}
    if len(x) < 3 or np.ptp(x) == 0:
        return out
    fits = [fit_power(x, N, p) for p in powers]
    aic = np.array([f["aic"] for f in fits])
    d = aic - aic.min()
    w = np.exp(-d / 2)
    w /= w.sum()
    best = int(np.argmin(aic))
    out.update(fits=fits, best_aic=fits[best]["p"], best_bic=fits[int(np.argmin([f["bic"] for f in fits]))]["p"],
               best_loo=fits[int(np.argmin([f["loo_rmse"] for f in fits]))]["p"],
               delta_aic={str(f["p"]): float(v) for f, v in zip(fits, d)},
               weights={str(f["p"]): float(v) for f, v in zip(fits, w)},
               distinguished=bool(np.all(np.delete(d, best) > min_delta)),
               constant=bool(np.ptp(N) == 0))
    return out


def law_verdict(cmp: dict, predicted: float, min_delta: float = 2.0) -> tuple[bool | None, str]:
    """Verdict on "N_min is linear in alpha_*^-predicted" from :func:`compare_laws`, with the rule in words.

    Supported (True): the predicted law has the lowest AIC and beats every alternative by more than
    ``min_delta`` and its slope a is positive.  Not supported (False): another law beats it by more than
    ``min_delta``, or its slope is <= 0.  Inconclusive (None): fewer than 3 boundary points, a constant boundary,
    or laws within ``min_delta`` of each other.
    """
    rule = (f"rule: supported if N_min = a alpha_*^-{predicted:g} + b (a > 0) has the lowest AIC by more than "
            f"{min_delta:g} against every alternative; not supported if an alternative's AIC is lower by more than "
            f"{min_delta:g} or a <= 0; else inconclusive.")
    if "fits" not in cmp:
        return None, f"only {cmp['n_points']} boundary point(s); at least 3 are needed. " + rule
    if cmp.get("constant"):
        return None, "N_min is the same at every alpha_*: the grid does not resolve the boundary. " + rule
    pred = next(f for f in cmp["fits"] if f["p"] == predicted)
    d = cmp["delta_aic"]
    others = [float(v) - d[str(predicted)] for k, v in d.items() if k != str(predicted)]
    text = summary(cmp) + " " + rule
    if pred["a"] <= 0:
        return False, text
    if min(others) > min_delta:
        return True, text
    if min(others) < -min_delta:
        return False, text
    return None, text


def summary(cmp: dict) -> str:
    """One line per law: the fit, AIC/BIC, leave-one-out RMSE, Akaike weight."""
    if "fits" not in cmp:
        return f"{cmp['n_points']} point(s): no fit."
    parts = [f"p={f['p']:g}: N = {f['a']:.3g} x^{f['p']:g} {'+' if f['b'] >= 0 else '-'} {abs(f['b']):.3g} "
             f"(R^2 {f['r2']:.3f}, AIC {f['aic']:.1f}, BIC {f['bic']:.1f}, LOO RMSE {f['loo_rmse']:.1f}, "
             f"weight {cmp['weights'][str(f['p'])]:.2f})" for f in cmp["fits"]]
    return (f"over {cmp['n_points']} alpha_* values, x = alpha_*^-1: " + "; ".join(parts) +
            f". Lowest AIC: p={cmp['best_aic']:g}, BIC: p={cmp['best_bic']:g}, LOO: p={cmp['best_loo']:g}.")


# The paper's own Figure 1a boundary (spec ../shared/papers/shallow_vit.md section 4.1: smallest N with grey >= 0.95
# per column alpha_*^-2 = 4 ... 14) and Figure 1b (section 4.2: alpha_*^-4 = 120 ... 190; 200 censored).
PAPER_FIG1A = {"inv_alpha2": tuple(range(4, 15)), "N_min": (40, 80, 120, 160, 160, 200, 240, 280, 320, 320, 400)}
PAPER_FIG1B = {"inv_alpha4": tuple(range(120, 200, 10)), "N_min": (240, 240, 320, 400, 400, 560, 560, 720)}


def paper_comparison(figure: str = "1a") -> dict:
    """:func:`compare_laws` on the paper's own boundary (read off its figure)."""
    if figure == "1a":
        x = np.sqrt(PAPER_FIG1A["inv_alpha2"])
        return compare_laws(x, PAPER_FIG1A["N_min"])
    x = np.asarray(PAPER_FIG1B["inv_alpha4"], float) ** 0.25
    return compare_laws(x, PAPER_FIG1B["N_min"])

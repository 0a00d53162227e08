"""Figure 2c of Mahdavi et al. (ICLR 2024): memorization capacity against the head dimension d_h (claim C9).

At fixed d, H and n the capacity M(d_h) = max_T acc x T is measured over a grid of d_h (see
:mod:`vitheory.experiments._memorization`).  Theorem 1 (Omega(H min(n, d_h))) predicts a gain from d_h
only while d_h <= n.  For a shared context this is also an exact expressivity fact: the query-row scores are
x_0 A_h with A_h = W_Q^h (X_c W_K^h)^T, a d x n matrix of rank <= min(d_h, n), and every such matrix is
reachable once d_h >= n -- so d_h > n cannot add anything.

Verdict rules (per context type; thresholds are the proposed (../shared/papers/mha_memorization.md, section 6) ones, knobs here):

* C9-increase: over d_h <= n the seed-mean capacity rises: Spearman rho(d_h, M) >= 0.9 (needs 3 points).
* C9-plateau: beyond n it is flat: |M(d_h,max) - M(first d_h > n)| <= ``plateau_tol`` (5 %) x M(largest
  d_h <= n).
* C9-knee: a piecewise-linear fit M = a + b min(d_h, kappa) puts the knee kappa in
  [``knee_lo`` n, ``knee_hi`` n] = [0.75 n, 1.25 n] (the paper's [25, 40] for n = 32, rounded).

Censored capacities (largest T of the grid fitted at 100 %) make every claim of that context inconclusive.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from vitheory.analysis.stats import hinge_fit, spearman
from vitheory.config import check_range, knob
from vitheory.experiments import _memorization as C
from vitheory.experiments.base import Analysis, Claim


@dataclass(frozen=True)
class Config(C.MemConfig):
    d: int = knob(32, "token dimension d (= d_model); the paper uses 64. 32 (with n = 12) puts several d_h on "
                  "both sides of n at a 2-core cost (issue 12)", project_choice=True)
    contexts: tuple[str, ...] = knob(("shared",), "context types to run (the paper's d_h sweep: shared only; the "
                                     "plateau at d_h = n is a rank fact of the shared context)")
    d_heads: tuple[int, ...] = knob((3, 6, 9, 12, 16, 24, 32), "grid of head dimensions d_h (4 values <= n, 3 above)")
    H: int = knob(4, "number of heads")
    n: int = knob(12, "context size n (< d)")
    seeds: int = knob(3, "seeds per (d_h, T)")
    T_shared: tuple[int, ...] = knob((100, 150, 200, 300, 400, 600), "grid of T, shared context", project_choice=True)
    T_random: tuple[int, ...] = knob((200, 300, 400, 600, 800, 1200), "grid of T, random contexts", project_choice=True)
    min_train_steps: int = knob(3_000, "minimum steps per run (the paper: 300k)", project_choice=True)
    max_train_steps: int = knob(0, "cap on the steps per run; 0 = no cap")
    rho_min: float = knob(0.9, "Spearman rho needed over d_h <= n (proposed)", project_choice=True)
    plateau_tol: float = knob(0.05, "largest relative change allowed beyond n (proposed)", project_choice=True)
    knee_lo: float = knob(0.75, "knee must lie in [knee_lo n, knee_hi n] (proposed)", project_choice=True)
    knee_hi: float = knob(1.25, "see knee_lo", project_choice=True)

    def validate(self) -> None:
        super().validate()
        C.check_d_head("d_heads", self.d_heads)
        check_range("H", self.H, 1, 4096)
        C.check_n("n", self.n, self.d)
        check_range("rho_min", self.rho_min, -1.0, 1.0)
        check_range("plateau_tol", self.plateau_tol, 0.0, 10.0)
        check_range("knee_lo", self.knee_lo, 0.0, 10.0)
        check_range("knee_hi", self.knee_hi, self.knee_lo, 10.0)


def trials(cfg: Config) -> list[dict]:
    return C.make_trials(cfg, [{"H": cfg.H, "n": cfg.n, "d_head": dh} for dh in sorted(set(cfg.d_heads))])


def _claims(cfg: Config, context: str, tab: pd.DataFrame) -> tuple[list[Claim], dict]:
    n = cfg.n
    caps = ", ".join(f"d_h={int(r.d_head)}: {C.fmt_pm(r.M_mean, r.M_std)}" for r in tab.itertuples())
    censored = tab[tab["censored"]]
    cens_note = (f" INCONCLUSIVE: the largest T was fitted at 100 % for d_h = "
                 f"{', '.join(str(int(v)) for v in censored['d_head'])} (capacities are lower bounds)."
                 if len(censored) else "")
    below = tab[tab["d_head"] <= n]
    above = tab[tab["d_head"] > n]
    out, nums = [], {"capacity": {int(r.d_head): float(r.M_mean) for r in tab.itertuples()}}

    rho = spearman(below["d_head"], below["M_mean"])
    stmt = f"{context} context: capacity increases with d_h while d_h <= n={n} (Spearman rho >= {cfg.rho_min:g})"
    if rho is None:
        out.append(Claim(f"C9-increase-{context}", stmt, None, f"{len(below)} d_h value(s) <= n; need 3. {caps}"))
    else:
        nums["rho_below_n"] = rho
        out.append(Claim(f"C9-increase-{context}", stmt, None if len(censored) else bool(rho >= cfg.rho_min),
                         f"{caps}. Over d_h <= {n}: Spearman rho = {rho:.3f}.{cens_note}"))

    stmt = (f"{context} context: no gain beyond d_h = n: |M(d_h max) - M(first d_h > n)| <= "
            f"{cfg.plateau_tol:.0%} of M(d_h = n)")
    if len(above) < 2 or len(below) == 0:
        out.append(Claim(f"C9-plateau-{context}", stmt, None,
                         f"needs >= 2 values of d_h above n and one at or below n; got {len(above)} and {len(below)}"))
    else:
        ref = below.iloc[-1]
        first, last = above.iloc[0], above.iloc[-1]
        rel = abs(last.M_mean - first.M_mean) / ref.M_mean if ref.M_mean > 0 else float("inf")
        nums["plateau_rel_change"] = rel
        spread = (above["M_mean"].max() - above["M_mean"].min()) / ref.M_mean if ref.M_mean > 0 else float("inf")
        # standard error of the change from the seed spread: says whether the seeds resolve the tolerance
        se = float(np.sqrt(last.M_std ** 2 / last.seeds + first.M_std ** 2 / first.seeds))
        rel_se = se / ref.M_mean if ref.M_mean > 0 else float("inf")
        nums["plateau_rel_se"] = rel_se
        resolved = "resolves" if 2 * rel_se <= cfg.plateau_tol else "does NOT resolve"
        out.append(Claim(f"C9-plateau-{context}", stmt, None if len(censored) else bool(rel <= cfg.plateau_tol),
                         f"M(d_h={int(last.d_head)}) = {last.M_mean:.1f}, M(d_h={int(first.d_head)}) = "
                         f"{first.M_mean:.1f}, M(d_h={int(ref.d_head)}) = {ref.M_mean:.1f}: relative change "
                         f"{rel:.1%} (spread over all d_h > n: {spread:.1%}); standard error of the change over "
                         f"seeds {rel_se:.1%}: the seed spread {resolved} the {cfg.plateau_tol:.0%} tolerance "
                         f"(2 SE <= tolerance).{cens_note}"))

    fit = hinge_fit(tab["d_head"], tab["M_mean"])
    lo, hi = cfg.knee_lo * n, cfg.knee_hi * n
    stmt = f"{context} context: a piecewise-linear fit puts the knee of M(d_h) near n (in [{lo:g}, {hi:g}])"
    if not fit:
        out.append(Claim(f"C9-knee-{context}", stmt, None, "fewer than 3 values of d_h"))
    else:
        nums["hinge"] = fit
        out.append(Claim(f"C9-knee-{context}", stmt, None if len(censored) else bool(lo <= fit["kappa"] <= hi),
                         f"M ≈ {fit['a']:.1f} + {fit['b']:.1f}·min(d_h, {fit['kappa']:.2f}); SSE {fit['sse']:.4g} "
                         f"vs {fit['sse_line']:.4g} for a straight line.{cens_note}"))
    return out, nums


def analyze(cfg: Config, df: pd.DataFrame) -> Analysis:
    a = Analysis()
    a.claims.append(C.assumptions_claim(df))
    if cfg.labels == "regression":
        claims, tab = C.regression_claims(df, "d_head", "d_h")
        a.claims += claims
        a.tables["training MSE per (context, d_h, T)"] = tab
        return a
    cap = C.capacity_table(df, "d_head")
    for context in [c for c in cfg.contexts if (cap["context"] == c).any()]:
        claims, nums = _claims(cfg, context, cap[cap["context"] == context])
        a.claims += claims
        a.numbers[context] = nums
    show = cap.copy()
    show["M (mean±std)"] = [C.fmt_pm(m, s) for m, s in zip(show["M_mean"], show["M_std"])]
    a.tables["capacity M = max_T acc·T per (context, d_h)"] = show[["context", "d_head", "M (mean±std)", "seeds",
                                                                     "T_full_mean", "M_above_chance", "censored"]]
    a.notes.append(f"Scale: d={cfg.d}, H={cfg.H}, n={cfg.n}, lr={cfg.lr:g}, min_train_steps={cfg.min_train_steps}, "
                   f"seeds={cfg.seeds}.")
    return a


def plot(cfg: Config, df: pd.DataFrame, analysis: Analysis, fig_dir: str) -> list[str]:
    fits = {}
    for context, num in analysis.numbers.items():
        h = num.get("hinge")
        if h:
            fits[context] = (lambda a, b, k: (lambda x: a + b * np.minimum(x, k)))(h["a"], h["b"], h["kappa"])
    return C.plot_capacity(cfg, df, "d_head", "head dimension d_h", fig_dir, "memorization_head_dim", fits=fits,
                           vline={"x": cfg.n, "label": f"d_h = n = {cfg.n}"})


EXPERIMENT = C.memorization_experiment(
    "memorization-head-dim", "Figure 2c (capacity against d_h), claim C9",
    "at fixed d, H and n, a larger head dimension d_h increases memorization only while d_h <= n",
    Config, trials, analyze, plot,
    smoke={"n": 3, "d_heads": (1, 2, 3, 5, 8), "H": 2, "contexts": ("shared", "random")},
    paper={"n": 32, "H": 30, "d_heads": (10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 64), "contexts": ("shared",),
           "T_shared": (10_000, 15_000, 20_000), "T_random": (10_000, 15_000, 20_000), "min_train_steps": 300_000},
    description="Per (context, d_h): models trained on every T of the grid and every seed; capacity "
                "M = max_T acc·T on the training set.")

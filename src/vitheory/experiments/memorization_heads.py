"""Figure 2a of Mahdavi et al. (ICLR 2024): memorization capacity against the number of heads H (claim C7).

At fixed d, n and d_h, models with H heads are trained on random-label data sets of size T over a grid, and the
capacity M(H) = max_T acc x T is measured (see :mod:`vitheory.experiments._memorization`).  Theorem 1
gives a lower bound Omega(H n): at fixed d, memorization grows linearly in H.

Verdict rule (claim C7, per context type): a least-squares line M = a H + b through the seed-mean capacities
has a 95 % t-interval on the slope a entirely above 0 **and** R^2 >= ``r2_min`` (0.95, the proposed (../shared/papers/mha_memorization.md, section 6)
threshold).  Inconclusive when fewer than 3 H values were measured or a capacity is censored (the largest T of
the grid was fitted at 100 %, so M is only a lower bound).  M(H_max)/M(H_min) is reported beside the ratio
H_max/H_min that exact proportionality would give.  With ``labels=regression`` the claim is C10 instead: the
training MSE at every T decreases with H.

Scales: ``default`` (2 CPU cores, d=16, n=8, H in {1,2,4,6,8}, T up to 1600 shared / 3200 random, 2000
steps (the smallest budget measured to decide C7, docs/benchmarks.md) at lr 1e-2) tests the same law on a grid calibrated so that the capacities fall inside the T grids; ``paper`` is
the official grid (d=64, n=32, H in {1,5,...,60}, T grids of reproduce.sh, lr 1e-3, >= 50k steps) for a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from vitheory.analysis.stats import linear_fit
from vitheory.config import check_range, knob
from vitheory.experiments import _memorization as C
from vitheory.experiments.base import Analysis, Claim
from vitheory.models.mha import attention_param_count


@dataclass(frozen=True)
class Config(C.MemConfig):
    heads: tuple[int, ...] = knob((1, 2, 4, 6, 8), "grid of head counts H")
    n: int = knob(8, "context size n (< d)")
    d_head: int | None = knob(None, "head (key/query) dimension d_h; None = d")
    r2_min: float = knob(0.95, "R^2 a linear fit must reach for claim C7 (proposed threshold)", project_choice=True)

    def validate(self) -> None:
        super().validate()
        C.check_heads_n_d_head(self)
        check_range("r2_min", self.r2_min, 0.0, 1.0)


def trials(cfg: Config) -> list[dict]:
    dh = cfg.d if cfg.d_head is None else cfg.d_head
    return C.make_trials(cfg, [{"H": H, "n": cfg.n, "d_head": dh} for H in sorted(set(cfg.heads))])


def analyze(cfg: Config, df: pd.DataFrame) -> Analysis:
    a = Analysis()
    a.claims.append(C.assumptions_claim(df))
    dh = cfg.d if cfg.d_head is None else cfg.d_head
    params = pd.DataFrame({"H": sorted(set(cfg.heads)),
                           "attention_params": [attention_param_count(H, cfg.d, dh, cfg.d_v)
                                                for H in sorted(set(cfg.heads))]})
    if cfg.labels == "regression":
        claims, tab = C.regression_claims(df, "H", "H")
        a.claims += claims
        a.tables["training MSE per (context, H, T)"] = tab
        a.tables["attention parameters H(2 d d_h + 2 d d_v) (claim C12)"] = params
        return a
    cap = C.capacity_table(df, "H")
    for context in [c for c in cfg.contexts if (cap["context"] == c).any()]:
        tab = cap[cap["context"] == context]
        fit = linear_fit(tab["H"], tab["M_mean"])
        per_seed = C.capacity_per_seed(df[df["context"] == context], "H")
        fit_all = linear_fit(per_seed["H"], per_seed["M"])
        stmt = (f"{context} context: memorization capacity grows linearly in H "
                f"(slope 95% CI > 0 and R² >= {cfg.r2_min:g})")
        caps = ", ".join(f"H={int(r.H)}: {C.fmt_pm(r.M_mean, r.M_std)}" for r in tab.itertuples())
        if "slope" not in fit:
            a.claims.append(Claim(f"C7-{context}", stmt, None, f"{len(tab)} H value(s) measured; a fit needs 3. {caps}"))
            continue
        hmin, hmax = tab.iloc[0], tab.iloc[-1]
        ratio = hmax.M_mean / hmin.M_mean if hmin.M_mean > 0 else float("inf")
        monotone = bool(np.all(np.diff(tab["M_mean"].to_numpy()) > 0))
        ev = (f"M per H (mean±std over {int(tab['seeds'].min())} seeds): {caps}. Fit M = {fit['slope']:.1f}·H "
              f"{fit['intercept']:+.1f}, R² = {fit['r2']:.3f}, slope 95% CI [{fit['slope_lo']:.1f}, "
              f"{fit['slope_hi']:.1f}]; M(H={int(hmax.H)})/M(H={int(hmin.H)}) = {ratio:.2f} "
              f"(proportional: {hmax.H / hmin.H:.2f}); strictly increasing: {'yes' if monotone else 'no'}")
        censored = tab[tab["censored"]]
        if len(censored):
            sup = None
            ev += (f". INCONCLUSIVE: the largest T of the grid was fitted at 100 % for H = "
                   f"{', '.join(str(int(h)) for h in censored['H'])}, so those capacities are only lower bounds")
        else:
            sup = bool(fit["slope_lo"] > 0 and fit["r2"] >= cfg.r2_min)
        a.claims.append(Claim(f"C7-{context}", stmt, sup, ev))
        a.numbers[context] = {"fit": fit, "fit_all_seeds": fit_all, "ratio_max_min": ratio,
                              "capacity": {int(r.H): float(r.M_mean) for r in tab.itertuples()}}
    show = cap.copy()
    show["M (mean±std)"] = [C.fmt_pm(m, s) for m, s in zip(show["M_mean"], show["M_std"])]
    a.tables["capacity M = max_T acc·T per (context, H)"] = show[["context", "H", "M (mean±std)", "seeds",
                                                                   "T_full_mean", "M_above_chance", "censored"]]
    a.tables["attention parameters H(2 d d_h + 2 d d_v) (claim C12)"] = params
    a.notes.append("M is the paper's quantity (max over the T grid of training accuracy × T, best-loss "
                   "evaluation). M_above_chance removes the examples a model would get right by guessing the rest "
                   "uniformly; T_full_mean is the largest T fitted at 100 % (mean over seeds).")
    a.notes.append(f"Scale: d={cfg.d}, n={cfg.n}, d_h={dh}, d_v={cfg.d_v}, lr={cfg.lr:g}, "
                   f"min_train_steps={cfg.min_train_steps}, seeds={cfg.seeds}. The capacity measured is what "
                   "this training budget reaches, a lower estimate of the model's capacity.")
    return a


def plot(cfg: Config, df: pd.DataFrame, analysis: Analysis, fig_dir: str) -> list[str]:
    fits = {}
    for context, num in analysis.numbers.items():
        f = num.get("fit", {})
        if "slope" in f:
            fits[context] = (lambda s, b: (lambda x: s * x + b))(f["slope"], f["intercept"])
    return C.plot_capacity(cfg, df, "H", "heads H", fig_dir, "memorization_heads", fits=fits)


EXPERIMENT = C.memorization_experiment(
    "memorization-heads", "Figure 2a (capacity against H), claims C7, C10, C12",
    "at fixed d and n, the memorization capacity of one attention layer grows linearly in the number of heads H",
    Config, trials, analyze, plot,
    smoke={"n": 3, "heads": (1, 2, 3)},
    paper={"n": 32, "heads": (1, 5, 10, 20, 30, 40, 50, 60), "T_shared": (10_000, 20_000, 30_000, 40_000),
           "T_random": (30_000, 50_000, 70_000, 90_000, 110_000, 130_000)},
    description="Per (context, H): models trained on every T of the grid and every seed; capacity "
                "M = max_T acc·T on the training set (the reference's best-loss checkpoint).")

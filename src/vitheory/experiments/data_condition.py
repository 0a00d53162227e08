"""Theorem 1's data condition of Li et al. (ICLR 2023): alpha_* >= alpha_# / c with c in (0, 1/(2e)) (claim S7
of ../shared/papers/shallow_vit.md, sections 3.1 and 8).

At a fixed fraction alpha_* of label-relevant tokens the fraction alpha_# of confusion tokens (tokens of the
opposite class's pattern) is swept.  For each alpha_# the success rate is measured over a grid of N, giving
N_min(alpha_#) (smallest N whose success rate reaches ``success_rate``).  The theory guarantees zero
generalisation error only where alpha_# <= c alpha_* < alpha_* / (2e) ~ 0.184 alpha_*; it says nothing beyond.
Two claims follow, both judged from the stored trials:

* S7-confusion-hurts: success degrades as alpha_# grows (mean success rate over the N grid falls: Spearman
  rho(alpha_#, mean success) <= -0.7 and the largest alpha_# below the smallest by >= 0.05).
* S7-guaranteed-region: every alpha_# of the grid inside the theory's region (alpha_# <= alpha_* / (2e)) reaches
  the success threshold within the N grid.  Undecided when the grid has no alpha_# in the region.

The calibration (model, data, training) is sample-complexity's (attention learns: ``qk_reference=query``,
logistic loss, epoch step budget; see ``experiments/sample_complexity.py``), so N_min here is comparable with
Figure 1a's at the same alpha_*.  A floor check (oracle vote, mean pooling on ``floor_samples`` fresh samples) runs
first at the smallest and largest alpha_#: a non-zero oracle floor is a Bayes limit, not a sample-complexity one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from vitheory.analysis.boundary import n_min_table
from vitheory.analysis.figures import save_figure
from vitheory.analysis.stats import spearman
from vitheory.config import check_all_in_range, knob
from vitheory.experiments import _shallow as S
from vitheory.experiments.base import Analysis, Claim
from vitheory.experiments.sample_complexity import Calibration

C_MAX = 1 / (2 * math.e)          # Theorem 1: c < 1/(2e)


@dataclass(frozen=True)
class Config(Calibration):
    alpha_star: float = knob(1 / 3, "fraction alpha_* of label-relevant tokens, held fixed (alpha_*^-2 = 9)")
    alpha_conf_grid: tuple[float, ...] = knob((0.0, 0.03, 0.06, 0.1, 0.15, 0.2, 0.25),
                                              "fractions alpha_# of confusion tokens compared")
    N_grid: tuple[int, ...] = knob((8, 16, 32, 64, 128), "grid of N")

    def validate(self) -> None:
        super().validate()
        check_all_in_range("alpha_conf_grid", self.alpha_conf_grid, 0.0, 1.0)
        check_all_in_range("N_grid", self.N_grid, 1, 10_000_000)
        for a in self.alpha_conf_grid:
            S.check_alphas(self.alpha_star, a)


def trials(cfg: Config) -> list[dict]:
    grid = sorted(set(float(a) for a in cfg.alpha_conf_grid))
    ends = [grid[0], grid[-1]] if len(grid) > 1 else grid
    floor = S.floor_trials(cfg, [{"alpha_star": cfg.alpha_star, "alpha_conf": a} for a in ends])
    return floor + [{"model": "vit", "alpha_star": cfg.alpha_star, "alpha_conf": a, "N": N, "seed": s}
                    for a in cfg.alpha_conf_grid for N in cfg.N_grid for s in range(cfg.seeds)]


def _table(cfg: Config, vit: pd.DataFrame) -> pd.DataFrame:
    tab = n_min_table(vit, "alpha_conf", cfg.success_rate)
    rates = vit.pivot_table(index="alpha_conf", columns="N", values="success", aggfunc="mean")
    tab["mean success"] = rates.mean(axis=1).reindex(tab["alpha_conf"]).to_numpy()
    S.add_attention_columns(tab, vit, "alpha_conf")
    tab["inside theory (alpha_# <= alpha_*/(2e))"] = tab["alpha_conf"] <= cfg.alpha_star * C_MAX + 1e-12
    return tab.merge(rates.add_prefix("success@N=").reset_index(), on="alpha_conf")


def analyze(cfg: Config, df: pd.DataFrame) -> Analysis:
    a = Analysis()
    S.add_floor_report(a, df, by="alpha_conf")
    vit = df[df["model"] == "vit"]
    tab = _table(cfg, vit)
    a.tables[f"N_min and success against alpha_# (alpha_* = {cfg.alpha_star:.4g})"] = tab
    x, y = tab["alpha_conf"].to_numpy(float), tab["mean success"].to_numpy(float)
    nmin = ["> %d" % max(cfg.N_grid) if pd.isna(v) else str(int(v)) for v in tab["N_min"]]
    shown = ", ".join(f"alpha_#={v:g}: N_min {n}, mean success {s:.2f}" for v, n, s in zip(x, nmin, y))
    rho = spearman(x, y)
    if rho is not None:
        drop = y[0] - y[-1]
        ok = bool(rho <= -0.7 and drop >= 0.05)
        a.claims.append(Claim("S7-confusion-hurts", "At fixed alpha_*, more confusion tokens (larger alpha_#) degrade success",
                              ok, f"{shown}; Spearman rho = {rho:.2f}, drop {drop:.2f}. Rule: rho <= -0.7 and the mean "
                              "success rate over the N grid at the largest alpha_# at least 0.05 below the smallest's."))
    else:
        a.claims.append(Claim("S7-confusion-hurts", "At fixed alpha_*, more confusion tokens degrade success", None,
                              f"{shown}; undecided: needs >= 3 values of alpha_# and a success rate that varies."))
    inside = tab[tab["inside theory (alpha_# <= alpha_*/(2e))"]]
    bound = cfg.alpha_star * C_MAX
    if len(inside) == 0:
        a.claims.append(Claim("S7-guaranteed-region", "Inside the data condition alpha_# <= c alpha_* (c < 1/(2e)) "
                              "training reaches zero test error", None,
                              f"no alpha_# of the grid is <= alpha_*/(2e) = {bound:.3g}: cannot be decided."))
    else:
        ok = bool(inside["N_min"].notna().all())
        a.claims.append(Claim("S7-guaranteed-region", "Inside the data condition alpha_# <= c alpha_* (c < 1/(2e)) "
                              "training reaches zero test error", ok,
                              f"alpha_# <= alpha_*/(2e) = {bound:.3g}: " + ", ".join(
                                  f"{v:g} -> N_min {'> %d' % max(cfg.N_grid) if pd.isna(n) else int(n)}"
                                  for v, n in zip(inside["alpha_conf"], inside["N_min"])) +
                              f". Rule: each reaches success rate {cfg.success_rate:g} within the N grid."))
    a.notes.append(f"theory's line: alpha_# = alpha_*/(2e) = {bound:.3g} (c at its supremum 1/(2e)); Theorem 1 says "
                   "nothing about alpha_# beyond it. Success = zero errors on "
                   f"{cfg.n_test} fresh test samples; {cfg.seeds} seeds a cell.")
    return a


def plot(cfg: Config, df: pd.DataFrame, analysis: Analysis, fig_dir: str) -> list[str]:
    import matplotlib.pyplot as plt
    vit = df[df["model"] == "vit"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for N, g in vit.groupby("N"):
        r = g.groupby("alpha_conf")["success"].mean()
        axes[0].plot(r.index, r.values, marker="o", label=f"N={N}")
    tab = _table(cfg, vit)
    finite = tab["N_min"].notna()
    axes[1].plot(tab["alpha_conf"][finite], tab["N_min"][finite], marker="o", color="C0", label="N_min")
    axes[1].plot(tab["alpha_conf"][~finite], [max(cfg.N_grid) * 1.3] * int((~finite).sum()), "^", color="C3",
                 label=f"> {max(cfg.N_grid)} (not reached)")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.axvline(cfg.alpha_star * C_MAX, color="gray", ls="--", lw=1, label="alpha_*/(2e) (theory's line)")
        ax.set_xlabel("alpha_# (confusion fraction)")
        ax.legend(fontsize=7)
    axes[0].axhline(cfg.success_rate, color="gray", ls=":", lw=1)
    axes[0].set_ylabel("success rate")
    axes[1].set_ylabel("N_min")
    fig.suptitle(f"data condition, alpha_* = {cfg.alpha_star:.3g}")
    return [save_figure(fig, fig_dir, "data_condition")]


EXPERIMENT = S.shallow_experiment(
    "data-condition", "Theorem 1, condition (3): alpha_* >= alpha_#/c, c < 1/(2e)",
    "At fixed alpha_*, success degrades as the confusion fraction alpha_# grows; inside the condition training succeeds",
    Config, trials, analyze, plot,
    smoke={"alpha_conf_grid": (0.0, 0.05, 0.2), "N_grid": (8, 24), "steps": 60, "min_steps": 20, "n_test": 200,
           "floor_samples": 2000, "probe_size": 16},
    paper={"alpha_conf_grid": (0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3),
           "N_grid": (8, 16, 24, 32, 48, 64, 96, 128, 192, 256), "seeds": 20})

"""Theorem 1 of Li et al. (ICLR 2023): iterations T = Theta(1 / (alpha_* eta)).

Two sweeps at a fixed N: (a) alpha_* over ``inv_alpha_grid`` at the default eta, (b) eta over ``lr_grid``
at the default alpha_*.  For each trial, the number of SGD iterations until zero training error is
recorded (measured every ``eval_every`` iterations).  The theory predicts iterations linear in
1/alpha_* and in 1/eta, i.e. log-log slopes 1.  Trials that never reach zero training error within
``steps`` are reported (and left out of the fits).

Calibration: the sample-complexity one (``experiments/sample_complexity.py``: uniform attention at the start that
learns, L = 32, logistic loss; project choices), without its epoch budget (every model may take up to ``steps``
iterations) and with each model stopped at its first evaluation with zero training error (only that count is
read).  Training error, not test error, is measured, so no floor check runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from vitheory.analysis.figures import save_figure
from vitheory.analysis.stats import linear_fit, loglog_fit
from vitheory.config import check_all_in_range, knob
from vitheory.experiments import _shallow as S
from vitheory.experiments.base import Analysis, Claim
from vitheory.experiments.sample_complexity import Calibration


@dataclass(frozen=True)
class Config(Calibration):
    N: int = knob(200, "training samples")
    inv_alpha_grid: tuple[float, ...] = knob((2.0, 2.5, 3.0, 3.5), "grid of 1/alpha_* (sweep a)")
    alpha_star: float = knob(0.4, "alpha_* of sweep b")
    lr_grid: tuple[float, ...] = knob((0.05, 0.1, 0.2, 0.4), "grid of eta (sweep b)")
    lr: float = knob(0.1, "eta of sweep a", project_choice=True)
    eval_every: int = knob(2, "iterations between training-error checks")
    steps: int = knob(1500, "maximum iterations")
    epochs: float = knob(0.0, "no epoch budget: every model may take up to `steps` iterations", project_choice=True)
    floor_samples: int = knob(0, "no floor check (training error is measured, not test error)", project_choice=True)
    seeds: int = knob(5, "trials per point")

    def validate(self) -> None:
        super().validate()
        S.check_range("N", self.N, 1, 10_000_000)
        check_all_in_range("inv_alpha_grid", self.inv_alpha_grid, 1.0, None)
        for v in self.inv_alpha_grid:
            S.check_alphas(1 / v, self.alpha_conf, "alpha_star (from inv_alpha_grid)")
        S.check_alphas(self.alpha_star, self.alpha_conf)
        check_all_in_range("lr_grid", self.lr_grid, 0.0, None, lo_open=True)
        S.check_range("eval_every", self.eval_every, 1, self.steps)


def trials(cfg: Config) -> list[dict]:
    a = [{"sweep": "alpha", "alpha_star": 1 / v, "lr": cfg.lr, "N": cfg.N, "seed": s}
         for v in cfg.inv_alpha_grid for s in range(cfg.seeds)]
    b = [{"sweep": "eta", "alpha_star": cfg.alpha_star, "lr": lr, "N": cfg.N, "seed": s}
         for lr in cfg.lr_grid for s in range(cfg.seeds)]
    return a + b


def run_trials(cfg: Config, batch: list[dict], device: str) -> list[dict]:
    return S.train_trials(cfg, batch, device, stop_at_fit=True)[0]


def _sweep(df: pd.DataFrame, sweep: str, xcol: str, xname: str) -> tuple[pd.DataFrame, dict]:
    sub = df[df["sweep"] == sweep].copy()
    sub["x"] = 1 / sub[xcol]
    rows = []
    for x, g in sub.groupby("x"):
        reached = g[g["fit_step"] >= 0]
        rows.append({xname: x, "mean iterations": float(reached["fit_step"].mean()) if len(reached) else np.nan,
                     "sd": float(reached["fit_step"].std()) if len(reached) > 1 else np.nan,
                     "reached zero train error": f"{len(reached)}/{len(g)}"})
    tab = pd.DataFrame(rows)
    ok = tab.dropna(subset=["mean iterations"])
    ok = ok[ok["mean iterations"] > 0]
    fit = loglog_fit(ok[xname].to_numpy(), ok["mean iterations"].to_numpy())
    lin = linear_fit(ok[xname].to_numpy(), ok["mean iterations"].to_numpy(), skip_constant=True)
    fit.update({f"linear_{k}": v for k, v in lin.items() if k != "n_points"})
    return tab, fit


PAPER_T = "T = Theta(1/(alpha_* eta)) (Theorem 1; no measured curve in the paper's sources)"


def _claim(cid: str, stmt: str, fit: dict) -> Claim:
    if "slope" not in fit:
        return Claim(cid, stmt, None, f"only {fit.get('n_points', 0)} points reached zero training error; 3 needed.",
                     paper=PAPER_T)
    ok = fit["linear_slope_lo"] > 0 and fit["linear_r2"] >= 0.9
    return Claim(cid, stmt, bool(ok),
                 f"linear fit R^2 = {fit['linear_r2']:.3f}, slope {fit['linear_slope']:.1f} "
                 f"[{fit['linear_slope_lo']:.1f}, {fit['linear_slope_hi']:.1f}]; log-log slope {fit['slope']:.2f} "
                 f"[{fit['slope_lo']:.2f}, {fit['slope_hi']:.2f}] (theory: 1). "
                 "Rule: supported if the linear slope's 95% CI is above 0 and R^2 >= 0.9.", paper=PAPER_T)


def analyze(cfg: Config, df: pd.DataFrame) -> Analysis:
    a = Analysis()
    ta, fa = _sweep(df, "alpha", "alpha_star", "1/alpha_*")
    tb, fb = _sweep(df, "eta", "lr", "1/eta")
    a.tables[f"Iterations to zero training error against 1/alpha_* (eta = {cfg.lr:g})"] = ta
    a.tables[f"Iterations to zero training error against 1/eta (alpha_* = {cfg.alpha_star:g})"] = tb
    a.numbers.update(alpha_fit=fa, eta_fit=fb)
    a.claims.append(_claim("S2-alpha", "Iterations grow linearly in 1/alpha_*", fa))
    a.claims.append(_claim("S2-eta", "Iterations grow linearly in 1/eta", fb))
    a.notes.append(f"N = {cfg.N}; training error checked every {cfg.eval_every} iterations, so counts are "
                   f"rounded up to a multiple of {cfg.eval_every}.")
    return a


def plot(cfg: Config, df: pd.DataFrame, analysis: Analysis, fig_dir: str) -> list[str]:
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (title, tab) in zip(axes, analysis.tables.items()):
        x = tab.columns[0]
        ax.errorbar(tab[x], tab["mean iterations"], yerr=tab["sd"].fillna(0), marker="o", capsize=3)
        ax.set_xlabel(x)
        ax.set_ylabel("iterations to zero training error")
        ax.set_title(title, fontsize=9)
    return [save_figure(fig, fig_dir, "iterations")]


EXPERIMENT = S.shallow_experiment(
    "iterations", "Theorem 1 (T = Theta(1/(alpha_* eta)))",
    "SGD iterations to zero training error grow like 1/alpha_* and like 1/eta",
    Config, trials, analyze, plot, run_trials=run_trials,
    smoke={"probe_size": 16, "N": 40, "steps": 60, "inv_alpha_grid": (2.0, 3.0, 3.5), "lr_grid": (0.1, 0.2, 0.4), "eval_every": 5},
    paper={"seeds": 20, "inv_alpha_grid": (2.0, 2.25, 2.5, 2.75, 3.0, 3.25, 3.5),
           "lr_grid": (0.025, 0.05, 0.1, 0.2, 0.4), "steps": 4000})

"""Theorem 1's width condition of Li et al. (ICLR 2023): m >~ M^2 log N (claim S8 of
../shared/papers/shallow_vit.md, sections 3.1 and 8).

The perceptron width m of the shallow ViT is swept at a fixed alpha_* for a few N; for each (m, N) the success
rate over seeds is measured, and the theory's width M^2 log N is drawn per N.  Two claims, judged from the
stored trials:

* S8-width-helps: success rises with the width (Spearman rho(m, mean success over the N grid) >= 0.7 and the
  widest model at least 0.1 above the narrowest).  Undecided when success does not vary over the grid.
* S8-sufficient: every (m, N) of the grid with m >= M^2 log N reaches the success threshold (the theorem's
  sufficient condition).  Undecided when the grid has no such cell.

The calibration is sample-complexity's (``experiments/sample_complexity.py``: attention learns, logistic loss,
epoch step budget); the output layer ``a`` stays frozen at +-1/sqrt(m) as in the paper's model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from vitheory.analysis.figures import save_figure
from vitheory.analysis.stats import spearman
from vitheory.config import check_all_in_range, knob
from vitheory.experiments import _shallow as S
from vitheory.experiments.base import Analysis, Claim
from vitheory.experiments.sample_complexity import Calibration


@dataclass(frozen=True)
class Config(Calibration):
    alpha_star: float = knob(1 / 3, "fraction alpha_* of label-relevant tokens, held fixed (alpha_*^-2 = 9)")
    m_grid: tuple[int, ...] = knob((1, 2, 4, 8, 16, 32, 64, 128), "perceptron widths m compared")
    N_grid: tuple[int, ...] = knob((16, 64), "sample sizes N (the theory's width grows with log N)")
    seeds: int = knob(6, "trials per cell")

    def validate(self) -> None:
        super().validate()
        S.check_alphas(self.alpha_star, self.alpha_conf)
        check_all_in_range("m_grid", self.m_grid, 1, 65536)
        check_all_in_range("N_grid", self.N_grid, 1, 10_000_000)


def needed_width(cfg: Config, N: int) -> float:
    """The theory's width M^2 log N (constants unknown: the line marks the scaling, not a threshold)."""
    return cfg.M ** 2 * math.log(max(N, 2))


def trials(cfg: Config) -> list[dict]:
    return S.floor_trials(cfg, [{"alpha_star": cfg.alpha_star}]) + [
        {"model": "vit", "alpha_star": cfg.alpha_star, "m": m, "N": N, "seed": s}
        for m in cfg.m_grid for N in cfg.N_grid for s in range(cfg.seeds)]


def _rates(df: pd.DataFrame) -> pd.DataFrame:
    return df.pivot_table(index="m", columns="N", values="success", aggfunc="mean")


def analyze(cfg: Config, df: pd.DataFrame) -> Analysis:
    a = Analysis()
    S.add_floor_report(a, df)
    vit = df[df["model"] == "vit"]
    rates = _rates(vit)
    tab = rates.add_prefix("success@N=").reset_index()
    tab["mean success"] = rates.mean(axis=1).to_numpy()
    S.add_attention_columns(tab, vit, "m")
    a.tables[f"success against the width m (alpha_* = {cfg.alpha_star:.4g}, M = {cfg.M})"] = tab
    need = {N: needed_width(cfg, N) for N in cfg.N_grid}
    a.tables["the theory's width M^2 log N"] = pd.DataFrame({"N": list(need), "M^2 log N": [round(v, 1) for v in need.values()]})
    ms, y = tab["m"].to_numpy(float), tab["mean success"].to_numpy(float)
    shown = ", ".join(f"m={int(m)}: {s:.2f}" for m, s in zip(ms, y))
    rho = spearman(ms, y)
    if rho is None:
        a.claims.append(Claim("S8-width-helps", "Success rises with the perceptron width m", None,
                              f"mean success over the N grid: {shown}; undecided: it does not vary over the grid."))
    else:
        gain = y[-1] - y[0]
        a.claims.append(Claim("S8-width-helps", "Success rises with the perceptron width m", bool(rho >= 0.7 and gain >= 0.1),
                              f"mean success over the N grid: {shown}; Spearman rho = {rho:.2f}, widest - narrowest = "
                              f"{gain:.2f}. Rule: rho >= 0.7 and a gain >= 0.1."))
    cells = [(int(m), int(N), float(rates.loc[m, N])) for m in rates.index for N in rates.columns if m >= need[N]]
    if not cells:
        a.claims.append(Claim("S8-sufficient", "Where m >= M^2 log N, training reaches zero test error", None,
                              "no (m, N) of the grid has m >= M^2 log N: cannot be decided."))
    else:
        ok = all(r >= cfg.success_rate for _, _, r in cells)
        a.claims.append(Claim("S8-sufficient", "Where m >= M^2 log N, training reaches zero test error", ok,
                              ", ".join(f"m={m}, N={N}: {r:.2f}" for m, N, r in cells) +
                              f". Rule: every such cell reaches success rate {cfg.success_rate:g}."))
    below = [int(m) for m in rates.index if all(rates.loc[m, N] >= cfg.success_rate for N in rates.columns)]
    a.notes.append(f"smallest width reaching success rate {cfg.success_rate:g} at every N: "
                   f"{min(below) if below else 'none of the grid'}; the theory's M^2 log N = "
                   + ", ".join(f"{v:.0f} (N={N})" for N, v in need.items()) +
                   " (its constant is not stated: the scaling, not the number, is the claim).")
    a.notes.append(f"success = zero errors on {cfg.n_test} fresh test samples; {cfg.seeds} seeds a cell.")
    return a


def plot(cfg: Config, df: pd.DataFrame, analysis: Analysis, fig_dir: str) -> list[str]:
    import matplotlib.pyplot as plt
    rates = _rates(df[df["model"] == "vit"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, N in enumerate(rates.columns):
        ax.plot(rates.index, rates[N], marker="o", color=f"C{i}", label=f"N={N}")
        ax.axvline(needed_width(cfg, N), color=f"C{i}", ls="--", lw=1, label=f"M^2 log N = {needed_width(cfg, N):.0f}")
    ax.axhline(cfg.success_rate, color="gray", ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("perceptron width m")
    ax.set_ylabel("success rate")
    ax.set_title(f"width condition, alpha_* = {cfg.alpha_star:.3g}, M = {cfg.M}")
    ax.legend(fontsize=7)
    return [save_figure(fig, fig_dir, "width")]


EXPERIMENT = S.shallow_experiment(
    "width", "Theorem 1, condition (2): m >~ M^2 log N",
    "Success needs a perceptron width that grows like M^2 log N",
    Config, trials, analyze, plot,
    smoke={"m_grid": (1, 4, 32), "N_grid": (16,), "steps": 60, "min_steps": 20, "n_test": 200, "probe_size": 16,
           "seeds": 2, "floor_samples": 2000},
    paper={"m_grid": (1, 2, 4, 8, 16, 32, 64, 128, 256), "N_grid": (16, 64, 256), "seeds": 20})

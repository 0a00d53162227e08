"""Figure 1b and Proposition 1 of Li et al. (ICLR 2023): a CNN of about the ViT's size needs
N_min ~ alpha_*^-4, a factor alpha_*^-2 more samples than the shallow ViT.

The default grid (project choice, chosen by measurement: ``bench/`` probe of issue 9) spans alpha_*^-1 = 2 ... 4
(alpha_*^-4 = 16 ... 256) so that the CNN's boundary falls inside the N grid at every alpha_* (N_min 16, 32, 64,
128, 128 in the probe with 4 seeds); the paper's Figure 1b grid (alpha_*^-4 in 120..200, N in 80..800, an
alpha_*^-1 range of 3.3 ... 3.8 only) is the paper scale.  On every cell the CNN
baseline (:mod:`vitheory.models.cnn`, a width-3 convolution over the token sequence with a parameter
count matched to the ViT) *and* the shallow ViT are trained on the same data model, so Proposition 1's
comparison at equal alpha_* is measured directly, not against another experiment's grid.  Success,
N_min and the fits are those of ``sample-complexity`` (Figure 1a), whose calibration this experiment
shares (tau = 2, sigma = 3, uniform attention at the start; [project choice], see that module).

Claims: the CNN's N_min grows like alpha_*^-4 (log-log slope 4 against 1/alpha_*); at every alpha_* of the
grid the CNN needs more samples than the ViT; the ratio N_min(CNN) / N_min(ViT) grows with 1/alpha_*
(like alpha_*^-2).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from vitheory.config import ConfigError, check_all_in_range, knob
from vitheory.experiments import _shallow as S
from vitheory.experiments import sample_complexity as SC
from vitheory.analysis.figures import save_figure
from vitheory.analysis.stats import spearman
from vitheory.experiments.base import Analysis, Claim

MODELS = ("cnn", "vit")


@dataclass(frozen=True)
class Config(SC.Calibration):
    inv_alpha4: tuple[float, ...] = knob((16.0, 39.0625, 81.0, 150.0625, 256.0),
                                         "grid of alpha_*^-4 (alpha_*^-1 = 2, 2.5, 3, 3.5, 4: the CNN's boundary inside the N grid "
                                         "at every alpha_*)", project_choice=True)
    N_grid: tuple[int, ...] = knob((8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256), "grid of N (the CNN reached N_min <= 128 in the probe)",
                                   project_choice=True)
    models: tuple[str, ...] = knob(MODELS, "models trained on every cell: cnn, vit (vit: the comparison)")

    def validate(self) -> None:
        super().validate()
        check_all_in_range("inv_alpha4", self.inv_alpha4, 1.0, None)
        check_all_in_range("N_grid", self.N_grid, 1, 10_000_000)
        if not self.models or any(m not in MODELS for m in self.models) or len(set(self.models)) < len(self.models):
            raise ConfigError(f"models={','.join(self.models)!r} is not allowed; choose cnn, vit or cnn,vit")
        for v in self.inv_alpha4:
            S.check_alphas(v ** -0.25, self.alpha_conf, "alpha_star (from inv_alpha4)")


def trials(cfg: Config) -> list[dict]:
    return [{"model": m, "alpha_star": v ** -0.25, "inv_alpha": v ** 0.25, "N": N, "seed": s}
            for m in cfg.models for v in cfg.inv_alpha4 for N in cfg.N_grid for s in range(cfg.seeds)]


def _n_min_or_censored(tab: pd.DataFrame) -> np.ndarray:
    return np.array([np.inf if v is None or pd.isna(v) else float(v) for v in tab["N_min"]])


def comparison_claims(cfg: Config, tabs: dict[str, pd.DataFrame]) -> tuple[list[Claim], pd.DataFrame]:
    """Proposition 1 at equal alpha_*: N_min of the CNN against the ViT's, cell by cell of the alpha_* grid."""
    c, v = tabs["cnn"], tabs["vit"]
    Nc, Nv = _n_min_or_censored(c), _n_min_or_censored(v)
    grid_max = max(cfg.N_grid)
    rows = []
    for i in range(len(c)):
        ratio = Nc[i] / Nv[i] if np.isfinite(Nc[i]) and np.isfinite(Nv[i]) else np.nan
        rows.append({"alpha_*": float(c["alpha_*"].iloc[i]), "alpha_*^-4": float(c["alpha_*^-4"].iloc[i]),
                     "N_min CNN": None if np.isinf(Nc[i]) else int(Nc[i]),
                     "N_min ViT": None if np.isinf(Nv[i]) else int(Nv[i]),
                     "ratio": ratio, "best rate CNN": float(c["max_rate"].iloc[i]),
                     "best rate ViT": float(v["max_rate"].iloc[i])})
    table = pd.DataFrame(rows)
    # more samples: CNN boundary above the ViT's (a boundary beyond the grid counts as > grid max).  A cell
    # cannot decide where neither reaches the threshold, or where both boundaries are the same grid point: both
    # true N_min then lie in the same grid interval, which the grid cannot order
    decided = [(a, b) for a, b in zip(Nc, Nv) if (np.isfinite(a) or np.isfinite(b)) and a != b]
    ties = sum(1 for a, b in zip(Nc, Nv) if np.isfinite(a) and a == b)
    more = [a > b for a, b in decided]
    ev = "; ".join(f"alpha_*={r['alpha_*']:.3f}: CNN {r['N_min CNN'] or f'>{grid_max}'} vs ViT "
                   f"{r['N_min ViT'] or f'>{grid_max}'}" for r in rows)
    claims = [Claim("cnn-needs-more", "At equal alpha_*, the CNN needs more samples than the ViT (Proposition 1)",
                    bool(all(more)) if len(more) >= 2 else None,
                    f"N_min: {ev}. Rule: supported if at every alpha_* where either reaches success rate "
                    f"{cfg.success_rate} the CNN's N_min is larger (a boundary beyond N = {grid_max} counts as larger); "
                    f"a cell where neither reaches it, or where both boundaries are the same grid point ({ties} here: the "
                    f"grid cannot order them), does not decide; inconclusive if fewer than 2 cells decide.",
                    paper="Figure 1: CNN N_min 240-720 at alpha_*^-4 = 120-190 against the ViT's 40-400 at alpha_*^-2 = 4-14")]
    ok = table.dropna(subset=["ratio"])
    if len(ok) >= 3:
        rho = spearman((1 / ok["alpha_*"]).to_numpy(float), ok["ratio"].to_numpy(float))
        claims.append(Claim("ratio-grows", "N_min(CNN) / N_min(ViT) grows with 1/alpha_* (like alpha_*^-2)",
                            None if rho is None else bool(rho >= 0.7),
                            f"ratios {', '.join(f'{x:.2f}' for x in ok['ratio'])} at alpha_*^-4 = "
                            f"{', '.join(f'{x:g}' for x in ok['alpha_*^-4'])}; Spearman rho "
                            f"{'undefined (constant ratio)' if rho is None else f'{rho:.2f}'}; rule: supported if rho >= 0.7 "
                            f"(a clear rise, the rule of the other trend claims).", paper="like alpha_*^-2 (Proposition 1 against Theorem 1)"))
    else:
        claims.append(Claim("ratio-grows", "N_min(CNN) / N_min(ViT) grows with 1/alpha_* (like alpha_*^-2)", None,
                            f"both boundaries inside the grid at {len(ok)} alpha_* value(s); at least 3 are needed."))
    return claims, table


def analyze(cfg: Config, df: pd.DataFrame) -> Analysis:
    a = Analysis()
    tabs = {}
    for model in cfg.models:
        if not (df["model"] == model).any():
            continue
        name = "CNN" if model == "cnn" else "ViT"
        tab, fit = SC.boundary(cfg, df, model, 4)
        tabs[model] = tab
        a.tables[f"{name}: phase boundary N_min per alpha_*"] = tab
        a.numbers[f"{model}_fit"] = fit
        if model == "cnn":
            a.claims.append(SC.law_claim("cnn", 4, fit, tab, max(cfg.N_grid)))
            if "linear_in_alpha^-4_r2" in fit:
                a.notes.append(f"CNN: linear fit N_min = {fit['linear_in_alpha^-4_slope']:.1f} alpha_*^-4 + "
                               f"{fit['linear_in_alpha^-4_intercept']:.1f}, R^2 = {fit['linear_in_alpha^-4_r2']:.3f} "
                               "(paper's Figure 1b, read off the figure: about 6.8 alpha_*^-4 - 618, R^2 0.94).")
    if len(tabs) == 2:
        claims, table = comparison_claims(cfg, tabs)
        a.claims += claims
        a.tables["Proposition 1: CNN against ViT at equal alpha_*"] = table
    a.notes += S.theory_conditions(cfg, float(df["alpha_star"].min()), int(df["N"].max()))
    a.notes.append(f"success = zero errors on {cfg.n_test} fresh test samples; N_min as in sample-complexity; "
                   f"{cfg.seeds} trials per cell and model; the CNN has a kernel of {cfg.cnn_kernel} tokens and as many "
                   f"filters as give it about the ViT's trainable parameter count.")
    return a


def plot(cfg: Config, df: pd.DataFrame, analysis: Analysis, fig_dir: str) -> list[str]:
    import matplotlib.pyplot as plt
    models = [m for m in cfg.models if (df["model"] == m).any()]
    fig, axes = plt.subplots(1, len(models), figsize=(5.4 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        name = "CNN" if model == "cnn" else "ViT"
        im = SC.heatmap(ax, df[df["model"] == model], 4, analysis.tables.get(f"{name}: phase boundary N_min per alpha_*"),
                        f"{name}: success rate")
        fig.colorbar(im, ax=ax)
    return [save_figure(fig, fig_dir, "cnn_sample_complexity_heatmap")]


EXPERIMENT = S.shallow_experiment(
    "cnn-sample-complexity", "Figure 1b, Proposition 1",
    "a CNN of the same size needs N_min ~ alpha_*^-4, more samples than the ViT at equal alpha_*",
    Config, trials, analyze, plot,
    smoke={"inv_alpha4": (120.0, 200.0), "N_grid": (40, 120), "steps": 60, "n_test": 200},
    paper={"inv_alpha4": tuple(float(v) for v in range(120, 201, 10)), "N_grid": tuple(range(80, 801, 80)),
           "seeds": 20})

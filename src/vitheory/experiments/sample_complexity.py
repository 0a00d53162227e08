"""Figure 1 of Li et al. (ICLR 2023): sample complexity of the shallow ViT (alpha*^-2) and of a CNN
(alpha*^-4, Proposition 1).

For every cell (alpha_*, N) of the grid, ``seeds`` models are trained on N fresh samples and tested on
``n_test`` fresh samples; success = zero test errors.  The heat map shows the success rate.  The phase
boundary N_min(alpha_*) is the smallest N with success rate >= ``success_rate`` (and for every larger N
of the grid).  Theorem 1 predicts N_min linear in alpha_*^-2 for the ViT, i.e. a log-log slope 2 of
N_min against 1/alpha_*; Proposition 1 predicts slope 4 for the CNN.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from vitheory.config import check_all_in_range, knob
from vitheory.experiments import _shallow as S
from vitheory.experiments.base import Analysis, Claim, Experiment


@dataclass(frozen=True)
class Config(S.ShallowConfig):
    inv_alpha2: tuple[float, ...] = knob((4.0, 6.0, 8.0, 10.0, 12.0, 14.0), "ViT grid of alpha_*^-2")
    N_grid: tuple[int, ...] = knob((40, 80, 120, 160, 200, 240, 280, 320, 360, 400), "ViT grid of N")
    cnn: bool = knob(True, "also run the CNN baseline (Figure 1b)")
    cnn_inv_alpha4: tuple[float, ...] = knob((120.0, 140.0, 160.0, 180.0, 200.0), "CNN grid of alpha_*^-4")
    cnn_N_grid: tuple[int, ...] = knob((80, 160, 240, 320, 400, 480, 560, 640, 720, 800), "CNN grid of N")
    success_rate: float = knob(0.95, "success-rate threshold that defines N_min", True)
    seeds: int = knob(5, "trials per grid cell")

    def validate(self) -> None:
        super().validate()
        check_all_in_range("inv_alpha2", self.inv_alpha2, 1.0, None)
        check_all_in_range("N_grid", self.N_grid, 1, 10_000_000)
        check_all_in_range("cnn_inv_alpha4", self.cnn_inv_alpha4, 1.0, None)
        check_all_in_range("cnn_N_grid", self.cnn_N_grid, 1, 10_000_000)
        S.check_range("success_rate", self.success_rate, 0.0, 1.0, lo_open=True)
        for v in self.inv_alpha2:
            S.check_alphas(v ** -0.5, self.alpha_conf, "alpha_star (from inv_alpha2)")
        if self.cnn:
            for v in self.cnn_inv_alpha4:
                S.check_alphas(v ** -0.25, self.alpha_conf, "alpha_star (from cnn_inv_alpha4)")


def trials(cfg: Config) -> list[dict]:
    out = [{"model": "vit", "alpha_star": v ** -0.5, "inv_alpha": v ** 0.5, "N": N, "seed": s}
           for v in cfg.inv_alpha2 for N in cfg.N_grid for s in range(cfg.seeds)]
    if cfg.cnn:
        out += [{"model": "cnn", "alpha_star": v ** -0.25, "inv_alpha": v ** 0.25, "N": N, "seed": s}
                for v in cfg.cnn_inv_alpha4 for N in cfg.cnn_N_grid for s in range(cfg.seeds)]
    return out


def run_trials(cfg: Config, batch: list[dict], device: str) -> list[dict]:
    return S.train_trials(cfg, batch, device)[0]


def _boundary(cfg: Config, df: pd.DataFrame, model: str, power: int) -> tuple[pd.DataFrame, dict]:
    sub = df[df["model"] == model].copy()
    sub["inv_alpha"] = sub["inv_alpha"].round(6)
    tab = S.n_min_table(sub, "inv_alpha", cfg.success_rate)
    tab.insert(1, f"alpha_*^-{power}", (tab["inv_alpha"] ** power).round(2))
    tab.insert(1, "alpha_*", (1 / tab["inv_alpha"]).round(4))
    ok = tab.dropna(subset=["N_min"])
    ok = ok[ok["N_min"].astype(float) > 0]
    fit = S.loglog_fit(ok["inv_alpha"].to_numpy(), ok["N_min"].to_numpy(float))
    lin = S.linear_fit(ok["inv_alpha"].to_numpy() ** power, ok["N_min"].to_numpy(float))
    fit.update({f"linear_in_alpha^-{power}_{k}": v for k, v in lin.items() if k != "n_points"})
    return tab, fit


def _claim(model: str, predicted: int, fit: dict, tab: pd.DataFrame, grid_max: int) -> Claim:
    stmt = (f"{'ViT' if model == 'vit' else 'CNN'}: N_min grows like alpha_*^-{predicted} "
            f"(log-log slope {predicted} of N_min against 1/alpha_*)")
    n_found = int(tab["N_min"].notna().sum())
    if "slope" not in fit:
        return Claim(f"{model}-law", stmt, None,
                     f"N_min found for {n_found} of {len(tab)} alpha_* values (grid max N = {grid_max}); "
                     "at least 3 are needed for a fit.")
    lo, hi = fit["slope_lo"], fit["slope_hi"]
    if fit.get("degenerate"):
        return Claim(f"{model}-law", stmt, None, f"N_min is the same ({int(tab['N_min'].dropna().iloc[0])}) for every "
                     f"alpha_* where it was found ({fit['n_points']} values): the N grid cannot resolve the boundary.")
    ev = (f"slope {fit['slope']:.2f}, 95% CI [{lo:.2f}, {hi:.2f}] over {fit['n_points']} alpha_* values "
          f"(log-log R^2 {fit['loglog_r2']:.2f}); rule: supported if the CI contains {predicted} and excludes 0, "
          f"inconclusive if the CI is wider than {predicted}.")
    if hi - lo > predicted:
        verdict = None
    else:
        verdict = bool(lo <= predicted <= hi and lo > 0)
    if n_found < len(tab):
        ev += f" {len(tab) - n_found} alpha_* value(s) never reached the success threshold within N <= {grid_max}."
    return Claim(f"{model}-law", stmt, verdict, ev)


def _more_samples_claim(df: pd.DataFrame) -> Claim:
    """At each alpha_* of the CNN grid: the CNN's best success rate (any N of its grid, up to twice the ViT's
    largest N) against the ViT's success rate at its largest N, for the nearest alpha_* of the ViT grid."""
    vit, cnn = df[df["model"] == "vit"], df[df["model"] == "cnn"]
    v_alphas = np.array(sorted(vit["alpha_star"].unique()))
    parts, worse = [], []
    for a_c, g in cnn.groupby("alpha_star"):
        a_v = v_alphas[np.argmin(np.abs(v_alphas - a_c))]
        gv = vit[vit["alpha_star"] == a_v]
        v_rate = float(gv[gv["N"] == gv["N"].max()]["success"].mean())
        c_rate = float(g.groupby("N")["success"].mean().max())
        worse.append(c_rate < v_rate)
        parts.append(f"alpha_*={a_c:.3f}: CNN best {c_rate:.2f} (N <= {int(g['N'].max())}) vs ViT {v_rate:.2f} "
                     f"(N = {int(gv['N'].max())}, alpha_*={a_v:.3f})")
    return Claim("cnn-needs-more", "At equal alpha_*, the CNN needs more samples than the ViT (Proposition 1)",
                 bool(all(worse)) if worse else None,
                 "; ".join(parts) + ". Rule: at every alpha_* of the CNN grid the CNN's best success rate is below "
                 "the ViT's at the nearest alpha_*.")


def analyze(cfg: Config, df: pd.DataFrame) -> Analysis:
    a = Analysis()
    tab, fit = _boundary(cfg, df, "vit", 2)
    a.tables["ViT: phase boundary N_min per alpha_*"] = tab
    a.numbers["vit_fit"] = fit
    a.claims.append(_claim("vit", 2, fit, tab, max(cfg.N_grid)))
    if "linear_in_alpha^-2_r2" in fit:
        a.notes.append(f"ViT: linear fit N_min = {fit['linear_in_alpha^-2_slope']:.1f} alpha_*^-2 + "
                       f"{fit['linear_in_alpha^-2_intercept']:.1f}, R^2 = {fit['linear_in_alpha^-2_r2']:.3f} "
                       "(paper's Figure 1a, read off the figure: about 33.5 alpha_*^-2 - 90, R^2 0.98).")
    if (df["model"] == "cnn").any():
        ctab, cfit = _boundary(cfg, df, "cnn", 4)
        a.tables["CNN: phase boundary N_min per alpha_*"] = ctab
        a.numbers["cnn_fit"] = cfit
        a.claims.append(_claim("cnn", 4, cfit, ctab, max(cfg.cnn_N_grid)))
        # Proposition 1 compares the two at equal alpha_*: where both boundaries exist, compare slopes
        if "slope" in fit and "slope" in cfit:
            steeper = cfit["slope_lo"] > fit["slope_hi"]
            a.claims.append(Claim("cnn-vs-vit-slope", "The CNN's sample complexity grows faster in 1/alpha_* than the ViT's",
                                  bool(steeper),
                                  f"CNN slope {cfit['slope']:.2f} [{cfit['slope_lo']:.2f}, {cfit['slope_hi']:.2f}] vs "
                                  f"ViT slope {fit['slope']:.2f} [{fit['slope_lo']:.2f}, {fit['slope_hi']:.2f}]; "
                                  "rule: supported if the CIs are disjoint with the CNN above."))
        a.claims.append(_more_samples_claim(df))
    alphas = df.loc[df["model"] == "vit", "alpha_star"]
    a.notes += S.theory_conditions(cfg, float(alphas.min()), int(df["N"].max()))
    a.notes.append(f"success = zero errors on {cfg.n_test} fresh test samples; N_min = smallest N whose success "
                   f"rate, fitted non-decreasing in N (isotonic regression), reaches {cfg.success_rate}; "
                   f"{cfg.seeds} trials per cell.")
    return a


def plot(cfg: Config, df: pd.DataFrame, analysis: Analysis, fig_dir: str) -> list[str]:
    import matplotlib.pyplot as plt
    models = [m for m in ("vit", "cnn") if (df["model"] == m).any()]
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        p = 2 if model == "vit" else 4
        sub = df[df["model"] == model].copy()
        sub["x"] = (sub["inv_alpha"] ** p).round(2)
        grid = sub.pivot_table(index="N", columns="x", values="success", aggfunc="mean").sort_index(ascending=False)
        im = ax.imshow(grid.to_numpy(), cmap="gray", vmin=0, vmax=1, aspect="auto",
                       extent=(-0.5, grid.shape[1] - 0.5, -0.5, grid.shape[0] - 0.5))
        ax.set_xticks(range(grid.shape[1]), [f"{v:g}" for v in grid.columns])
        ax.set_yticks(range(grid.shape[0]), [str(v) for v in grid.index[::-1]])
        key = "ViT: phase boundary N_min per alpha_*" if model == "vit" else "CNN: phase boundary N_min per alpha_*"
        tab = analysis.tables.get(key)
        if tab is not None:
            Ns = list(grid.index[::-1])
            xs, ys = [], []
            for i, row in enumerate(tab.itertuples(index=False)):
                if row.N_min is not None and not pd.isna(row.N_min):
                    xs.append(i)
                    ys.append(Ns.index(int(row.N_min)))
            ax.plot(xs, ys, color="tab:orange", lw=2, marker="o", label="N_min")
            ax.legend(loc="lower right")
        ax.set_xlabel(f"alpha_*^-{p}")
        ax.set_ylabel("N")
        ax.set_title(f"{'ViT' if model == 'vit' else 'CNN'}: success rate")
        fig.colorbar(im, ax=ax)
    return [S.save_figure(fig, fig_dir, "sample_complexity_heatmap")]


EXPERIMENT = Experiment(
    name="sample-complexity",
    paper=S.PAPER1,
    figure="Figure 1a/1b, Theorem 1 and Proposition 1",
    claim="N_min grows like alpha_*^-2 for the shallow ViT and like alpha_*^-4 for a CNN of the same size",
    config=Config,
    trials=trials,
    run_trials=run_trials,
    analyze=analyze,
    plot=plot,
    group_key=S.group_key,
    max_batch=lambda cfg: cfg.batch_models,
    scales={
        "smoke": {**S.SMOKE, "inv_alpha2": (4.0, 9.0, 14.0), "N_grid": (20, 60), "cnn_inv_alpha4": (120.0, 200.0),
                  "cnn_N_grid": (40, 120), "seeds": 2, "steps": 60, "n_test": 200, "eval_every": 20},
        "default": {},
        "paper": {"inv_alpha2": tuple(float(v) for v in range(4, 15)), "N_grid": tuple(range(40, 401, 40)),
                  "cnn_inv_alpha4": tuple(float(v) for v in range(120, 201, 10)),
                  "cnn_N_grid": tuple(range(80, 801, 80)), "seeds": 20},
    },
)

"""Figure 1a of Li et al. (ICLR 2023): sample complexity of the shallow ViT, N_min ~ alpha_*^-2 (Theorem 1).

For every cell (alpha_*, N) of the grid, ``seeds`` models are trained on N fresh samples and tested on
``n_test`` fresh samples; success = zero test errors.  The heat map shows the success rate.  The phase
boundary N_min(alpha_*) is the smallest N with success rate >= ``success_rate`` (on the success rates
fitted non-decreasing in N).  Theorem 1 predicts N_min linear in alpha_*^-2, i.e. a log-log slope 2 of
N_min against 1/alpha_*.  Figure 1b (the CNN, Proposition 1) is the experiment ``cnn-sample-complexity``.

Calibration of this experiment [project choice; every value is a knob; issue 9].  The earlier calibration
(W_Q = W_K ~ 0) started the attention at a saddle: A(t) did not move, so the grid measured a mean-pooling
network.  Here W_Q is pattern-aligned and W_K ~ 0 (``qk_reference='query'``: uniform attention at the
start, not a saddle), L = 32, d = 128, Gaussian noise tau = 2, alpha_# = 0.03, the logistic loss (a named
alternative to the hinge, which stops training once margins reach 1) at eta = 0.2, and a step budget of
30 epochs within [100, 1500] steps.  Before the grid, a floor check measures the oracle vote's and mean
pooling's errors on 10^5 fresh samples at the smallest and the largest alpha_* (the oracle made 0 errors at
both, mean pooling 11 at alpha_* = 0.2).  Each trial stores A(0), A(T) on 128 fresh samples.  The law is
judged by :mod:`vitheory.analysis.law_fit` (N_min = a alpha_*^-p + b, p in {1, 2, 4}, by AIC), and the
paper's own Figure 1a boundary goes through the same analysis (it prefers p = 2).  The search that chose
these values: ``bench/calibrate_attention.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pandas as pd

from vitheory.analysis.boundary import n_min_table
from vitheory.analysis.figures import save_figure
from vitheory.analysis.law_fit import compare_laws, law_verdict, paper_comparison, summary
from vitheory.config import check_all_in_range, knob
from vitheory.experiments import _shallow as S
from vitheory.experiments.base import Analysis, Claim


@dataclass(frozen=True)
class Calibration(S.ShallowConfig):
    """The knobs Figure 1a and Figure 1b (``cnn-sample-complexity``) share; see the module doc."""
    d: int = knob(128, "token dimension (the sample-complexity calibration, see the module doc)", project_choice=True)
    L: int = knob(32, "tokens per sample (>= 32: 6-16 relevant tokens over the alpha_* grid)", project_choice=True)
    tau: float = knob(2.0, "token noise level (Gaussian; the floor check measures the oracle's error)", project_choice=True)
    sigma: float = knob(3.0, "initial model error of W_V around the pattern-aligned reference", project_choice=True)
    qk_reference: Literal["patterns", "zero", "query"] = knob(
        "query", "reference of W_Q, W_K: query = W_Q pattern-aligned, W_K ~ 0 (uniform attention at the start, "
        "not a saddle)", project_choice=True)
    loss: Literal["hinge", "logistic"] = knob("logistic", "training loss (logistic: not stopped by hinge saturation)", project_choice=True)
    epochs: float = knob(30.0, "step budget in epochs (ceil(epochs N / B) steps, within [min_steps, steps])", project_choice=True)
    min_steps: int = knob(100, "smallest step budget", project_choice=True)
    steps: int = knob(1500, "largest step budget", project_choice=True)
    probe_size: int = knob(128, "fresh samples per trial on which A(0) and A(T) are measured", project_choice=True)
    floor_samples: int = knob(100_000, "fresh samples of the floor check (oracle vote, mean pooling)", project_choice=True)
    success_rate: float = knob(0.95, "success-rate threshold that defines N_min", project_choice=True)
    lr: float = knob(0.2, "SGD step size eta (0.5 with the logistic loss: test error rises again with long training)", project_choice=True)
    alpha_conf: float = knob(0.03, "average fraction alpha_# of confusion tokens (0.03: the data condition holds "
                                   "down to alpha_* = 0.2)", project_choice=True)
    seeds: int = knob(4, "trials per grid cell")

    def validate(self) -> None:
        super().validate()
        S.check_range("success_rate", self.success_rate, 0.0, 1.0, lo_open=True)


@dataclass(frozen=True)
class Config(Calibration):
    inv_alpha2: tuple[float, ...] = knob((4.0, 6.25, 9.0, 12.25, 16.0, 20.25, 25.0),
                                         "grid of alpha_*^-2 (alpha_*^-1 = 2, 2.5, ..., 5: wide enough to separate the laws)")
    N_grid: tuple[int, ...] = knob((8, 16, 24, 32, 48, 64, 96, 128, 192, 256), "grid of N (where this calibration's boundary lies)")

    def validate(self) -> None:
        super().validate()
        check_all_in_range("inv_alpha2", self.inv_alpha2, 1.0, None)
        check_all_in_range("N_grid", self.N_grid, 1, 10_000_000)
        for v in self.inv_alpha2:
            S.check_alphas(v ** -0.5, self.alpha_conf, "alpha_star (from inv_alpha2)")


def floor_cells(alpha_stars) -> list[dict]:
    """The data models of the floor check: the smallest and the largest alpha_* of the grid (the oracle's and
    mean pooling's errors fall as alpha_* grows, so the smallest alpha_* bounds the grid's floor)."""
    a = sorted(set(float(v) for v in alpha_stars))
    return [{"alpha_star": v} for v in ([a[0], a[-1]] if len(a) > 1 else a)]


def trials(cfg: Config) -> list[dict]:
    return S.floor_trials(cfg, floor_cells(v ** -0.5 for v in cfg.inv_alpha2)) + [
        {"model": "vit", "alpha_star": v ** -0.5, "inv_alpha": v ** 0.5, "N": N, "seed": s}
        for v in cfg.inv_alpha2 for N in cfg.N_grid for s in range(cfg.seeds)]


def boundary(cfg, df: pd.DataFrame, model: str, power: int) -> tuple[pd.DataFrame, dict]:
    """N_min per alpha_* of ``model``'s trials (with the mean attention A(0), A(T) of its trials when measured) and
    the comparison of the laws N_min = a alpha_*^-p + b, p in {1, 2, 4} (:mod:`vitheory.analysis.law_fit`)."""
    sub = df[df["model"] == model].copy()
    sub["inv_alpha"] = sub["inv_alpha"].round(6)
    tab = n_min_table(sub, "inv_alpha", cfg.success_rate)
    tab.insert(1, f"alpha_*^-{power}", (tab["inv_alpha"] ** power).round(2))
    tab.insert(1, "alpha_*", (1 / tab["inv_alpha"]).round(4))
    S.add_attention_columns(tab, sub, "inv_alpha", S.ATTENTION_COLUMNS)
    ok = tab.dropna(subset=["N_min"])
    cmp = compare_laws(ok["inv_alpha"].to_numpy(float), ok["N_min"].to_numpy(float))
    cmp["censored"] = int(tab["N_min"].isna().sum())
    return tab, cmp


def law_claim(model: str, predicted: int, cmp: dict, tab: pd.DataFrame, grid_max: int) -> Claim:
    cid = "S1-vit-law" if model == "vit" else "S3-cnn-law"
    stmt = f"{'ViT' if model == 'vit' else 'CNN'}: N_min is linear in alpha_*^-{predicted} (against alpha_*^-1, -2, -4)"
    verdict, ev = law_verdict(cmp, predicted)
    if cmp.get("censored"):
        ev += (f" {cmp['censored']} alpha_* value(s) never reached the success threshold within N <= {grid_max} "
               "(not used in the fits).")
    figure = "1a" if model == "vit" else "1b"
    paper_verdict, _ = law_verdict(paper_comparison(figure), predicted)
    paper = (f"Figure {figure}'s boundary through the same test: "
             f"{ {True: 'supported', False: 'not supported', None: 'inconclusive'}[paper_verdict] }")
    return Claim(cid, stmt, verdict, ev, paper=paper)


def attention_numbers(df: pd.DataFrame, model: str = "vit") -> dict:
    """attention_initial / attention_final per alpha_* (mean over the cells' trials) and the mean gain."""
    sub = df[df["model"] == model]
    if "attention_initial" not in sub or sub["attention_initial"].isna().all():
        return {}
    g = sub.groupby(sub["alpha_star"].round(6))
    return {"attention_initial": {f"{a:.4g}": float(v) for a, v in g["attention_initial"].mean().items()},
            "attention_final": {f"{a:.4g}": float(v) for a, v in g["attention_final"].mean().items()},
            "attention_final_all_queries": {f"{a:.4g}": float(v) for a, v in g["attention_final_all"].mean().items()},
            "attention_gain": float((sub["attention_final"] - sub["attention_initial"]).mean())}


def paper_law_note(figure: str, predicted: int) -> str:
    cmp = paper_comparison(figure)
    verdict, _ = law_verdict(cmp, predicted)
    name = {True: "supported", False: "NOT supported", None: "inconclusive"}[verdict]
    return (f"The paper's own Figure {figure} boundary (spec section 4, read off the figure) through the same analysis: "
            f"{summary(cmp)} Same rule: {name}.")


def analyze(cfg: Config, df: pd.DataFrame) -> Analysis:
    a = Analysis()
    floor_tab, floor_notes = S.floor_report(df)
    if floor_tab is not None:
        a.tables[S.FLOOR_TITLE] = floor_tab
        a.numbers["floor"] = floor_tab.to_dict("records")
    tab, cmp = boundary(cfg, df, "vit", 2)
    a.tables["ViT: phase boundary N_min per alpha_*, with the attention on relevant tokens A(0) -> A(T)"] = tab
    a.numbers["vit_fit"] = cmp
    a.numbers.update(attention_numbers(df))
    a.claims.append(law_claim("vit", 2, cmp, tab, max(cfg.N_grid)))
    if "attention_gain" in a.numbers:
        gain = a.numbers["attention_gain"]
        a.claims.append(Claim("S1-attention-learns", "The ViT of this grid learns its attention (it is not a "
                              "mean-pooling network): mean A(T) - A(0) >= 0.05", bool(gain >= 0.05),
                              f"mean gain {gain:.3f} over {int((df['model'] == 'vit').sum())} trials (A on {cfg.probe_size} "
                              "fresh samples, queries at relevant tokens). Rule: >= 0.05."))
    a.notes.append(paper_law_note("1a", 2))
    a.notes += floor_notes
    a.notes += S.theory_conditions(cfg, float(df["alpha_star"].min()), int(df["N"].max()))
    a.notes.append(f"success = zero errors on {cfg.n_test} fresh test samples; N_min = smallest N whose success "
                   f"rate, fitted non-decreasing in N (isotonic regression), reaches {cfg.success_rate}; "
                   f"{cfg.seeds} trials per cell. Calibration (project choice, see `vitheory show sample-complexity`): "
                   f"tau = {cfg.tau:g} ({cfg.noise}), sigma = {cfg.sigma:g}, W_Q/W_K reference = {cfg.qk_reference}, "
                   f"loss = {cfg.loss}, {cfg.epochs:g} epochs in [{cfg.min_steps}, {cfg.steps}] steps, attention/MLP "
                   f"step-size ratio {cfg.lr_qk_scale:g}, L = {cfg.L}, d = {cfg.d}, M = {cfg.M}.")
    return a


def heatmap(ax, df: pd.DataFrame, power: int, tab: pd.DataFrame | None, title: str):
    """Success rate over (alpha_*^-power, N), with the phase boundary N_min drawn in orange."""
    sub = df[df["model"] != "floor"].copy() if "model" in df else df.copy()
    sub["x"] = (sub["inv_alpha"].astype(float) ** power).round(2)
    sub["success"] = sub["success"].astype(float)
    grid = sub.pivot_table(index="N", columns="x", values="success", aggfunc="mean").sort_index(ascending=False)
    im = ax.imshow(grid.to_numpy(), cmap="gray", vmin=0, vmax=1, aspect="auto",
                   extent=(-0.5, grid.shape[1] - 0.5, -0.5, grid.shape[0] - 0.5))
    ax.set_xticks(range(grid.shape[1]), [f"{v:g}" for v in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [str(v) for v in grid.index[::-1]])
    if tab is not None:
        Ns = list(grid.index[::-1])
        xs, ys = [], []
        for i, row in enumerate(tab.itertuples(index=False)):
            if row.N_min is not None and not pd.isna(row.N_min):
                xs.append(i)
                ys.append(Ns.index(int(row.N_min)))
        ax.plot(xs, ys, color="tab:orange", lw=2, marker="o", label="N_min")
        ax.legend(loc="lower right")
    ax.set_xlabel(f"alpha_*^-{power}")
    ax.set_ylabel("N")
    ax.set_title(title)
    return im


def plot(cfg: Config, df: pd.DataFrame, analysis: Analysis, fig_dir: str) -> list[str]:
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    im = heatmap(ax, df[df["model"] == "vit"], 2, next((t for k, t in analysis.tables.items() if k.startswith("ViT: phase")), None),
                 "ViT: success rate")
    fig.colorbar(im, ax=ax)
    return [save_figure(fig, fig_dir, "sample_complexity_heatmap")]


EXPERIMENT = S.shallow_experiment(
    "sample-complexity", "Figure 1a, Theorem 1", "the shallow ViT's sample complexity N_min grows like alpha_*^-2",
    Config, trials, analyze, plot,
    smoke={"inv_alpha2": (4.0, 9.0, 14.0), "N_grid": (8, 24), "steps": 60, "min_steps": 20, "n_test": 200,
           "floor_samples": 2000, "probe_size": 16},
    paper={"inv_alpha2": tuple(float(v) for v in range(4, 26, 2)), "N_grid": (8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320),
           "seeds": 20})

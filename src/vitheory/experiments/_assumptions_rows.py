"""Analysis of the assumptions table (../shared/papers/mha_memorization.md claims C2-C5, C14): per-row aggregation over
seeds, the table with both numerical conventions next to the notebook's numbers, and the claims.

Conventions, per row and check:

* **float64** (the project's): unit-normalised float64 vectors, a subset / matrix has full rank iff its smallest
  singular value is ``> tol``;
* **float32** (the notebook's): ``torch.linalg.matrix_rank`` of the float32 vectors at its default tolerance
  ``sigma_max * max(k, d) * eps_float32``;
* **paper**: the notebook's stored numbers (ViT-B/16 in21k, T = 1973 ImageNet images, 5000 subsets, float32).

Verdicts (project rule): a sampled check holds when its fraction over the sampled subsets is ``>= pass_fraction``
(an exhaustive check and Assumption 2 need every subset / example).  Claims are decided in the float64
convention; the float32 verdicts are reported beside them.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from vitheory.experiments.base import Analysis, Claim

ROWS = ("embedding", "random_attention", "random_vit_layer1", "pretrained_vit_layer1")
#: distinct source images the default image set should have (project choice, issue 12: >= 40 photographs)
MIN_SOURCES = 40
ROW_LABEL = {"embedding": "Embedding layer", "random_attention": "Random attention",
             "random_vit_layer1": "Random ViT layer 1", "pretrained_vit_layer1": "Pretrained ViT layer 1"}

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
    if f"{prefix}_n_full" in sub and sub[f"{prefix}_n_full"].notna().all():
        out["counts"] = f"{int(sub[f'{prefix}_n_full'].sum())}/{int(sub[f'{prefix}_n_tested'].sum())}"
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


def _cell(a: dict, verdict: bool | None, T: int | None = None) -> str:
    """One table cell: mark, fraction (range over seeds), rank range; Assumption 2 as a count of examples."""
    if not a:
        return "–"
    if T is not None:
        return f"{MARK[verdict]} {round(a['fmin'] * T)}/{T} (ranks {a.get('ranks', '–')})"
    return f"{MARK[verdict]} {_fmt_frac(a)} (ranks {a.get('ranks', '–')})"


def summarize_representations(cfg, df: pd.DataFrame) -> tuple[dict, dict, list[dict]]:
    """Per representation: the aggregated checks and verdicts (``per_rep``), the reasons of rows that are not
    available, and the rows of the table: per check (GP, Assumption 1, Assumption 2) the float64 cell, the
    float32 (notebook convention) cell and the notebook's number, with the distinct source images of the row."""
    rows, avail = [], {}
    per_rep: dict[str, dict] = {}
    for rep in ROWS:
        sub = df[df["representation"] == rep]
        if len(sub) == 0:
            continue
        src = int(sub["n_sources"].iloc[0]) if "n_sources" in sub and sub["n_sources"].notna().any() else None
        if "available" in sub and not bool(sub["available"].fillna(False).astype(bool).all()):
            reason = sub["reason"].dropna().iloc[0] if "reason" in sub and sub["reason"].notna().any() else "not available"
            avail[rep] = reason
            rows.append({"representation": ROW_LABEL[rep], "model": reason, "sources": src,
                         "T": int(sub["T"].iloc[0])})
            continue
        g, a1, a2 = _agg(sub, "gp"), _agg(sub, "a1"), _agg(sub, "a2")
        a2["ranks"] = _rng(sub["a2_rank_min"].min(), sub["a2_rank_max"].max())
        pg, pa1, pa2 = _agg(sub, "p_gp"), _agg(sub, "p_a1"), _agg(sub, "p_a2")
        if pa2 and "p_a2_rank_min" in sub:
            pa2["ranks"] = _rng(sub["p_a2_rank_min"].min(), sub["p_a2_rank_max"].max())
        pf = cfg.pass_fraction
        vg, v1, v2 = _verdict(g, "gp", pf), _verdict(a1, "a1", pf), _verdict(a2, "a2", 0)
        pv = (_verdict(pg, "gp", pf), _verdict(pa1, "a1", pf), _verdict(pa2, "a2", 0))
        T = int(sub["T"].iloc[0])
        r = per_rep[rep] = {"gp": g, "a1": a1, "a2": a2, "p_gp": pg, "p_a1": pa1, "p_a2": pa2,
                            "v": (vg, v1, v2), "pv": pv, "T": T, "n": int(sub["n_tokens"].iloc[0]),
                            "d": int(sub["dim"].iloc[0]), "model": sub["model"].iloc[0], "sources": src,
                            "identical": bool(sub["query_identical"].all()) if "query_identical" in sub else None}
        ref = PAPER_REF[rep]
        rows.append({"representation": ROW_LABEL[rep], "model": r["model"], "sources": src, "T": T, "n": r["n"],
                     "d": r["d"], "GP k": g.get("k"),
                     "GP float64": _cell(g, vg), "GP float32": _cell(pg, pv[0]),
                     "GP paper": f"{ref['gp']:g} (ranks {ref['gp_ranks']})",
                     "A1 float64": _cell(a1, v1), "A1 float32": _cell(pa1, pv[1]),
                     "A1 paper": f"{ref['a1']:g} (ranks {ref['a1_ranks']})",
                     "A2 float64": _cell(a2, v2, T), "A2 float32": _cell(pa2, pv[2], T),
                     "A2 paper": f"{PAPER_SETUP['T']}/{PAPER_SETUP['T']}"})
    return per_rep, avail, rows


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
        pm_txt = f"float32 {_fmt_frac(pm)}; " if pm else ""
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
        pg = v.get("p_gp") or {}
        p32 = f"; float32 {_fmt_frac(pg)}, ranks {pg.get('ranks', '–')}" if pg else ""
        cnt = f", {g['counts']} subsets full rank" if g.get("counts") else ""
        parts.append(f"{ROW_LABEL[r]} {_fmt_frac(g)} at k = {g.get('k')} (ranks {g.get('ranks', '–')}{cnt}{p32})")
    if not parts:
        return Claim("C4", "General Position fails for all four representations", None, "nothing measured")
    ev = "; ".join(parts) + (". Rule (float64 convention): fraction <= 0.01 for every representation (notebook: "
                             "0.0 at k = 768 in float32); "
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


def differences_from_notebook(cfg, df: pd.DataFrame, per_rep: dict, avail: dict) -> list[str]:
    """Notes on how this run differs from the notebook's, and why the numbers may differ."""
    notes = []
    T0 = int(df["T"].iloc[0])
    src = int(df["n_sources"].dropna().iloc[0]) if "n_sources" in df and df["n_sources"].notna().any() else None
    notes.append(f"Images: {df['images'].iloc[0] if 'images' in df else cfg.image_source}; T = {T0} inputs from "
                 f"{src if src is not None else '?'} distinct source images (notebook: {PAPER_SETUP['T']} ImageNet-1k "
                 "training images). Crops of one photograph are distinct but correlated images, which can lower "
                 "Kruskal and subset ranks of the deeper representations.")
    if src is not None and src < MIN_SOURCES:
        notes.append(f"Only {src} distinct source images (< {MIN_SOURCES}, the project's floor for a decided General "
                     "Position row): install foolbox 3.3.4's data files (pip install --no-deps foolbox==3.3.4) or "
                     "give image_source=folder:PATH.")
    small = sorted({v["d"] for v in per_rep.values() if v["T"] < v["d"]})
    if small:
        notes.append(f"T = {T0} < d (d = {', '.join(map(str, small))}): General Position is tested at k = min(T, d) = T "
                     "(all vectors at once), whereas the notebook used k = d = 768 with T = 1973; GP rank ranges are "
                     "therefore not comparable.")
    notes.append(f"Subsets: {cfg.n_subsets} random subsets per Assumption-1 check ({cfg.paper_subsets} in the float32 "
                 f"convention), {getattr(cfg, 'gp_subsets', cfg.n_subsets)} per General Position check (both "
                 f"conventions); rank ranges from the first {getattr(cfg, 'rank_subsets', cfg.n_subsets)} subsets of "
                 "each check (Assumption 1 float64: all); notebook: 5000 each. The 95% Clopper-Pearson interval of a "
                 "fraction 0 over {0} subsets is [0, {1:.4f}].".format(
                     getattr(cfg, "gp_subsets", cfg.n_subsets), 1 - 0.025 ** (1 / getattr(cfg, "gp_subsets", cfg.n_subsets))))
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
    notes.append(f"Conventions: float64 = unit vectors, full rank iff sigma_min > tol = {cfg.tol:g} (claims are "
                 "decided in it); float32 = float32 torch.linalg.matrix_rank at its default tolerance, as in the notebook. "
                 f"A sampled check holds when its fraction is >= {cfg.pass_fraction} (project rule; the notebook's "
                 "0.9982 counts as holding); an exhaustive check or Assumption 2 needs every subset / example.")
    return notes


def analyze(cfg, df: pd.DataFrame) -> Analysis:
    a = Analysis()
    per_rep, avail, rows = summarize_representations(cfg, df)
    a.tables[f"Assumption table, per row: float64 (unit vectors, tol = {cfg.tol:g}) | float32 (the notebook's "
             "convention: torch.linalg.matrix_rank, default tolerance) | the notebook's numbers (paper); "
             "sources = distinct source images; ✓ = holds"] = pd.DataFrame(rows)
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


"""Comparisons across experiments of one combined report (the report layer reads every run folder).

C13 against training: the explicit construction of ``memorization-construct`` certifies memorization of
T_certified >= c = H (min(n, d_h) - 1) + 1 arbitrary real labels; ``memorization-heads`` measures the capacity
M(H) that Adam training reaches at the same (H, n, d_h).  Both are read from the runs' stored analyses (their
``summary.json`` numbers), never recomputed here.  The construction is a lower bound for real-valued labels;
the trained capacity counts examples whose labels training fits (classification by default), so the table
states the label kind beside the numbers.
"""
from __future__ import annotations

import pandas as pd


def construct_vs_trained(heads_cfg, heads_numbers: dict, construct_numbers: dict) -> pd.DataFrame | None:
    """One row per H of memorization-heads whose (H, n, d_h) the construction's grid has; None when none does."""
    d_head = heads_cfg.d if heads_cfg.d_head is None else heads_cfg.d_head
    cells = {(int(c["H"]), int(c["n"]), int(c["d_head"])): c for c in construct_numbers.get("cells", [])}
    rows = []
    for H in sorted(set(int(h) for h in heads_cfg.heads)):
        c = cells.get((H, int(heads_cfg.n), int(d_head)))
        if c is None:
            continue
        row = {"H": H, "n": int(heads_cfg.n), "d_h": int(d_head), "c = H(min(n, d_h)-1)+1": int(c["c"]),
               "certified T (construction)": c.get("T_certified")}
        for ctx in ("shared", "random"):
            cap = heads_numbers.get(ctx, {}).get("capacity", {})
            v = cap.get(str(H), cap.get(H))
            row[f"trained M(H), {ctx}"] = v
            if isinstance(v, (int, float)) and c.get("T_certified"):
                row[f"trained / certified, {ctx}"] = v / c["T_certified"]
        rows.append(row)
    return pd.DataFrame(rows) if rows else None


def construct_vs_trained_note(heads_cfg, d_construct: int) -> str:
    return (f"Trained capacities: memorization-heads (d = {heads_cfg.d}, {heads_cfg.labels} labels, Adam); certified T: "
            f"memorization-construct (d = {d_construct}, Gaussian real labels, no training; the construction's count "
            "does not depend on d once the assumptions hold). A ratio above 1 means training memorized more than this "
            "construction certifies: the construction is a lower bound, not the capacity.")

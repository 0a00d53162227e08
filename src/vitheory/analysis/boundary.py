"""Phase boundaries of success-rate grids: the smallest N at which a success rate is reached."""
from __future__ import annotations

import numpy as np
import pandas as pd

from vitheory.analysis.stats import isotonic_increasing


def n_min_table(df: pd.DataFrame, by: str, success_rate: float = 0.95) -> pd.DataFrame:
    """Phase boundary per value of ``by``: the smallest N whose success rate reaches ``success_rate``.

    ``df`` has one row per trial with columns ``by``, ``N`` and ``success``.  Success rates are estimated from
    few trials per cell, so a single unlucky trial at a large N would otherwise move the boundary; the rates are
    first fitted by a non-decreasing function of N (isotonic regression weighted by trials per cell: more data
    never hurts) and N_min is read off that fit (project choice).  ``max_rate`` is the largest raw success rate
    of the row.
    """
    rows = []
    for val, sub in df.groupby(by):
        g = sub.groupby("N")["success"].agg(["mean", "count"]).sort_index()
        fit = isotonic_increasing(g["mean"].to_numpy(float), g["count"].to_numpy(float))
        hit = np.nonzero(fit >= success_rate - 1e-12)[0]
        rows.append({by: val, "N_min": int(g.index[hit[0]]) if len(hit) else None,
                     "max_rate": float(g["mean"].max())})
    return pd.DataFrame(rows)

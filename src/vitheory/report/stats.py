"""Small statistics shared by the experiments' analyses."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def linear_fit(x: Sequence[float], y: Sequence[float], level: float = 0.95) -> dict:
    """Least squares y = a x + b with R^2 and a ``level`` t-interval on the slope (needs >= 3 points)."""
    from scipy import stats
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0:
        return {"n_points": int(len(x))}
    r = stats.linregress(x, y)
    t = stats.t.ppf(0.5 + level / 2, len(x) - 2)
    return {"n_points": int(len(x)), "slope": float(r.slope), "intercept": float(r.intercept),
            "slope_lo": float(r.slope - t * r.stderr), "slope_hi": float(r.slope + t * r.stderr),
            "r2": float(r.rvalue ** 2)}

"""The regression metric of claim C10: mean training MSE per (context, x, T) and the Spearman decision rule."""
import pandas as pd

from vitheory.experiments import _memorization as C


def _df(mses, x="H"):
    rows = []
    for context, values in mses.items():
        for xv, pair in values.items():
            for s, m in enumerate(pair):
                rows.append({"context": context, x: xv, "T": 200, "seed": s, "loss_best": m})
    return pd.DataFrame(rows)


def test_mse_table_means_over_seeds():
    tab = C.mse_table(_df({"shared": {1: (0.2, 0.4), 2: (0.1, 0.1)}}), "H")
    assert list(tab["mse_mean"].round(6)) == [0.3, 0.1] and list(tab["seeds"]) == [2, 2]


def test_regression_claims_decide_both_ways():
    claims, _ = C.regression_claims(_df({"shared": {1: (0.3, 0.2), 2: (0.05, 0.07), 4: (1e-3, 2e-3)},
                                         "random": {1: (0.01, 0.01), 2: (0.05, 0.04), 4: (0.2, 0.3)}}), "H", "H")
    verdict = {c.id: c.supported for c in claims}
    assert verdict == {"C10-shared": True, "C10-random": False}


def test_regression_claims_undecided_with_two_values():
    claims, _ = C.regression_claims(_df({"shared": {1: (0.3,), 2: (0.1,)}}, x="n"), "n", "n")
    assert claims[0].supported is None and "cannot decide" in claims[0].evidence

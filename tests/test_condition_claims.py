"""The S7 (data-condition) and S8 (width) claim rules on hand-built trial tables with a known answer."""
import pandas as pd
import pytest

from vitheory.config import ConfigError
from vitheory.experiments import data_condition as DC
from vitheory.experiments import width as W


def claims(analysis):
    return {c.id: c for c in analysis.claims}


def table(rows):
    return pd.DataFrame([{"model": "vit", **r} for r in rows])


def test_data_condition_rules():
    cfg = DC.Config(alpha_conf_grid=(0.0, 0.05, 0.1, 0.2), N_grid=(8, 16), seeds=2)
    # success falls with alpha_#: alpha_# <= 0.0613 (inside) succeeds at N = 16
    rate = {0.0: (1, 1), 0.05: (0.5, 1), 0.1: (0, 0.5), 0.2: (0, 0)}
    rows = [{"alpha_conf": a, "N": N, "seed": s, "success": s < 2 * rate[a][i]}
            for a in rate for i, N in enumerate((8, 16)) for s in range(2)]
    c = claims(DC.analyze(cfg, table(rows)))
    assert c["S7-confusion-hurts"].supported is True
    assert c["S7-guaranteed-region"].supported is True
    # the same, but alpha_# = 0.05 never succeeds: the guaranteed region fails
    rows = [r | {"success": False} if r["alpha_conf"] == 0.05 else r for r in rows]
    assert claims(DC.analyze(cfg, table(rows)))["S7-guaranteed-region"].supported is False
    # flat success: confusion does not hurt
    flat = [r | {"success": True} for r in rows]
    assert claims(DC.analyze(cfg, table(flat)))["S7-confusion-hurts"].supported is None


def test_width_rules():
    cfg = W.Config(m_grid=(1, 8, 64), N_grid=(16,), seeds=2)          # M^2 log 16 = 44.4: only m = 64 inside
    rows = [{"m": m, "N": 16, "seed": s, "success": m > 1 or s == 0} for m in (1, 8, 64) for s in range(2)]
    c = claims(W.analyze(cfg, table(rows)))
    assert c["S8-width-helps"].supported is True and c["S8-sufficient"].supported is True
    rows = [r | {"success": r["m"] < 64} for r in rows]                  # the widest model fails
    c = claims(W.analyze(cfg, table(rows)))
    assert c["S8-width-helps"].supported is False and c["S8-sufficient"].supported is False
    c = claims(W.analyze(W.Config(m_grid=(1, 8), N_grid=(16,)), table([r for r in rows if r["m"] < 64])))
    assert c["S8-sufficient"].supported is None                         # no cell with m >= M^2 log N


def test_bad_values_name_the_parameter():
    with pytest.raises(ConfigError, match="alpha_conf|alpha_star"):
        DC.Config(alpha_star=0.2, alpha_conf_grid=(0.0, 0.3)).validate()
    with pytest.raises(ConfigError, match="m_grid"):
        W.Config(m_grid=(0, 4)).validate()

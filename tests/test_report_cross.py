"""The combined report's cross-experiment table: C13's certified T beside memorization-heads' trained capacity."""
from types import SimpleNamespace

from vitheory.report.cross import construct_vs_trained


def test_construct_vs_trained_matches_cells_and_states_ratios():
    heads_cfg = SimpleNamespace(d=16, d_head=None, n=8, heads=(1, 2, 4, 6), labels="classification")
    heads_numbers = {"shared": {"capacity": {"1": 40.0, "2": 60.0, "4": 116.0, "6": 150.0}},
                     "random": {"capacity": {"1": 80.0, "2": 90.0, "4": 232.0, "6": 300.0}}}
    construct = {"cells": [{"H": 1, "n": 8, "d_head": 16, "c": 8, "T_certified": 8},
                           {"H": 4, "n": 8, "d_head": 16, "c": 29, "T_certified": 29},
                           {"H": 4, "n": 8, "d_head": 8, "c": 29, "T_certified": 29}]}
    tab = construct_vs_trained(heads_cfg, heads_numbers, construct)
    assert tab["H"].tolist() == [1, 4]                    # H = 2, 6 have no construction cell; d_h = 8 is not d
    assert tab["trained / certified, shared"].tolist() == [5.0, 4.0]
    assert tab["trained / certified, random"].tolist() == [10.0, 8.0]
    assert construct_vs_trained(SimpleNamespace(**{**vars(heads_cfg), "n": 4}), heads_numbers, construct) is None

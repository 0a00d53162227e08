"""Linear algebra for the data assumptions of attention: Kruskal rank (exact and sampled) and the
General Position / Assumption 1 / Assumption 2 checks of Mahdavi et al. (ICLR 2024).

    from vitheory.linalg import kruskal_rank, sampled_rank_check, sampled_kruskal_curve, check_assumptions
    kruskal_rank(V)                       # exact k-rank of the rows of V, with witness and margin
    sampled_rank_check(V, k=197)          # the paper's Monte-Carlo check: fraction of full-rank k-subsets
    sampled_kruskal_curve(V)              # that fraction for every k of a grid
    check_assumptions(tokens, 0)          # tokens (T, n, d), query index 0 -> GP, Assumption 1, Assumption 2

Modules: :mod:`~vitheory.linalg.inputs` (loading and checking arrays, tolerances), :mod:`~vitheory.linalg.exact`
(the certified Kruskal rank), :mod:`~vitheory.linalg.sampled` (the sampled check and curve, batched rank
decisions), :mod:`~vitheory.linalg.assumptions` (GP, Assumptions 1 and 2).
"""
from vitheory.linalg.assumptions import (AssumptionCheck, AssumptionReport, check_assumptions, check_context_ranks,
                                         merge_context_checks)
from vitheory.linalg.exact import KruskalResult, kruskal_rank
from vitheory.linalg.inputs import DEFAULT_TOL, as_vectors, default_tol, load_array, unit_rows
from vitheory.linalg.sampled import (KruskalCurve, SampledCheck, clopper_pearson, default_curve_ks, random_subsets,
                                     sampled_kruskal_curve, sampled_rank_check)

__all__ = ["AssumptionCheck", "AssumptionReport", "check_assumptions", "check_context_ranks", "merge_context_checks",
           "DEFAULT_TOL",
           "KruskalCurve", "KruskalResult", "SampledCheck", "as_vectors", "clopper_pearson", "default_curve_ks",
           "default_tol", "kruskal_rank", "load_array", "random_subsets", "sampled_kruskal_curve",
           "sampled_rank_check", "unit_rows"]

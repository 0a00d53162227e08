"""Linear algebra for the data assumptions of attention: Kruskal rank (exact and sampled) and the
General Position / Assumption 1 / Assumption 2 checks of Mahdavi et al. (ICLR 2024).

    from vitheory.linalg import kruskal_rank, sampled_rank_check, sampled_kruskal_curve, check_assumptions
    kruskal_rank(V)                       # exact k-rank of the rows of V, with witness and margin
    sampled_rank_check(V, k=197)          # the paper's Monte-Carlo check: fraction of full-rank k-subsets
    sampled_kruskal_curve(V)              # that fraction for every k of a grid
    check_assumptions(tokens, 0)          # tokens (T, n, d), query index 0 -> GP, Assumption 1, Assumption 2
"""
from vitheory.linalg.assumptions import (AssumptionCheck, AssumptionReport, check_assumptions, merge_context_checks,
                                         check_context_ranks)
from vitheory.linalg.kruskal import (DEFAULT_TOL, KruskalCurve, KruskalResult, SampledCheck, as_vectors,
                                     clopper_pearson, default_curve_ks, default_tol, kruskal_rank, load_array,
                                     random_subsets, sampled_kruskal_curve, sampled_rank_check, unit_rows)

__all__ = ["AssumptionCheck", "AssumptionReport", "check_assumptions", "check_context_ranks", "merge_context_checks",
           "DEFAULT_TOL",
           "KruskalCurve", "KruskalResult", "SampledCheck", "as_vectors", "clopper_pearson", "default_curve_ks",
           "default_tol", "kruskal_rank", "load_array", "random_subsets", "sampled_kruskal_curve",
           "sampled_rank_check", "unit_rows"]

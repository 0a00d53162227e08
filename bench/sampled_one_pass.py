"""One sampled Kruskal check at the paper's size in a fresh process (the bench's first pass, our side only).

    PYTHONPATH=<checkout>/src python bench/sampled_one_pass.py

Same data and subsets as ``bench_kruskal.py --only sampled``: ``vit_like(2000, 768)``, 5000 random 197-subsets
(seed 0), ``sampled_rank_check(V, 197, tol=1e-5, subsets=S)``; prints its seconds and its answers, so that two
checkouts can be compared run after run.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kruskal import vit_like  # noqa: E402

from vitheory.linalg import random_subsets, sampled_rank_check  # noqa: E402

V = vit_like(2000, 768)
S = random_subsets(2000, 197, 5000, seed=0)
c = sampled_rank_check(V, 197, tol=1e-5, subsets=S)
print(f"one pass {c.seconds:.2f} s, fraction {c.fraction}, ranks {c.rank_min}-{c.rank_max}, hist {c.rank_hist}, "
      f"fallbacks {c.n_svd_fallback}")

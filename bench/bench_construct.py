"""Time and certify the explicit memorizing MHA construction (claim C13) on one large cell.

    PYTHONPATH=$PWD/src OMP_NUM_THREADS=1 python bench/bench_construct.py                  # H=16 n=32 d_h=64 d=64
    PYTHONPATH=$PWD/src OMP_NUM_THREADS=1 python bench/bench_construct.py --H 8 --n 16 --d-head 32 --d 32

Data: Uniform[0, 1] queries and shared context, N(0, 1) labels, numpy default_rng(seed); T = H min(n-1, d_h) + 1.
Prints the certificate and the CPU seconds of construct (T linear programs) and certify.
"""
import argparse
import time

import numpy as np

from vitheory.models import mha_construct as MC

p = argparse.ArgumentParser()
p.add_argument("--H", type=int, default=16)
p.add_argument("--n", type=int, default=32)
p.add_argument("--d-head", type=int, default=64)
p.add_argument("--d", type=int, default=64)
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()
rng = np.random.default_rng(a.seed)
T = MC.capacity(a.H, a.n, a.d_head)
q, E, y = rng.random((T, a.d)), rng.random((a.n, a.d)), rng.standard_normal(T)
t0 = time.process_time()
m = MC.construct(q, E, y, a.H, a.d_head)
t1 = time.process_time()
c = MC.certify(m, q, E, y)
t2 = time.process_time()
print(f"H={a.H} n={a.n} d_h={a.d_head} d={a.d} T={T} c={MC.hypothesis_capacity(a.H, a.n, a.d_head)}: "
      f"certified={c.certified} rank={c.rank} sigma_T={c.sigma_min:.3g} tol={c.tol:.3g} max_err={c.max_err:.3g} "
      f"lambda={m.lam:.3g}; construct {t1 - t0:.1f} s CPU, certify {t2 - t1:.2f} s CPU {c.reason}")

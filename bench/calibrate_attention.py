"""Calibration search for the paper-1 sample-complexity grid (issue 9): success rate and attention
A(0) -> A(T) over a coarse (alpha_*^-2, N) grid for one candidate calibration.

    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/calibrate_attention.py key=value ...

Keys are ShallowConfig knobs (e.g. noise=bounded tau=0.7 d=128 M=8 L=32 qk_reference=query loss=logistic
epochs=30); ``inv=4,9,14`` and ``Ns=20,40,80`` set the grid, ``seeds=3``.
"""
import sys
import time
from dataclasses import fields, replace

import numpy as np
import torch

from vitheory.experiments import _shallow as S

torch.set_num_threads(1)
kw = dict(a.split("=", 1) for a in sys.argv[1:])
inv = [float(v) for v in kw.pop("inv", "4,9,14").split(",")]
Ns = [int(v) for v in kw.pop("Ns", "20,40,80,160,320").split(",")]
seeds = int(kw.pop("seeds", "3"))
types = {f.name: f.type for f in fields(S.ShallowConfig)}
cfg = S.ShallowConfig(probe_size=128, n_test=1000)
conv = {"int": int, "float": float, "bool": lambda v: v in ("1", "true", "True")}
cfg = replace(cfg, **{k: conv.get(str(types[k]), str)(v) if str(types[k]) in conv else v for k, v in kw.items()})
cfg.validate()
t0 = time.time()
trials = [{"model": "vit", "alpha_star": v ** -0.5, "N": N, "seed": s} for v in inv for N in Ns for s in range(seeds)]
metrics = []
for i in range(0, len(trials), 60):
    metrics += S.train_trials(cfg, trials[i:i + 60], "cpu")[0]
print({k: v for k, v in kw.items()}, f"{time.time() - t0:.0f}s")
for v in inv:
    row = []
    for N in Ns:
        ms = [m for t, m in zip(trials, metrics) if t["alpha_star"] == v ** -0.5 and t["N"] == N]
        row.append(f"N={N}:{np.mean([m['success'] for m in ms]):.2f}/{np.mean([m['test_error'] for m in ms]):.4f}"
                   f"/A{np.mean([m['attention_initial'] for m in ms]):.2f}->{np.mean([m['attention_final'] for m in ms]):.2f}"
                   f"/s{np.mean([m['steps_run'] for m in ms]):.0f}")
    print(f"inv2={v:g}", " ".join(row))

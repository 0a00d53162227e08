"""The batched shallow-ViT trainer against the hardware: its GFLOP/s over a large sgemm's, in one run.

    PYTHONPATH=src python bench/peak.py [--K 220] [--steps 5] [--repeat 20] [--long-steps 40] [--n 2048] [--autograd]

Run it on an idle machine with the torch threads you want to measure (``OMP_NUM_THREADS=1`` for one core; by
default torch takes every core).

sgemm: float32 [n x n] @ [n x n] products (2 n^3 FLOP each) on this process's torch threads.
Trainer: ``train_hinge_sgd`` on K models of the sample-complexity default size (eval_every=0, so every model runs
every step), called as the experiments call it; its FLOPs are the matrix products (forward and backward) counted
with torch's FLOP formulas (``torch.utils.flop_counter``) in a separate, untimed run of the same training (on one
thread, so that the worker threads of train/fused.py run inside the counter).  Elementwise work (softmax, hinge,
updates) is not counted, so the fraction is a floor of the useful rate.

Timing: ``--repeat`` rounds, each one sgemm product and then one whole training of ``--steps`` steps (fresh
parameters, same data), so both sides are sampled alternately under the same conditions.  The fraction is the best
trainer rate over the best sgemm rate (each the best of its samples: the rate each reaches when nothing else
interferes; on the shared 2-core machine here both move by up to 1.8x within minutes); the medians' fraction is
printed beside it.  One long training of ``--long-steps`` steps is timed as well (0 skips it) and its fraction to
the best sgemm printed: the measure this script used before (a single run, exposed to whatever else the machine
did meanwhile).
``--autograd``: the trainer's autograd path (``fused=False``) instead of its hand-written backward (train/fused.py).
Prints, last, ``fraction of sgemm peak: F``.
"""
from __future__ import annotations

import argparse
import sys
import time
from statistics import median
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_shallow import _setup  # noqa: E402  (the same model, data and generators as the other benchmarks)

from vitheory.config import build_config  # noqa: E402
from vitheory.experiments.sample_complexity import Config as SCConfig  # noqa: E402
from vitheory.train.sgd import train_hinge_sgd  # noqa: E402


def _sgemm(n: int):
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    return lambda: a @ b, 2 * n ** 3 / 1e9


def _trainer(K: int, steps: int, fused: bool = True):
    """(a function running one whole training of K models from fresh parameters, its GFLOP of matrix products)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class FlopCounter(TorchDispatchMode):
        """torch's FLOP formulas for matrix products, without FlopCounterMode's module hooks (which refuse the
        trainer's autograd.grad)."""
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            f = flop_registry.get(func._overloadpacket)
            if f is not None:
                self.total += f(*args, **kwargs, out_val=out)
            return out
    cfg = build_config(SCConfig, {"steps": steps, "eval_every": 0})
    trials = [{"model": "vit", "alpha_star": (4 + (k % 11)) ** -0.5, "N": 40 * (1 + k % 10), "seed": k}
              for k in range(K)]
    model, X, y, n, lr, _ = _setup(cfg, trials)
    init = {k: v.detach().clone() for k, v in model.params().items()}

    def train(steps: int = steps):
        with torch.no_grad():
            for k, p in model.params().items():
                p.copy_(init[k])
        gens = [torch.Generator().manual_seed(t["seed"]) for t in trials]
        train_hinge_sgd(model, X, y, n, steps=steps, batch=cfg.batch, lr=lr, generators=gens,
                        **({} if fused else {"fused": False}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)       # the dispatch mode sees the calling thread only: count on one
    counter = FlopCounter()
    try:
        with counter:
            train()
    finally:
        torch.set_num_threads(threads)
    return train, counter.total / 1e9


def _timed(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--K", type=int, default=220)
    ap.add_argument("--steps", type=int, default=5, help="steps of each timed training sample")
    ap.add_argument("--repeat", type=int, default=20, help="rounds of (one sgemm, one training)")
    ap.add_argument("--long-steps", type=int, default=40, help="steps of the one long training (0: none)")
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--autograd", action="store_true", help="the trainer's autograd path (fused=False)")
    a = ap.parse_args()
    for name in ("K", "steps", "repeat", "n"):
        if getattr(a, name) < 1:
            ap.error(f"--{name} must be >= 1, got {getattr(a, name)}")
    if a.long_steps < 0:
        ap.error(f"--long-steps must be >= 0, got {a.long_steps}")
    sgemm, sg_flop = _sgemm(a.n)
    train, gflop = _trainer(a.K, a.steps, fused=not a.autograd)
    train()                                                          # warm-up (buffers, worker threads)
    sg, tr = [], []
    for _ in range(a.repeat):
        sg.append(sg_flop / _timed(sgemm))
        tr.append(gflop / _timed(train))
    peak, best = max(sg), max(tr)
    print(f"torch threads: {torch.get_num_threads()}; trainer path: {'autograd (fused=False)' if a.autograd else 'default (as the experiments call it)'}")
    print(f"sgemm [{a.n}x{a.n}]@[{a.n}x{a.n}], {a.repeat} samples: best {peak:.1f} GFLOP/s, median {median(sg):.1f}, "
          f"worst {min(sg):.1f}")
    print(f"trainer: K={a.K} models x {a.steps} steps ({gflop:.2f} GFLOP of matrix products) per sample, "
          f"{a.repeat} samples: best {best:.1f} GFLOP/s, median {median(tr):.1f}, worst {min(tr):.1f}")
    if a.long_steps:
        long_gflop = gflop * a.long_steps / a.steps        # every step runs every model: FLOPs scale with steps
        sec = _timed(lambda: train(a.long_steps))
        print(f"one long training of {a.long_steps} steps: {long_gflop / sec:.1f} GFLOP/s ({sec:.2f} s); "
              f"fraction of the best sgemm: {long_gflop / sec / peak:.3f}")
    print(f"fraction of sgemm peak, medians: {median(tr) / median(sg):.3f}")
    print(f"fraction of sgemm peak: {best / peak:.3f}")


if __name__ == "__main__":
    main()

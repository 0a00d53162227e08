"""The batched shallow-ViT trainer against the hardware: its GFLOP/s over a large sgemm's, in one run.

    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/peak.py [--K 220] [--steps 40] [--n 2048]

sgemm: the best of 5 float32 [n x n] @ [n x n] products (2 n^3 FLOP each) on this process's torch threads.
Trainer: ``train_hinge_sgd`` on K models of the sample-complexity default size (eval_every=0, so every model runs
every step), timed as it runs in the experiments; its FLOPs are the matrix products (forward and backward)
counted with torch's FLOP formulas (``torch.utils.flop_counter``) in a separate, untimed run of the same training.
Elementwise work (softmax, hinge, updates) is not counted, so the fraction is a floor of the useful rate.
Prints, last, ``fraction of sgemm peak: F``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_shallow import _setup  # noqa: E402  (the same model, data and generators as the other benchmarks)

from vitheory.config import build_config  # noqa: E402
from vitheory.experiments.sample_complexity import Config as SCConfig  # noqa: E402
from vitheory.train.sgd import train_hinge_sgd  # noqa: E402


def sgemm_gflops(n: int) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * n ** 3 / best / 1e9


def _timed(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def trainer(K: int, steps: int) -> tuple[float, float]:
    """(GFLOP counted, seconds) of one batched training of K models."""
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

    def run():
        model, X, y, n, lr, gens = _setup(cfg, trials)
        return model, (lambda: train_hinge_sgd(model, X, y, n, steps=steps, batch=cfg.batch, lr=lr, generators=gens))
    _, train = run()
    counter = FlopCounter()
    with counter:
        train()
    flops = counter.total
    _, train = run()
    seconds = _timed(train)
    return flops / 1e9, seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--K", type=int, default=220)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--n", type=int, default=2048)
    a = ap.parse_args()
    peak = sgemm_gflops(a.n)
    gflop, sec = trainer(a.K, a.steps)
    rate = gflop / sec
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"sgemm [{a.n}x{a.n}]@[{a.n}x{a.n}]: {peak:.1f} GFLOP/s")
    print(f"trainer: K={a.K} models x {a.steps} steps, {gflop:.2f} GFLOP of matrix products in {sec:.2f} s: "
          f"{rate:.1f} GFLOP/s")
    print(f"fraction of sgemm peak: {rate / peak:.3f}")


if __name__ == "__main__":
    main()

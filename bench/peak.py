"""The batched shallow-ViT trainer against the hardware: its GFLOP/s over a large sgemm's, in one run.

    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/peak.py [--K 220] [--steps 40] [--n 2048] [--autograd]

sgemm: the best of 5 float32 [n x n] @ [n x n] products (2 n^3 FLOP each) on this process's torch threads.
Trainer: ``train_hinge_sgd`` on K models of the sample-complexity default size (eval_every=0, so every model runs
every step), timed as it runs in the experiments; its FLOPs are the matrix products (forward and backward)
counted with torch's FLOP formulas (``torch.utils.flop_counter``) in a separate, untimed run of the same training.
Elementwise work (softmax, hinge, updates) is not counted, so the fraction is a floor of the useful rate.
``--autograd``: the trainer's autograd path (``fused=False``) instead of its hand-written backward (train/fused.py);
without it the trainer is called exactly as the experiments call it (so this script also times older checkouts).
Both sides are also timed in process CPU time (one thread: the CPU the process got), printed before the wall-clock
fraction: on a machine shared with other jobs the wall-clock fraction compares a best-of-5 sgemm against one long
training run, so it moves with the load; the CPU-time fraction moves less.
Prints, last, ``fraction of sgemm peak: F`` (wall clock).
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


def sgemm_gflops(n: int) -> tuple[float, float]:
    """GFLOP/s of the best of 5 products: (wall clock, process CPU time)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = [_timed(lambda: a @ b) for _ in range(5)]
    return 2 * n ** 3 / min(t[0] for t in times) / 1e9, 2 * n ** 3 / min(t[1] for t in times) / 1e9


def _timed(f) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    f()
    return time.perf_counter() - t0, time.process_time() - c0


def trainer(K: int, steps: int, fused: bool = True) -> tuple[float, float, float]:
    """(GFLOP counted, wall seconds, CPU seconds) of one batched training of K models."""
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
        return model, (lambda: train_hinge_sgd(model, X, y, n, steps=steps, batch=cfg.batch, lr=lr, generators=gens,
                                                    **({} if fused else {"fused": False})))
    _, train = run()
    counter = FlopCounter()
    with counter:
        train()
    flops = counter.total
    _, train = run()
    seconds, cpu = _timed(train)
    return flops / 1e9, seconds, cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--K", type=int, default=220)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--autograd", action="store_true", help="the trainer's autograd path (fused=False)")
    a = ap.parse_args()
    peak, peak_cpu = sgemm_gflops(a.n)
    gflop, sec, cpu = trainer(a.K, a.steps, fused=not a.autograd)
    rate = gflop / sec
    print(f"torch threads: {torch.get_num_threads()}; trainer path: {'autograd (fused=False)' if a.autograd else 'default (as the experiments call it)'}")
    print(f"sgemm [{a.n}x{a.n}]@[{a.n}x{a.n}]: {peak:.1f} GFLOP/s ({peak_cpu:.1f} per CPU second)")
    print(f"trainer: K={a.K} models x {a.steps} steps, {gflop:.2f} GFLOP of matrix products in {sec:.2f} s "
          f"({cpu:.2f} CPU s): {rate:.1f} GFLOP/s ({gflop / cpu:.1f} per CPU second)")
    print(f"fraction of sgemm peak in CPU time: {gflop / cpu / peak_cpu:.3f}")
    print(f"fraction of sgemm peak: {rate / peak:.3f}")


if __name__ == "__main__":
    main()

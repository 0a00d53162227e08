"""Step time of the memorization kernels on one group of the default memorization-heads scale (issue 14).

Times ``memorize`` for ``--steps`` steps (early stop off, evaluation at the first and last step only) with the
autograd query-row kernel and the hand-fused kernel, interleaved, ``--repeat`` times, for all K models of the
group and (``--single``) for one model alone.  Run:

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/memorization_kernels.py --context shared --H 8
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time

import torch

from vitheory.experiments import _memorization as C
from vitheory.experiments.base import get_experiment, resolve_config
from vitheory.train.memorize import memorize


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--context", default="shared")
    p.add_argument("--H", type=int, default=8)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--single", action="store_true", help="also time one model alone")
    p.add_argument("--kernels", default="query_row,fused")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = resolve_config(get_experiment("memorization-heads"), "default",
                         {"contexts": args.context, "heads": str(args.H)})
    trials = C.make_trials(cfg, [{"H": args.H, "n": cfg.n, "d_head": cfg.d}])
    ds = [C.make_data(cfg, t) for t in trials]
    for K in ([len(trials), 1] if args.single else [len(trials)]):
        for _ in range(args.repeat):
            for kernel in args.kernels.split(","):
                tc = dataclasses.replace(cfg.train_config(), min_train_steps=args.steps, max_train_steps=args.steps,
                                         train_epochs=0, eval_every=args.steps, early_stop=False, attention=kernel)
                m = C.build_models(cfg, trials[:K], "cpu")
                t0 = time.perf_counter()
                memorize(m, ds[:K], [t["seed"] for t in trials[:K]], tc)
                dt = time.perf_counter() - t0
                print(f"K={K} {args.context} H={args.H} {kernel}: {dt / args.steps * 1e3:.2f} ms/step "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Diagnostics behind the sample-complexity calibration (numbers quoted in README "Project choices").

    python bench/calibration_floor.py plateau [--inv2 14] [--Ns 160,400,1600] [--seeds 20] [--set key=value ...]
        success rate and mean test error of the shallow ViT against N at one alpha_*^-2, with the
        sample-complexity config (defaults of that experiment unless --set overrides them); shows whether
        the success rate keeps rising with N or stops at a floor.
    python bench/calibration_floor.py pooling [--n 200000]
        test error of two fixed classifiers on the token data model (no training): the mean-pooling
        statistic sum_l x_l . (o_1 - o_2), and the vote of each token's nearest pattern; per noise kind,
        tau and alpha_*^-2.  A trained model that keeps near-uniform attention behaves like the first.
    python bench/calibration_floor.py errors [--inv2 14] [--N 400] [--seeds 20] [--n 20000] [--set key=value ...]
        trains ``seeds`` models at one cell, tests each on n fresh samples and counts its errors by the
        sample's vote gap (#relevant - #confusion tokens): where the floor comes from.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from vitheory.config import build_config, parse_overrides
from vitheory.data.tokens import make_patterns, sample_tokens
from vitheory.experiments import _shallow as S
from vitheory.experiments.sample_complexity import Config


def plateau(inv2: float, Ns: list[int], seeds: int, sets: list[str]) -> None:
    cfg = build_config(Config, parse_overrides(sets))
    print(f"alpha_*^-2 = {inv2:g}; L={cfg.L} d={cfg.d} tau={cfg.tau:g} ({cfg.noise}) sigma={cfg.sigma:g} "
          f"qk_reference={cfg.qk_reference}; {seeds} seeds, {cfg.n_test} test samples each")
    for N in Ns:
        t0 = time.perf_counter()
        trials = [{"model": "vit", "alpha_star": inv2 ** -0.5, "N": N, "seed": s} for s in range(seeds)]
        m = S.train_trials(cfg, trials, "cpu")[0]
        te = np.array([x["test_error"] for x in m])
        print(f"  N={N:5d}: success rate {np.mean(te == 0):.2f}, mean test error {te.mean():.2e}, "
              f"max {te.max():.2e} ({time.perf_counter() - t0:.1f} s)", flush=True)


def pooling(n: int) -> None:
    for noise in ("gaussian", "bounded"):
        for tau in (2.0, 3.0, 4.0):
            for inv2 in (4, 14):
                P = make_patterns(256, 4, generator=torch.Generator().manual_seed(0))
                s = sample_tokens(P, n, L=16, alpha_star=inv2 ** -0.5, alpha_conf=0.04, tau=tau, noise=noise,
                                  generator=torch.Generator().manual_seed(1))
                pooled = (s.X @ (P[0] - P[1])).sum(1)
                nearest = (s.X @ P.T).argmax(-1)
                vote = (nearest == 0).sum(1) - (nearest == 1).sum(1)
                print(f"{noise:8s} tau={tau:g} alpha_*^-2={inv2:2d}: mean-pooling error "
                      f"{((s.y * pooled) <= 0).float().mean().item():.2e}, nearest-pattern vote error "
                      f"{((s.y * vote) <= 0).float().mean().item():.2e}  ({n} samples, L=16, d=256)")


def errors(inv2: float, N: int, seeds: int, n: int, sets: list[str]) -> None:
    from vitheory.data.tokens import CONFUSION, RELEVANT
    from vitheory.train.sgd import predict
    cfg = build_config(Config, parse_overrides(sets))
    trials = [{"model": "vit", "alpha_star": inv2 ** -0.5, "N": N, "seed": s} for s in range(seeds)]
    _, model, patterns, _ = S.train_trials(cfg, trials, "cpu")
    g = torch.Generator().manual_seed(999)
    tests = [S.draw(cfg, t, p, n, g) for t, p in zip(trials, patterns)]
    yF = torch.stack([s.y for s in tests]) * predict(model, torch.stack([s.X for s in tests]))
    gap = torch.stack([(s.category == RELEVANT).sum(1) - (s.category == CONFUSION).sum(1) for s in tests])
    bad = yF <= 0
    print(f"alpha_*^-2 = {inv2:g}, N = {N}, {seeds} models, {n} fresh test samples each")
    print(f"  models with >= 1 error: {int(bad.any(1).sum())}; test error per model: "
          + ", ".join(f"{v:.1e}" for v in bad.float().mean(1).tolist()))
    for v in gap.unique().tolist():
        sel = gap == v
        print(f"  vote gap {v}: {int(sel.sum())} samples, {int((bad & sel).sum())} errors")


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("plateau")
    a.add_argument("--inv2", type=float, default=14.0)
    a.add_argument("--Ns", default="160,400,1600")
    a.add_argument("--seeds", type=int, default=20)
    a.add_argument("--set", action="append", default=[])
    b = sub.add_parser("pooling")
    b.add_argument("--n", type=int, default=200_000)
    c = sub.add_parser("errors")
    c.add_argument("--inv2", type=float, default=14.0)
    c.add_argument("--N", type=int, default=400)
    c.add_argument("--seeds", type=int, default=20)
    c.add_argument("--n", type=int, default=20000)
    c.add_argument("--set", action="append", default=[])
    args = p.parse_args(argv)
    if args.what == "errors":
        errors(args.inv2, args.N, args.seeds, args.n, args.set)
    elif args.what == "plateau":
        plateau(args.inv2, [int(v) for v in args.Ns.split(",")], args.seeds, args.set)
    else:
        pooling(args.n)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmarks of the paper-1 trainer (results go to docs/benchmarks.md by hand, with this command).

    python bench/bench_shallow.py batched [--K 200 --steps 50] [--set d=16 ...]
        K models trained as one tensor program vs the same K models one at a time (same math, same
        steps, same data); prints both times, the speed-up and the largest parameter difference.
    python bench/bench_shallow.py batch [--model vit|cnn] [--scale paper] [--set key=value ...]
        one batch of the paper-scale grid (its last ``batch_models`` trials of that model: the hardest
        alpha_*, every N) through ``run_trials``: data, training, evaluation and test, timed by part.
    python bench/bench_shallow.py kernels
        the two choices quoted in train/sgd.py, at K = 220 models of the default size: evaluation forward
        passes in chunks of 256 vs 16 samples (ViT and CNN), and the mini-batch gather into fresh memory
        vs into a reused buffer.
    python bench/bench_shallow.py fused [--groups 0,8,16,32] [--K 220]
        best CPU time per training step (6 repeats of 3 steps) of the autograd path (group 0) and of the
        hand-written backward of train/fused.py with that many models per group, K models of the default size.
    python bench/bench_shallow.py grid [--scale paper] [--set key=value ...]
        the sample-complexity grid (Figure 1a; --experiment cnn-sample-complexity for Figure 1b) end to
        end through the public API, in a temporary run folder (or --out).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

from vitheory.config import build_config
from vitheory.experiments import _shallow as S
from vitheory.experiments.sample_complexity import Config as SCConfig
from vitheory.train.sgd import train_hinge_sgd


def _setup(cfg, trials, device="cpu"):
    patterns = [S.trial_patterns(cfg, t) for t in trials]
    train = [S.draw(cfg, t, p, int(t["N"]), S.generator(t["seed"], S.TRAIN)) for t, p in zip(trials, patterns)]
    X, y, n = S.stack_padded(train, device)
    model = S.build_models(cfg, trials, patterns, device)
    lr = torch.tensor([S.TrialParams.of(cfg, t).lr for t in trials])
    gens = [S.generator(t["seed"], S.SGD) for t in trials]
    return model, X, y, n, lr, gens


def bench_batched(K: int, steps: int, sets: list[str] | None = None) -> None:
    # eval_every=0: no retirement, so both sides run exactly `steps` steps on every model
    from vitheory.config import parse_overrides
    cfg = build_config(SCConfig, {**parse_overrides(sets or []), "steps": steps, "eval_every": 0})
    trials = [{"model": "vit", "alpha_star": (4 + (k % 11)) ** -0.5, "N": 40 * (1 + k % 10), "seed": k}
              for k in range(K)]
    model, X, y, n, lr, gens = _setup(cfg, trials)
    t0 = time.perf_counter()
    train_hinge_sgd(model, X, y, n, steps=steps, batch=cfg.batch, lr=lr, generators=gens)
    t_batched = time.perf_counter() - t0
    t_single = 0.0
    max_diff = 0.0
    for k, t in enumerate(trials):
        m1, X1, y1, n1, lr1, g1 = _setup(cfg, [t])
        t0 = time.perf_counter()
        train_hinge_sgd(m1, X1, y1, n1, steps=steps, batch=cfg.batch, lr=lr1, generators=g1)
        t_single += time.perf_counter() - t0
        for name, p in m1.params().items():
            max_diff = max(max_diff, float((p[0] - model.params()[name][k]).detach().abs().max()))
    print(f"K={K} models, {steps} SGD steps each (d={cfg.d}, L={cfg.L}, m={cfg.m}, B={cfg.batch}), "
          f"torch threads={torch.get_num_threads()}")
    print(f"  batched : {t_batched:8.2f} s")
    print(f"  one by one: {t_single:8.2f} s")
    print(f"  speed-up: {t_single / t_batched:.1f}x   max |param difference| = {max_diff:.2e}")


def bench_grid(scale: str, sets: list[str], experiment: str, out: str | None = None) -> None:
    from vitheory.config import parse_overrides
    from vitheory.sweep.runner import run_experiment
    over = parse_overrides(sets)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        df = run_experiment(experiment, scale=scale, overrides=over, out=out or os.path.join(d, "run"),
                            progress=True)
        dt = time.perf_counter() - t0
        print(f"{experiment}: {len(df)} trainings (scale={scale}) end to end incl. report: {dt:.1f} s "
              f"({dt / 60:.2f} min), torch threads={torch.get_num_threads()}")
        print(open(os.path.join(out or os.path.join(d, "run"), "report.md")).read().split("<details>")[0])


def bench_batch(model: str, scale: str, sets: list[str]) -> None:
    import cProfile
    import pstats
    from vitheory.config import parse_overrides
    from vitheory.experiments.base import registry, resolve_config
    over = parse_overrides(sets)
    for exp in registry().values():     # the experiment whose grid trains this model (works across versions)
        if exp.name.endswith("sample-complexity"):
            cfg = resolve_config(exp, scale, over)
            trials = [t for t in exp.trials(cfg) if t.get("model") == model]
            if trials:
                break
    batch = trials[-cfg.batch_models:]
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    exp.run_trials(cfg, batch, "cpu")
    prof.disable()
    dt = time.perf_counter() - t0
    stats = pstats.Stats(prof).stats
    def cum(fn_name: str) -> float:
        return sum(v[3] for k, v in stats.items() if k[2] == fn_name)
    print(f"{exp.name} ({scale}): one batch of {len(batch)} {model} trials (alpha_* = {batch[-1]['alpha_star']:.3f}, "
          f"N = {min(t['N'] for t in batch)}..{max(t['N'] for t in batch)}): {dt:.1f} s, of which "
          f"training loop {cum('train_hinge_sgd'):.1f} s (its evaluations {cum('evaluate'):.1f} s), "
          f"test {cum('test_metrics'):.1f} s, data generation {cum('sample_tokens'):.1f} s")


def bench_kernels(K: int = 220) -> None:
    from vitheory.models.cnn import CNNConfig, TokenCNN, matched_width
    from vitheory.models.shallow_vit import ShallowViT, ShallowViTConfig
    from vitheory.train.sgd import predict

    def best_of(f, reps: int = 3) -> float:
        f()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        return min(times)
    cfg = SCConfig()
    gens = [torch.Generator().manual_seed(k) for k in range(K)]
    P = torch.linalg.qr(torch.randn(cfg.d, cfg.M))[0].T
    vcfg = ShallowViTConfig(d=cfg.d, m=cfg.m, d_k=cfg.d_k, d_v=cfg.d_v)
    vit = ShallowViT(vcfg, P, gens)
    cnn = TokenCNN(CNNConfig(d=cfg.d, m=matched_width(vit.num_parameters(), cfg.d, cfg.cnn_kernel),
                             kernel=cfg.cnn_kernel), gens)
    X = torch.randn(K, 256, cfg.L, cfg.d)
    for name, model in (("ViT", vit), ("CNN", cnn)):
        big = best_of(lambda: predict(model, X, chunk=256), 5)
        small = best_of(lambda: predict(model, X, chunk=16), 5)
        print(f"{name} forward of {K} models x 256 samples: chunk 256 {big * 1e3:.0f} ms, chunk 16 "
              f"{small * 1e3:.0f} ms ({big / small:.2f}x)")
    Nmax, B = 800, cfg.batch
    Xp = torch.randn(K * Nmax, cfg.L * cfg.d)
    flat = (torch.arange(K)[:, None] * Nmax + torch.randint(Nmax, (K, B))).flatten()
    buf = torch.empty(K * B, cfg.L * cfg.d)
    fresh = best_of(lambda: torch.index_select(Xp, 0, flat), 10)
    reused = best_of(lambda: torch.index_select(Xp, 0, flat, out=buf), 10)
    print(f"mini-batch gather of {K} x {B} samples: fresh memory {fresh * 1e3:.1f} ms, reused buffer "
          f"{reused * 1e3:.1f} ms ({fresh / reused:.1f}x)")
    # what the CPU delivers on the trainer's dominant product (B L tokens x d) @ (d x (2 d_k + d_v))
    BL, e = B * cfg.L, 2 * cfg.d_k + cfg.d_v
    A, W, G = torch.randn(K, BL, cfg.d), torch.randn(K, e, cfg.d), torch.randn(K, BL, e)
    flops = 2 * K * BL * cfg.d * e
    fwd = best_of(lambda: torch.bmm(A, W.transpose(1, 2)), 10)
    bwd = best_of(lambda: torch.bmm(G.transpose(1, 2), A), 10)
    big_a, big_b = torch.randn(256, 256), torch.randn(256, 9600)
    big = best_of(lambda: big_a @ big_b, 10)
    print(f"bmm [{BL}x{cfg.d}]@[{cfg.d}x{e}] x {K}: {flops / fwd / 1e9:.0f} GFLOP/s, its weight gradient "
          f"{flops / bwd / 1e9:.0f} GFLOP/s; one [256x256]@[256x9600] GEMM {2 * 256 * 256 * 9600 / big / 1e9:.0f} GFLOP/s")


def bench_fused(groups: list[int], K: int = 220, steps: int = 3, repeats: int = 6) -> None:
    import vitheory.train.fused as fused_mod
    cfg = build_config(SCConfig, {"steps": steps, "eval_every": 0})
    trials = [{"model": "vit", "alpha_star": (4 + (k % 11)) ** -0.5, "N": 40 * (1 + k % 10), "seed": k}
              for k in range(K)]
    model, X, y, n, lr, gens = _setup(cfg, trials)
    best = {g: float("inf") for g in groups}
    default = fused_mod.GROUP
    try:
        for _ in range(repeats):
            for g in groups:
                fused_mod.GROUP = g or default
                t0 = time.process_time()
                train_hinge_sgd(model, X, y, n, steps=steps, batch=cfg.batch, lr=lr, generators=gens, fused=g > 0)
                best[g] = min(best[g], (time.process_time() - t0) / steps)
    finally:
        fused_mod.GROUP = default
    print(f"K={K}, best CPU ms per step over {repeats} x {steps} steps, torch threads={torch.get_num_threads()}: "
          + ", ".join(f"{'autograd' if g == 0 else f'fused G={g}'} {v * 1e3:.0f}" for g, v in best.items()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="what", required=True)
    b = sub.add_parser("batched")
    b.add_argument("--K", type=int, default=200)
    b.add_argument("--steps", type=int, default=50)
    b.add_argument("--set", action="append", default=[], help="model/data overrides, e.g. d=16")
    c = sub.add_parser("batch")
    c.add_argument("--model", default="vit", choices=["vit", "cnn"])
    c.add_argument("--scale", default="paper")
    c.add_argument("--set", action="append", default=[])
    sub.add_parser("kernels")
    f = sub.add_parser("fused")
    f.add_argument("--groups", default="0,8,16,32", help="models per group; 0 = the autograd path")
    f.add_argument("--K", type=int, default=220)
    g = sub.add_parser("grid")
    g.add_argument("--scale", default="paper")
    g.add_argument("--set", action="append", default=[])
    g.add_argument("--experiment", default="sample-complexity",
                   help="sample-complexity (Figure 1a) or cnn-sample-complexity (Figure 1b)")
    g.add_argument("--out", default=None, help="keep the run folder here (default: a temporary folder)")
    args = p.parse_args(argv)
    if args.what == "batched":
        bench_batched(args.K, args.steps, args.set)
    elif args.what == "fused":
        bench_fused([int(g) for g in args.groups.split(",")], args.K)
    elif args.what == "kernels":
        bench_kernels()
    elif args.what == "batch":
        bench_batch(args.model, args.scale, args.set)
    else:
        bench_grid(args.scale, args.set, args.experiment, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

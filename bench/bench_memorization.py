"""Throughput of the memorization trainer: batched query-row training against one model at a time with full
attention (issue 4).

For each context type, the models of one group of the default memorization-heads scale (every T of the grid x
every seed, at one H) are trained for the same number of steps with the same hyperparameters, four ways:

  batched / query_row : all K models as one tensor program, only the query row of attention (vitheory's path)
  batched / full      : all K models as one program, full (n+1) x (n+1) attention
  single  / query_row : one model at a time, query row only
  single  / full      : one model at a time, full attention over all positions (the reference's program shape)

Throughput = model-steps per second (a model-step is one Adam step of one model on a batch of 256).  The single
runs train ``--single-models`` of the K models and are scaled to K (every model runs the same number of steps;
early stop is off).  Run:

    .venv/bin/python bench/bench_memorization.py                  # default scale, both contexts, H=8
    .venv/bin/python bench/bench_memorization.py --H 4 --steps 300 --json /tmp/bench.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time

import torch

from vitheory.experiments.base import get_experiment, resolve_config
from vitheory.experiments._memorization import build_models, make_data, make_trials
from vitheory.train.memorize import memorize


def _train_seconds(cfg, trials, attention: str, steps: int, device: str) -> float:
    tc = cfg.train_config()
    tc = dataclasses.replace(tc, min_train_steps=steps, max_train_steps=steps, train_epochs=0, eval_every=steps,
                             early_stop=False, attention=attention)
    datasets = [make_data(cfg, t) for t in trials]
    model = build_models(cfg, trials, device)
    t0 = time.perf_counter()
    res = memorize(model, datasets, [t["seed"] for t in trials], tc)
    dt = time.perf_counter() - t0
    assert res.model_steps == steps * len(trials)
    return dt


def run(cfg, trials, attention: str, steps: int, device: str, repeat: int = 1) -> float:
    """Seconds of ``steps`` training steps of ``trials`` as one batch, evaluations excluded: a run of ``steps``
    steps minus a run of 1 step (both evaluate at their first and last step), scaled by steps / (steps - 1);
    the best of ``repeat`` measurements (other processes share the cores: the minimum is the least disturbed)."""
    best = float("inf")
    for _ in range(repeat):
        t_long = _train_seconds(cfg, trials, attention, steps, device)
        t_one = _train_seconds(cfg, trials, attention, 1, device)
        if t_long > t_one:
            best = min(best, (t_long - t_one) * steps / (steps - 1))
    return best if best < float("inf") else float("nan")   # nan: too few steps to see past the timing noise


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--contexts", default="shared,random")
    p.add_argument("--H", type=int, default=8, help="heads of the benchmarked group")
    p.add_argument("--steps", type=int, default=200, help="training steps per model (>= 2)")
    p.add_argument("--single-models", type=int, default=2, help="models timed one at a time (scaled to K)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3, help="measurements per variant; the best is reported")
    p.add_argument("--device", default="cpu")
    p.add_argument("--scale", default="default", help="scale of memorization-heads whose group is timed: default "
                   "(d=16, n=8) or paper (d=64, n=32, the public code's setting)")
    p.add_argument("--T", default=None, help="override the T grid (comma list); the step time does not depend on T "
                   ">= batch, and a small T keeps the two evaluations of each run cheap")
    p.add_argument("--seeds", type=int, default=None, help="seeds per T (K = len(T grid) x seeds)")
    p.add_argument("--attentions", default="full,query_row,fused",
                   help="kernels to time: full (autograd, (n+1)x(n+1) attention), query_row (autograd, query row "
                        "only), fused (hand-fused query row, the default)")
    p.add_argument("--batched-attentions", default=None,
                   help="kernels timed as one batch of K models (default: --attentions); batched full attention "
                        "at the paper setting takes minutes per step")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error("--steps must be >= 2 (the step time is a steps-long run minus a 1-step run)")
    torch.set_num_threads(args.threads)
    cfg = resolve_config(get_experiment("memorization-heads"), args.scale,
                         {"contexts": args.contexts, "heads": str(args.H), "threads": str(args.threads),
                          **({"T_shared": args.T, "T_random": args.T} if args.T else {})}, args.seeds)
    results = []
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads={args.threads}, "
          f"device={args.device}, load average {os.getloadavg()[0]:.2f}")
    print(f"{args.scale} scale: d={cfg.d}, n={cfg.n}, H={args.H}, d_h={cfg.d}, batch={cfg.batch_size}, "
          f"steps={args.steps}")
    print("| context | K models | program | attention | seconds (K models) | model-steps/s | vs single/{kernels0} |".format(kernels0=args.attentions.split(",")[0]))
    print("|---|---|---|---|---|---|---|")
    for context in cfg.contexts:
        trials = [t for t in make_trials(cfg, [{"H": args.H, "n": cfg.n, "d_head": cfg.d}]) if t["context"] == context]
        K = len(trials)
        timings = {}
        kernels = args.attentions.split(",")
        batched_kernels = (args.batched_attentions or args.attentions).split(",")
        for program in ("single", "batched"):
            for attention in (kernels if program == "single" else batched_kernels):
                if program == "batched":
                    sec = run(cfg, trials, attention, args.steps, args.device, args.repeat)
                else:
                    m = min(args.single_models, K)
                    sec = sum(run(cfg, [t], attention, args.steps, args.device, args.repeat)
                              for t in trials[:m]) * K / m
                timings[(program, attention)] = sec
        base = timings[("single", kernels[0])]
        for (program, attention), sec in timings.items():
            thr = K * args.steps / sec
            row = {"context": context, "K": K, "H": args.H, "program": program, "attention": attention,
                   "seconds": sec, "model_steps_per_s": thr, "speedup": base / sec}
            results.append(row)
            print(f"| {context} | {K} | {program} | {attention} | {sec:.1f} | {thr:.0f} | {base / sec:.1f}x |",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "torch": torch.__version__, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

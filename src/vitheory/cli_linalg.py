"""The ``vitheory kruskal`` and ``vitheory assumptions`` subcommands: thin layers over :mod:`vitheory.linalg`.

    vitheory kruskal FILE.npy|FILE.pt [--exact | --samples S [--k K]] [--tol X] [--columns] [--json]
    vitheory assumptions FILE [--query-index I] [--samples S] [--tol X] [--mode float64|paper] [--curve] [--json]

``kruskal`` reads a 2-D array whose rows are the vectors (``--columns``: its columns, toqito's convention);
``assumptions`` reads a 3-D array (T examples, n tokens, d dims).  Files: ``.npy`` (read with
``allow_pickle=False``) or ``.pt`` (``torch.load(weights_only=True)``).  Bad input ends with a one-line error and
exit code 2 (the CLI turns :class:`~vitheory.config.ConfigError` into that).
"""
from __future__ import annotations

import json
import math

import numpy as np


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


def _g(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def format_kruskal(r) -> str:
    lines = [f"{r.n_vectors} vectors in R^{r.dim}, tolerance {r.tol:g} on sigma_min of unit vectors, "
             f"numerical rank {r.numerical_rank}"]
    if r.certified:
        lines.append(f"Kruskal rank: {r.kruskal_rank} (certified: every {r.kruskal_rank}-subset checked, "
                     f"{r.subsets_checked} subsets, {r.exact_svds} SVDs, {r.seconds:.3g} s)")
    else:
        lines.append(f"Kruskal rank: not certified within the budget; {r.lower_bound} <= k-rank <= {r.upper_bound}")
    if r.witness is not None:
        lines.append(f"witness: vectors {list(r.witness)} are dependent (sigma_min {_g(r.witness_sigma_min)})")
    if r.margin is not None:
        lines.append(f"margin: {'' if r.margin_exact else '>= '}{r.margin:.4g} (smallest sigma_min over all "
                     f"{r.kruskal_rank}-subsets{'' if r.margin_subset is None else ', at ' + str(list(r.margin_subset))})")
    for s in r.steps:
        lines.append(f"  - {s}")
    return "\n".join(lines)


def format_sampled(c) -> str:
    ci = "exact (every subset tested)" if c.exhaustive else f"{int(c.ci_level * 100)}% CI [{c.ci_low:.4f}, {c.ci_high:.4f}]"
    tol = f"tolerance {c.tol:g}" if c.mode == "float64" else "float32 torch default tolerance (paper mode)"
    lines = [f"{c.n_vectors} vectors in R^{c.dim}, {c.n_subsets} subsets of size k = {c.k}, {tol}",
             f"full rank: {c.n_full_rank}/{c.n_subsets} = {c.fraction:.4g}, {ci}",
             "ranks: " + ", ".join(f"{k}: {v}" for k, v in sorted(c.rank_hist.items()))]
    if c.margin is not None:
        lines.append(f"margin: {c.margin:.4g} (smallest sigma_min among the full-rank subsets)")
    if c.n_svd_fallback:
        lines.append(f"{c.n_svd_fallback} subsets decided by SVD (Gram eigenvalues within the rounding band)")
    lines.append("a sampled fraction is an estimate, not a certificate")
    return "\n".join(lines)


def format_curve(cv) -> str:
    lines = [f"{cv.n_vectors} vectors in R^{cv.dim}, {cv.n_subsets} random orderings, tolerance {cv.tol:g}, "
             f"numerical rank {cv.numerical_rank}", "k      fraction   95% CI"]
    lines += [f"{k:<6d} {f:<10.4g} [{lo:.4f}, {hi:.4f}]" for k, f, lo, hi in zip(cv.ks, cv.fractions, cv.ci_low, cv.ci_high)]
    lines.append(f"estimated Kruskal rank (largest k with fraction >= {cv.pass_fraction} on the grid): {cv.estimate}")
    return "\n".join(lines)


def emit(text: str) -> int:
    """Print a command's output and return exit code 0 (a reader that stops early is handled by ``cli.main``)."""
    print(text, flush=True)
    return 0


def cmd_kruskal(args) -> int:
    from vitheory.config import ConfigError
    from vitheory.linalg import kruskal_rank, load_array, sampled_kruskal_curve, sampled_rank_check
    if args.exact and args.samples is not None:
        raise ConfigError("--exact and --samples exclude each other")
    if args.k is not None and args.samples is None:
        raise ConfigError("--k needs --samples S (the sampled check); the exact computation needs no k")
    from vitheory.linalg import as_vectors
    from vitheory.linalg.inputs import torch_device
    torch_device(args.device)                      # a device this torch cannot use fails before any work
    x, _ = as_vectors(load_array(args.file), args.file, keep_dtype=True)
    if args.columns:
        x = x.T
    if args.samples is not None:
        if args.k is not None:
            res = sampled_rank_check(x, args.k, args.samples, args.tol, seed=args.seed, mode=args.mode,
                                     spectra=args.margins, device=args.device)
            text = format_sampled(res)
        else:
            if args.mode != "float64":
                raise ConfigError("--mode paper needs --k (the curve is computed in float64 mode)")
            res = sampled_kruskal_curve(x, None, args.samples, args.tol, seed=args.seed, device=args.device)
            text = format_curve(res)
    else:
        res = kruskal_rank(x, args.tol, max_subsets=args.max_subsets, time_limit=args.time_limit)
        text = format_kruskal(res)
    return emit(json.dumps(res.to_dict(), default=_json_default, indent=1) if args.json else text)


def cmd_assumptions(args) -> int:
    from vitheory.linalg import as_vectors, check_assumptions, load_array
    from vitheory.linalg.inputs import torch_device
    torch_device(args.device)
    x, _ = as_vectors(load_array(args.file), args.file, ndim=3, keep_dtype=True)
    rep = check_assumptions(x, args.query_index, n_subsets=args.samples, tol=args.tol, seed=args.seed,
                            mode=args.mode, pass_fraction=args.pass_fraction, curve=bool(args.curve),
                            spectra=args.margins, device=args.device)
    return emit(json.dumps(rep.to_dict(), default=_json_default, indent=1) if args.json else rep.summary())


def add_commands(sub) -> None:
    """Register ``kruskal`` and ``assumptions`` on an argparse subparsers object."""
    s = sub.add_parser("kruskal", help="Kruskal rank of the rows of a .npy/.pt matrix (exact, or sampled)")
    s.add_argument("file", help="a 2-D .npy or .pt array whose rows are the vectors")
    s.add_argument("--exact", action="store_true", help="exact Kruskal rank with certificate (the default)")
    s.add_argument("--samples", type=int, default=None, metavar="S", help="sampled check with S random subsets")
    s.add_argument("--k", type=int, default=None, metavar="K", help="subset size of the sampled check "
                   "(without it: the sampled curve over k)")
    s.add_argument("--tol", type=float, default=None, help="tolerance on sigma_min of unit vectors "
                   "(default: 1e-10 for float64 input, 1e-5 for float32; integer input without --tol: the exact "
                   "k-rank in exact arithmetic)")
    s.add_argument("--columns", action="store_true", help="the vectors are the columns")
    s.add_argument("--mode", default="float64", choices=["float64", "paper"], help="sampled check convention")
    s.add_argument("--margins", action="store_true", help="sampled check: smallest singular value of every subset")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--max-subsets", type=int, default=200_000_000, help="exact: largest level enumerated")
    s.add_argument("--time-limit", type=float, default=None, help="exact: stop with bounds after this many seconds")
    s.add_argument("--device", default="cpu")
    s.add_argument("--json", action="store_true", help="print the full result as JSON")
    s.set_defaults(func=cmd_kruskal)

    s = sub.add_parser("assumptions", help="General Position, Assumption 1 and 2 of a (T, n, d) token array")
    s.add_argument("file", help="a 3-D .npy or .pt array: T examples x n tokens x d dims")
    s.add_argument("--query-index", type=int, default=0, help="index of the query token (default 0, [CLS])")
    s.add_argument("--samples", type=int, default=5000, help="random subsets per sampled check (paper: 5000)")
    s.add_argument("--tol", type=float, default=None, help="tolerance on sigma_min of unit vectors")
    s.add_argument("--mode", default="float64", choices=["float64", "paper"])
    s.add_argument("--pass-fraction", type=float, default=0.99, help="a sampled check holds at this fraction")
    s.add_argument("--curve", action="store_true", help="also the sampled Kruskal-rank curve of the queries")
    s.add_argument("--margins", action=__import__("argparse").BooleanOptionalAction, default=True,
                   help="smallest singular values of every subset (default on)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="cpu")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_assumptions)

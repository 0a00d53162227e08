"""The ``vitheory`` command line: a thin layer over the public API.

    vitheory list
    vitheory show EXPERIMENT                      (its parameters, defaults and scale presets)
    vitheory run EXPERIMENT [--scale smoke|default|paper] [--set key=value ...] [--seeds K] [--out DIR]
                 [--executor local|dask [--scheduler ADDRESS | --workers N]]
    vitheory report DIR
    vitheory reproduce [--scale ...] [--out DIR] [--only a,b] [--executor local|dask ...]
    vitheory export DIR [--format csv|parquet] [--output FILE]
    vitheory kruskal FILE.npy|FILE.pt [--exact | --samples S --k K] [--tol X]
    vitheory assumptions FILE [--query-index I]

Bad input ends with a one-line ``error: ...`` naming the parameter and the allowed range, exit code 2,
before anything is written.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

from vitheory.config import ConfigError, describe_fields, parse_overrides

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2
        raise ConfigError(message)


def _default_out(name: str, scale: str) -> str:
    return os.path.join("runs", f"{name}-{scale}-{time.strftime('%Y%m%d-%H%M%S')}")


def cmd_list(args) -> int:
    from vitheory.experiments.base import registry
    for exp in registry().values():
        print(f"{exp.name:26s} {exp.paper} · {exp.figure}\n{'':26s} {exp.claim}")
    return 0


def cmd_show(args) -> int:
    from vitheory.experiments.base import SCALES, get_experiment
    exp = get_experiment(args.experiment)
    print(f"{exp.name}: {exp.paper} · {exp.figure}\n{exp.claim}\n")
    print(f"{'parameter':22s} {'type':32s} {'default':>14s}  help")
    for name, tp, default, help_ in describe_fields(exp.config):
        print(f"{name:22s} {tp[:32]:32s} {str(default)[:14]:>14s}  {help_}")
    for s in SCALES:
        print(f"\nscale {s}: {dict(exp.scale_overrides(s)) or '(defaults)'}")
    return 0


def cmd_run(args) -> int:
    overrides = parse_overrides(args.set or [])
    out = args.out if args.out is not None else _default_out(args.experiment, args.scale)
    ex = dict(executor=args.executor, scheduler=args.scheduler, workers=args.workers)
    if args.dry_run:
        from vitheory.sweep.runner import plan_run
        plan = plan_run(args.experiment, scale=args.scale, overrides=overrides, seeds=args.seeds, out=out,
                        device=args.device, **ex)
        print(plan.summary() + "; nothing was run or written (--dry-run)")
        return 0
    from vitheory.report.build import build_report
    from vitheory.sweep.runner import run_experiment
    df = run_experiment(args.experiment, scale=args.scale, overrides=overrides, seeds=args.seeds, out=out,
                        device=args.device, progress=not args.quiet, argv=args.argv, **ex)
    build_report(out)
    print(f"{len(df)} trials in {out}; report: {Path(out) / 'report.md'} and {Path(out) / 'report.html'}")
    return 0


def cmd_report(args) -> int:
    from vitheory.report.build import rebuild
    path = rebuild(args.dir)
    print(f"report: {path}")
    return 0


def cmd_reproduce(args) -> int:
    from vitheory.experiments.base import get_experiment, registry, resolve_config
    from vitheory.report.build import build_combined_report
    from vitheory.config import config_to_dict
    from vitheory.sweep.executors import check_executor, make_executor
    from vitheory.sweep.runner import (check_device_name, check_jobs, prepare_run_folder, resolve_device,
                                       run_experiments)
    check_executor(args.executor, args.scheduler, args.workers)
    check_device_name(args.device)
    check_jobs(args.jobs, args.executor)
    if args.only is None:
        names = list(registry())
    else:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        if not names:
            raise ConfigError(f"--only={args.only!r} names no experiment; give comma-separated names from: "
                              f"{', '.join(registry())}")
    if args.out is not None and str(args.out).strip() == "":
        raise ConfigError("--out is empty; give a folder path (or leave --out out for runs/reproduce-SCALE)")
    root = Path(args.out or os.path.join("runs", f"reproduce-{args.scale}"))
    for n in names:  # validate everything before running anything
        exp = get_experiment(n)
        cfg = resolve_config(exp, args.scale)
        prepare_run_folder(root / n, exp.name, config_to_dict(cfg))
        exp.check_inputs(cfg)
    if args.executor == "local":
        resolve_device(args.device)
    if args.dry_run:
        print(f"{len(names)} experiment(s) checked into {root}: {', '.join(names)}; nothing was run or written "
              "(--dry-run)")
        return 0
    def done(n, sec):
        print(f"== {n} ({args.scale}) done in {sec:.1f} s", flush=True)

    t0 = time.perf_counter()
    if args.jobs > 1:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"--out {root}: cannot create the folder ({e.strerror or e})") from None
        print(f"{len(names)} experiments, {args.jobs} at a time", flush=True)
        run_experiments(names, jobs=args.jobs, on_done=done, scale=args.scale, out=root, device=args.device,
                        argv=args.argv)
    else:
        with make_executor(args.executor, args.scheduler, args.workers) as executor:   # one cluster for every run
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigError(f"--out {root}: cannot create the folder ({e.strerror or e})") from None
            for n in names:
                print(f"== {n} ({args.scale})", flush=True)
                run_experiments([n], scale=args.scale, out=root, device=args.device, progress=not args.quiet,
                                executor=executor, argv=args.argv, on_done=done)
    print(f"all {len(names)} experiments in {time.perf_counter() - t0:.1f} s", flush=True)
    path = build_combined_report(root)
    print(f"report: {path}")
    return 0


def cmd_export(args) -> int:
    from vitheory.report.export import export_trials
    path, n = export_trials(args.dir, args.format, args.output)
    print(f"{n} trials -> {path}")
    return 0


def _workers(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: give an integer in 1..1024") from None
    if not 1 <= n <= 1024:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: give an integer in 1..1024")
    return n


def _executor_options(s: argparse.ArgumentParser) -> None:
    s.add_argument("--executor", default="local", choices=["local", "dask"],
                   help="where batches run: this process, or a Dask cluster (pip install 'vitheory[cluster]')")
    s.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="with --executor dask: join the cluster at tcp://HOST:PORT (else a local cluster is started)")
    s.add_argument("--workers", default=None, type=_workers, metavar="N",
                   help="with --executor dask and no --scheduler: worker processes (default: one per core)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vitheory", description="Vision Transformer theory, as experiments.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("list", help="the experiments, each with its paper, figure and claim")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("show", help="an experiment's parameters and scale presets")
    s.add_argument("experiment")
    s.set_defaults(func=cmd_show)

    s = sub.add_parser("run", help="run one experiment into a run folder (resumes)")
    s.add_argument("experiment")
    s.add_argument("--scale", default="default", choices=["smoke", "default", "paper"])
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a parameter (repeatable)")
    s.add_argument("--seeds", type=int, default=None, help="trials (seeds) per grid cell")
    s.add_argument("--out", default=None, help="run folder (default: runs/NAME-SCALE-TIMESTAMP)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--dry-run", action="store_true", help="check everything and print the plan; run and write nothing")
    _executor_options(s)
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("report", help="rebuild the report of a run folder from stored results only")
    s.add_argument("dir")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("reproduce", help="every experiment, then one report")
    s.add_argument("--scale", default="default", choices=["smoke", "default", "paper"])
    s.add_argument("--out", default=None, help="folder (default: runs/reproduce-SCALE)")
    s.add_argument("--only", default=None, help="comma-separated experiment names")
    s.add_argument("--device", default="auto")
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--dry-run", action="store_true", help="check every experiment's config and folder; run nothing")
    s.add_argument("--jobs", type=int, default=1,
                   help="experiments run at a time, each in its own process (default 1; 2 on a 2-core machine)")
    _executor_options(s)
    s.set_defaults(func=cmd_reproduce)

    s = sub.add_parser("export", help="the trials of a run folder as one flat table (CSV or Parquet)")
    s.add_argument("dir")
    s.add_argument("--format", default="csv", choices=["csv", "parquet"])
    s.add_argument("--output", default=None, help="file to write (default: DIR/trials.csv or DIR/trials.parquet)")
    s.set_defaults(func=cmd_export)

    from vitheory.cli_linalg import add_commands as add_linalg_commands  # kruskal, assumptions
    add_linalg_commands(sub)
    return p


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the batch in flight is lost, everything stored stays."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or e.__class__.__name__


def main(argv=None) -> int:
    """Run one command.  Every failure ends with one line ``error: ...`` on stderr: exit 2 for bad input or an
    environment the command cannot use (a full disk, a read-only folder, too little memory), 130 / 143 when
    interrupted by SIGINT / SIGTERM (re-running the command resumes)."""
    import signal
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        args = build_parser().parse_args(argv)
        args.argv = ["vitheory", *(sys.argv[1:] if argv is None else list(argv))]   # recorded as provenance
        return args.func(args)
    except ConfigError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except MemoryError:
        print("error: out of memory; use a smaller scale or smaller sizes (--set ...)", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        # the reader of our output stopped early (e.g. `vitheory kruskal ... | head`): not an error; point stdout
        # at /dev/null so that the interpreter's final flush does not fail on the closed pipe
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 0
    except OSError as e:
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"error: {e.strerror or _one_line(e)}{where}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except _Terminated:
        print("terminated; re-run the same command to resume", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())

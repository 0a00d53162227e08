"""Run an experiment's sweep into a run folder, resuming where a previous run stopped.

The public entry point is :func:`run_experiment`; ``vitheory.run`` and the CLI's ``vitheory run`` are thin layers
over it that also build the report (:mod:`vitheory.report`, a layer above this one).
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from vitheory._version import __version__
from vitheory.config import ConfigError, check_range, config_to_dict
from vitheory.experiments.base import Experiment, get_experiment, resolve_config, results_frame
from vitheory.sweep.batch import check_device_name, resolve_device  # noqa: F401  (resolve_device: the CLI's)
from vitheory.sweep.executors import check_executor, make_executor
from vitheory.sweep.provenance import finish_session, start_session
from vitheory.sweep.store import Store, count_trials, dumps, read_run_config, trial_key


def plan_batches(exp: Experiment, cfg, trials: list[dict]) -> list[list[dict]]:
    """Group trials that can share one batched tensor program, then cut groups to ``max_batch``."""
    groups: dict[Any, list[dict]] = defaultdict(list)
    for t in trials:
        groups[exp.group_key(t)].append(t)
    cap = max(1, int(exp.max_batch(cfg)))
    out = []
    for g in groups.values():
        out.extend(g[i:i + cap] for i in range(0, len(g), cap))
    return out


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="trial", file=sys.stderr, dynamic_ncols=True, mininterval=1.0,
                bar_format="{l_bar}{bar}| {n:.0f}/{total} [{elapsed}<{remaining}]")


@dataclass
class RunPlan:
    """What a run will do, every input checked (:func:`plan_run`); nothing is written to make it."""
    experiment: Experiment
    config: Any
    trials: list[dict]
    todo: list[dict]                 # the trials not yet stored in the run folder
    batches: list[list[dict]]        # the batches the todo trials run in
    run_dir: Path | None
    device: str                      # resolved here for the local executor; as given (resolved per worker) for dask
    executor: str = "local"
    scheduler: str | None = None

    def summary(self) -> str:
        where = f" in {self.run_dir}" if self.run_dir is not None else " (no run folder)"
        on = self.device if self.executor == "local" else \
            f"dask workers ({self.scheduler or 'a local cluster on 127.0.0.1'}; --device {self.device} on each)"
        return (f"{self.experiment.name}: {len(self.trials)} trials, {len(self.trials) - len(self.todo)} already "
                f"stored, {len(self.todo)} to run in {len(self.batches)} batch(es) on {on}{where}")


def plan_run(name: str, *, scale: str = "default", overrides: Mapping[str, Any] | None = None,
             seeds: int | None = None, out: str | os.PathLike | None = None, device: str = "auto",
             executor: str = "local", scheduler: str | None = None, workers: int | None = None) -> RunPlan:
    """Resolve and check everything a run needs -- config, device, executor, run folder, input files -- writing
    nothing.  (A scheduler address is checked for its form here; it is connected to when the run starts, still
    before the run folder is created.)

    Raises :class:`~vitheory.config.ConfigError` naming the problem."""
    exp_name = executor if isinstance(executor, str) else getattr(executor, "name", "local")
    if isinstance(executor, str):
        check_executor(executor, scheduler, workers)
    exp = get_experiment(name)
    cfg = resolve_config(exp, scale, overrides, seeds)
    check_device_name(device)
    dev = resolve_device(device) if exp_name == "local" else device
    trials = exp.trials(cfg)
    run_dir = None if out is None else prepare_run_folder(out, exp.name, config_to_dict(cfg))
    exp.check_inputs(cfg)                  # files, folders, weights: before anything is written
    todo = trials
    if run_dir is not None and (run_dir / "results.sqlite").is_file() and (run_dir / "config.json").is_file() \
            and read_run_config(run_dir).get("config") == config_to_dict(cfg):
        with Store(run_dir / "results.sqlite", read_only=True) as store:
            done = store.done_keys()
        todo = [t for t in trials if trial_key(exp.name, t) not in done]
    return RunPlan(exp, cfg, trials, todo, plan_batches(exp, cfg, todo), run_dir, dev, exp_name, scheduler)


def run_experiment(name: str, *, scale: str = "default", overrides: Mapping[str, Any] | None = None,
                   seeds: int | None = None, out: str | os.PathLike | None = None, device: str = "auto",
                   progress: bool = True, executor: Any = "local", scheduler: str | None = None,
                   workers: int | None = None, argv: list[str] | None = None) -> pd.DataFrame:
    """Run experiment ``name`` and return its results, one row per trial.

    With ``out`` set, results go to a run folder (config.json, results.sqlite, provenance.json); re-running the
    same command skips finished trials.  With ``out=None`` nothing is written.  ``executor`` is ``"local"`` (this
    process), ``"dask"`` (a LocalCluster on 127.0.0.1 with ``workers`` processes, or the cluster at
    ``scheduler``), or an executor object of :mod:`vitheory.sweep.executors` (e.g. one cluster shared by several
    runs).  Whatever the executor, only this process writes the store, batch by batch as they finish.  The
    report is built by :func:`vitheory.report.build.build_report` from what is stored.
    Raises :class:`~vitheory.config.ConfigError` on bad input before anything is written.
    """
    plan = plan_run(name, scale=scale, overrides=overrides, seeds=seeds, out=out, device=device,
                    executor=executor, scheduler=scheduler, workers=workers)
    exp, cfg, trials, dev = plan.experiment, plan.config, plan.trials, plan.device
    cfg_dict = config_to_dict(cfg)
    owned = not hasattr(executor, "map_batches")
    ex = make_executor(executor, scheduler, workers)

    if owned:
        ex.__enter__()                       # connect / start the cluster: before the run folder is written
    try:
        if plan.run_dir is None:
            found: dict[str, dict] = {}
            bar = _progress(len(trials), exp.name, progress)
            for batch, metrics, _ in ex.map_batches(exp, cfg, plan.batches, dev, bar):
                found.update({trial_key(exp.name, t): {"params": {**cfg_dict, **t}, "metrics": m}
                              for t, m in zip(batch, metrics)})
            if bar is not None:
                bar.close()
            return results_frame([found[trial_key(exp.name, t)] for t in trials])   # in trial order
        return _run_into_folder(plan, ex, scale, progress, argv)
    finally:
        if owned:
            ex.__exit__(None, None, None)


def _run_one(job: tuple[str, dict, int]) -> tuple[str, float]:
    """One experiment of :func:`run_experiments` in a worker process (top-level: it pickles by reference)."""
    name, kwargs, threads = job
    import torch
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    run_experiment(name, **kwargs)
    return name, time.perf_counter() - t0


def check_jobs(jobs: int, executor: Any = "local") -> None:
    """``--jobs``: an integer in [1, 256]; above 1 only with the local executor (experiments in local processes)."""
    if isinstance(jobs, bool) or not isinstance(jobs, int):
        raise ConfigError(f"--jobs={jobs!r} is not an integer; allowed range: [1, 256]")
    check_range("--jobs", jobs, 1, 256)
    if jobs > 1 and executor != "local":
        raise ConfigError("--jobs > 1 runs experiments in local processes; it cannot be combined with --executor dask")


def run_experiments(names: list[str], *, jobs: int = 1, on_done=None, **kwargs) -> dict[str, float]:
    """Run the experiments ``names`` (keyword arguments as :func:`run_experiment`'s, ``out`` a folder whose
    sub-folder ``NAME`` holds each run); return the wall seconds of each.

    ``jobs = 1`` runs them one after the other in this process.  ``jobs > 1`` runs up to ``jobs`` experiments at
    a time, each in its own process with ``max(1, cores // jobs)`` torch threads (the small tensor programs of
    these sweeps use one core well and two poorly, so on a 2-core machine two one-thread experiments finish
    sooner than one two-thread experiment after another).  The stored numbers equal those of a one-after-the-other
    run on the same number of torch threads (a different thread count can change float rounding, as with any
    executor).  Every run folder keeps its own crash-safe store, so a
    killed run resumes as usual.  ``on_done(name, seconds)`` is called as each finishes.  The first failure is
    re-raised after the experiments already started have finished.
    """
    check_jobs(jobs, kwargs.get("executor", "local"))
    root = Path(kwargs.pop("out"))
    times: dict[str, float] = {}
    if jobs == 1:
        for n in names:
            t0 = time.perf_counter()
            run_experiment(n, out=root / n, **kwargs)
            times[n] = time.perf_counter() - t0
            if on_done is not None:
                on_done(n, times[n])
        return times
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    threads = max(1, (os.cpu_count() or 1) // jobs)
    kwargs = {**kwargs, "progress": False}           # several bars at once would garble the terminal
    first_error: BaseException | None = None
    # spawn, not fork: a forked child of a process that already ran torch's thread pool can deadlock
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_run_one, (n, {**kwargs, "out": root / n}, threads)) for n in names]
        for f in as_completed(futures):
            try:
                n, sec = f.result()
            except BaseException as e:               # noqa: BLE001  (re-raised below, after the others)
                first_error = first_error or e
                continue
            times[n] = sec
            if on_done is not None:
                on_done(n, sec)
    if first_error is not None:
        raise first_error
    return {n: times[n] for n in names if n in times}


def _run_into_folder(plan: RunPlan, ex, scale: str, progress: bool, argv: list[str] | None) -> pd.DataFrame:
    exp, cfg, trials, dev, run_dir = plan.experiment, plan.config, plan.trials, plan.device, plan.run_dir
    cfg_dict = config_to_dict(cfg)
    write_config(run_dir, {"experiment": exp.name, "scale": scale, "config": cfg_dict,
                           "vitheory_version": __version__})
    started = time.time()
    with Store(run_dir / "results.sqlite") as store:
        done = store.done_keys()
        keyed = [(trial_key(exp.name, t), t) for t in trials]
        todo = [t for k, t in keyed if k not in done]       # again: another process may have stored some
        session = start_session(run_dir, argv, ex.describe(), dev, len(todo), started)
        bar = _progress(len(trials), exp.name, progress)
        if bar is not None:
            bar.update(len(trials) - len(todo))
        for batch, metrics, per in ex.map_batches(exp, cfg, plan_batches(exp, cfg, todo), dev, bar):
            store.insert_many(exp.name, [(trial_key(exp.name, t), {**cfg_dict, **t}, m, per)
                                         for t, m in zip(batch, metrics)])
        if bar is not None:
            bar.close()
        finish_session(run_dir, session, getattr(ex, "seen", None) and ex.seen.as_dict())
        rows = in_trial_order(exp, store.rows(), [k for k, _ in keyed])
    return results_frame(rows)


def in_trial_order(exp: Experiment, rows: list[dict], keys: list[str], keep_others: bool = False) -> list[dict]:
    """``rows`` (stored in the order batches finished, which differs between executors) in the order of the
    experiment's trials, so that every table computed from them is the same whichever executor ran them."""
    order = {k: i for i, k in enumerate(keys)}
    kept = [r for r in rows if keep_others or r["key"] in order]
    return sorted(kept, key=lambda r: order.get(r["key"], len(order)))   # stable: unknown rows keep their order


# ------------------------------------------------------------------------------------------------------------
# the run folder: every check before anything is written
# ------------------------------------------------------------------------------------------------------------
LEFTOVERS = {"config.json", "config.json.tmp", "provenance.json", "report.html", "trials.csv", "trials.parquet", "results.sqlite", "results.sqlite-wal", "results.sqlite-shm",
             "results.sqlite-journal", "figures", "report.md", "summary.json"}


def _writable_target(run_dir: Path) -> None:
    """``run_dir`` must be a folder (or not exist yet) under folders, with write access where it is created."""
    for parent in [run_dir, *run_dir.parents]:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                what = "is a file" if parent == run_dir else f"is under {parent}, which is a file"
                if parent.is_symlink() and not parent.exists():
                    what = f"is a dangling symbolic link ({parent} -> {os.readlink(parent)})"
                raise ConfigError(f"--out {run_dir} {what}; give a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"--out {run_dir}: {parent} is not writable; give a folder you can write to")
            return


def _leftover(name: str) -> bool:
    return name in LEFTOVERS or any(name.startswith(f + ".") and name.endswith(".tmp") for f in LEFTOVERS)


def prepare_run_folder(out: str | os.PathLike, experiment: str, cfg_dict: dict) -> Path:
    """Check ``--out`` for a run of ``experiment`` with ``cfg_dict`` and return it as a Path; writes nothing.

    A folder holding the same run resumes.  A folder holding a different run is refused unless it has no
    finished trial (then the corrected command starts it afresh); a folder with other files is refused.
    """
    if str(out).strip() == "":
        raise ConfigError("--out is empty; give a folder path (or leave --out out for runs/NAME-SCALE-TIMESTAMP)")
    run_dir = Path(out)
    _writable_target(run_dir)
    if not run_dir.exists():
        return run_dir
    for name in ("config.json", "results.sqlite"):
        if (run_dir / name).exists() and not os.access(run_dir / name, os.R_OK | os.W_OK):
            raise ConfigError(f"--out {run_dir}: {name} is not writable (read-only); give a new --out folder")
    entries = {p.name for p in run_dir.iterdir()}
    if not entries:
        return run_dir
    if "config.json" in entries:
        old = read_run_config(run_dir)
        same = old.get("experiment") == experiment and old.get("config") == cfg_dict
        if same:
            count_trials(run_dir)                      # the store must be readable before we resume
            return run_dir
        if all(map(_leftover, entries)) and count_trials(run_dir) == 0:
            return run_dir                             # nothing finished: a corrected command starts afresh
        diff = sorted(k for k in set(cfg_dict) | set(old["config"]) if cfg_dict.get(k) != old["config"].get(k))
        what = f"experiment {old.get('experiment')!r}" if old.get("experiment") != experiment else \
            f"a different config (differs in: {', '.join(diff)})"
        raise ConfigError(f"--out {run_dir} already holds a run of {what}; use a new --out folder")
    if all(map(_leftover, entries)) and count_trials(run_dir) == 0:
        return run_dir                                 # an interrupted start (e.g. a full disk): start afresh
    raise ConfigError(f"--out {run_dir} exists and is not a vitheory run folder; use a new or empty folder")


def write_config(run_dir: Path, meta: dict) -> None:
    """Create the folder and write config.json atomically (a failed write leaves no partial file)."""
    cfg_path = run_dir / "config.json"
    tmp = cfg_path.with_suffix(".json.tmp")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if cfg_path.is_file():
            old = read_run_config(run_dir)
            if old.get("experiment") == meta["experiment"] and old.get("config") == meta["config"]:
                return
            store = run_dir / "results.sqlite"         # a run with no finished trial, replaced by this one
            for extra in ("", "-wal", "-shm", "-journal"):
                Path(str(store) + extra).unlink(missing_ok=True)
        # a name of this process's own: two processes starting the same run must not share a temporary file
        fd, name = tempfile.mkstemp(prefix="config.json.", suffix=".tmp", dir=run_dir)
        tmp = Path(name)
        with os.fdopen(fd, "w") as f:
            f.write(dumps(meta, indent=2, sort_keys=True))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, cfg_path)
        for stale in run_dir.glob("config.json*.tmp"):   # left by a start that failed (e.g. a full disk)
            if stale.name == "config.json.tmp" or (stale.stat().st_size == 0
                                                   and time.time() - stale.stat().st_mtime > 60):
                stale.unlink(missing_ok=True)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise ConfigError(f"--out {run_dir}: cannot write config.json ({e.strerror or e}); nothing was stored") \
            from None

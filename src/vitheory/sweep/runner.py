"""Run an experiment's sweep into a run folder, resuming where a previous run stopped.

The public entry point is :func:`run_experiment`; ``vitheory.run`` and the CLI's ``vitheory run`` are thin layers
over it that also build the report (:mod:`vitheory.report`, a layer above this one).
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from vitheory._version import __version__
from vitheory.config import ConfigError, config_to_dict
from vitheory.experiments.base import Experiment, get_experiment, resolve_config, results_frame
from vitheory.progress import set_reporter
from vitheory.sweep.store import Store, count_trials, dumps, read_run_config, trial_key


def resolve_device(device: str) -> str:
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device={device!r}: torch sees no CUDA device here; use --device cpu")
        return device
    raise ConfigError(f"--device={device!r} is not allowed; choose one of auto, cpu, cuda, cuda:N")


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


def _advance(bar, value: float, force: bool = False) -> None:
    """Move the bar to ``value`` trials; within a batch it only moves forward (a batch may train twice)."""
    if force or value > bar.n:
        bar.n = round(value, 1)
        bar.refresh()


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="trial", file=sys.stderr, dynamic_ncols=True, mininterval=1.0,
                bar_format="{l_bar}{bar}| {n:.0f}/{total} [{elapsed}<{remaining}]")


def _run_batch(exp: Experiment, cfg, batch: list[dict], dev: str, bar) -> list[dict]:
    """``run_trials`` on one batch, with the bar following the trainer's progress inside the batch."""
    start = bar.n if bar is not None else 0
    if bar is not None:
        set_reporter(lambda f: _advance(bar, start + f * len(batch)))
    try:
        metrics = exp.run_trials(cfg, batch, dev)
    finally:
        set_reporter(None)
    if bar is not None:
        _advance(bar, start + len(batch), force=True)
    return metrics


def run_experiment(name: str, *, scale: str = "default", overrides: Mapping[str, Any] | None = None,
                   seeds: int | None = None, out: str | os.PathLike | None = None, device: str = "auto",
                   progress: bool = True) -> pd.DataFrame:
    """Run experiment ``name`` and return its results, one row per trial.

    With ``out`` set, results go to a run folder (config.json, results.sqlite); re-running the same command
    skips finished trials.  With ``out=None`` nothing is written.  The report (figures/, summary.json,
    report.md) is built by :func:`vitheory.report.build.build_report` from what is stored.
    Raises :class:`~vitheory.config.ConfigError` on bad input before anything is written.
    """
    exp = get_experiment(name)
    cfg = resolve_config(exp, scale, overrides, seeds)
    dev = resolve_device(device)
    trials = exp.trials(cfg)
    if out is None:
        exp.check_inputs(cfg)
    cfg_dict = config_to_dict(cfg)
    meta = {"experiment": exp.name, "scale": scale, "config": cfg_dict, "vitheory_version": __version__}

    if out is None:
        rows = []
        bar = _progress(len(trials), exp.name, progress)
        for batch in plan_batches(exp, cfg, trials):
            metrics = _run_batch(exp, cfg, batch, dev, bar)
            rows.extend({"params": {**cfg_dict, **t}, "metrics": m} for t, m in zip(batch, metrics))
        if bar is not None:
            bar.close()
        return results_frame(rows)

    run_dir = prepare_run_folder(out, exp.name, cfg_dict)
    exp.check_inputs(cfg)                  # files, folders, weights: before anything is written
    write_config(run_dir, meta)

    with Store(run_dir / "results.sqlite") as store:
        done = store.done_keys()
        keyed = [(trial_key(exp.name, t), t) for t in trials]
        todo = [t for k, t in keyed if k not in done]
        bar = _progress(len(trials), exp.name, progress)
        if bar is not None:
            bar.update(len(trials) - len(todo))
        for batch in plan_batches(exp, cfg, todo):
            t0 = time.perf_counter()
            metrics = _run_batch(exp, cfg, batch, dev, bar)
            per = (time.perf_counter() - t0) / len(batch)
            store.insert_many(exp.name, [(trial_key(exp.name, t), {**cfg_dict, **t}, m, per)
                                         for t, m in zip(batch, metrics)])
        if bar is not None:
            bar.close()
        wanted = {k for k, _ in keyed}
        rows = [r for r in store.rows() if r["key"] in wanted]
    return results_frame(rows)


# ------------------------------------------------------------------------------------------------------------
# the run folder: every check before anything is written
# ------------------------------------------------------------------------------------------------------------
LEFTOVERS = {"config.json", "config.json.tmp", "results.sqlite", "results.sqlite-wal", "results.sqlite-shm",
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
        if entries <= LEFTOVERS and count_trials(run_dir) == 0:
            return run_dir                             # nothing finished: a corrected command starts afresh
        diff = sorted(k for k in set(cfg_dict) | set(old["config"]) if cfg_dict.get(k) != old["config"].get(k))
        what = f"experiment {old.get('experiment')!r}" if old.get("experiment") != experiment else \
            f"a different config (differs in: {', '.join(diff)})"
        raise ConfigError(f"--out {run_dir} already holds a run of {what}; use a new --out folder")
    if entries <= LEFTOVERS and count_trials(run_dir) == 0:
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
        with open(tmp, "w") as f:
            f.write(dumps(meta, indent=2, sort_keys=True))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, cfg_path)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise ConfigError(f"--out {run_dir}: cannot write config.json ({e.strerror or e}); nothing was stored") \
            from None

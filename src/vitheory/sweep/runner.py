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
    except MemoryError:
        raise ConfigError(out_of_memory(exp, batch, "")) from None
    except RuntimeError as e:                        # torch's allocators raise RuntimeError when memory runs out
        if "memory" not in str(e).lower() and "allocate" not in str(e).lower():
            raise
        raise ConfigError(out_of_memory(exp, batch, " ".join(str(e).split())[:200])) from None
    finally:
        set_reporter(None)
    if bar is not None:
        _advance(bar, start + len(batch), force=True)
    return metrics


def out_of_memory(exp: Experiment, batch: list[dict], detail: str) -> str:
    return (f"out of memory training a batch of {len(batch)} trials of {exp.name}{' (' + detail + ')' if detail else ''}; "
            "everything stored so far is kept: lower the models trained together (batch_models / max_models) or the "
            "sizes (--set ...), then re-run the same command to resume")


@dataclass
class RunPlan:
    """What a run will do, every input checked (:func:`plan_run`); nothing is written to make it."""
    experiment: Experiment
    config: Any
    trials: list[dict]
    todo: list[dict]                 # the trials not yet stored in the run folder
    batches: list[list[dict]]        # the batches the todo trials run in
    run_dir: Path | None
    device: str

    def summary(self) -> str:
        where = f" in {self.run_dir}" if self.run_dir is not None else " (no run folder)"
        return (f"{self.experiment.name}: {len(self.trials)} trials, {len(self.trials) - len(self.todo)} already "
                f"stored, {len(self.todo)} to run in {len(self.batches)} batch(es) on {self.device}{where}")


def plan_run(name: str, *, scale: str = "default", overrides: Mapping[str, Any] | None = None,
             seeds: int | None = None, out: str | os.PathLike | None = None, device: str = "auto") -> RunPlan:
    """Resolve and check everything a run needs -- config, device, run folder, input files -- writing nothing.

    Raises :class:`~vitheory.config.ConfigError` naming the problem."""
    exp = get_experiment(name)
    cfg = resolve_config(exp, scale, overrides, seeds)
    dev = resolve_device(device)
    trials = exp.trials(cfg)
    run_dir = None if out is None else prepare_run_folder(out, exp.name, config_to_dict(cfg))
    exp.check_inputs(cfg)                  # files, folders, weights: before anything is written
    todo = trials
    if run_dir is not None and (run_dir / "results.sqlite").is_file() and (run_dir / "config.json").is_file() \
            and read_run_config(run_dir).get("config") == config_to_dict(cfg):
        with Store(run_dir / "results.sqlite", read_only=True) as store:
            done = store.done_keys()
        todo = [t for t in trials if trial_key(exp.name, t) not in done]
    return RunPlan(exp, cfg, trials, todo, plan_batches(exp, cfg, todo), run_dir, dev)


def run_experiment(name: str, *, scale: str = "default", overrides: Mapping[str, Any] | None = None,
                   seeds: int | None = None, out: str | os.PathLike | None = None, device: str = "auto",
                   progress: bool = True) -> pd.DataFrame:
    """Run experiment ``name`` and return its results, one row per trial.

    With ``out`` set, results go to a run folder (config.json, results.sqlite); re-running the same command
    skips finished trials.  With ``out=None`` nothing is written.  The report (figures/, summary.json,
    report.md) is built by :func:`vitheory.report.build.build_report` from what is stored.
    Raises :class:`~vitheory.config.ConfigError` on bad input before anything is written.
    """
    plan = plan_run(name, scale=scale, overrides=overrides, seeds=seeds, out=out, device=device)
    exp, cfg, trials, dev = plan.experiment, plan.config, plan.trials, plan.device
    cfg_dict = config_to_dict(cfg)

    if plan.run_dir is None:
        rows = []
        bar = _progress(len(trials), exp.name, progress)
        for batch in plan.batches:
            metrics = _run_batch(exp, cfg, batch, dev, bar)
            rows.extend({"params": {**cfg_dict, **t}, "metrics": m} for t, m in zip(batch, metrics))
        if bar is not None:
            bar.close()
        return results_frame(rows)

    run_dir = plan.run_dir
    write_config(run_dir, {"experiment": exp.name, "scale": scale, "config": cfg_dict,
                           "vitheory_version": __version__})
    with Store(run_dir / "results.sqlite") as store:
        done = store.done_keys()
        keyed = [(trial_key(exp.name, t), t) for t in trials]
        todo = [t for k, t in keyed if k not in done]       # again: another process may have stored some
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

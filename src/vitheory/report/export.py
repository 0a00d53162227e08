"""``vitheory export DIR``: the trials of a run folder as one flat table (CSV or Parquet).

One row per stored trial, one column per config value, trial parameter and metric (a metric wins on a name
clash, as in :func:`vitheory.load_results`), plus ``experiment``, ``trial_key`` and ``trial_seconds`` (the wall
time per trial of its batch).  Values that are lists or objects (e.g. a grid such as ``N_grid``) are written as
JSON text, so every column has one scalar type and both formats round-trip.  Parquet needs pyarrow (imported
only then).  The file is written atomically.
"""
from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from pathlib import Path

import pandas as pd

from vitheory.config import ConfigError, build_config
from vitheory.experiments.base import get_experiment, results_frame
from vitheory.sweep.runner import in_trial_order
from vitheory.sweep.store import finite_json, open_store, read_run_config, trial_key

FORMATS = ("csv", "parquet")


def trials_table(run_dir: str | os.PathLike) -> pd.DataFrame:
    """The flat table of a run folder's trials (rows in the experiment's trial order)."""
    if not Path(run_dir).is_dir():
        raise ConfigError(f"{run_dir}: no such folder")
    if not (Path(run_dir) / "config.json").is_file():
        raise ConfigError(f"{run_dir}: not a run folder (no config.json); give one run folder, e.g. "
                          "runs/reproduce-default/sample-complexity")
    meta = read_run_config(run_dir)
    exp = get_experiment(meta["experiment"])
    cfg = build_config(exp.config, meta["config"])
    with open_store(run_dir) as store:
        rows = store.rows()
    rows = in_trial_order(exp, rows, [trial_key(exp.name, t) for t in exp.trials(cfg)], keep_others=True)
    table = results_frame(rows)
    for col in table.columns:
        if table[col].map(lambda v: isinstance(v, (list, tuple, dict))).any():
            table[col] = table[col].map(lambda v: json.dumps(finite_json(v)) if isinstance(v, (list, tuple, dict))
                                        else v)
    for col in table.columns:            # one type a column: mixed values (e.g. 3 and "auto") as text
        kinds = {type(v) for v in table[col] if v is not None and not (isinstance(v, float) and v != v)}
        if len(kinds) > 1 and not kinds <= {int, float} and not kinds <= {bool, int}:
            table[col] = table[col].map(lambda v: v if v is None else str(v))
    table.insert(0, "trial_seconds", [r["seconds"] for r in rows])
    table.insert(0, "trial_key", [r["key"] for r in rows])
    table.insert(0, "experiment", exp.name)
    return table


def export_trials(run_dir: str | os.PathLike, fmt: str = "csv", output: str | os.PathLike | None = None
                  ) -> tuple[Path, int]:
    """Write the flat table of ``run_dir`` as ``fmt`` to ``output`` (default DIR/trials.FMT); (path, rows)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format={fmt!r} is not allowed; choose one of {', '.join(FORMATS)}")
    if fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise ConfigError("--format parquet needs the optional package pyarrow (pip install 'vitheory[parquet]' "
                          "or pip install pyarrow); or use --format csv")
    path = Path(output) if output is not None else Path(run_dir) / f"trials.{fmt}"
    if str(output if output is not None else "x").strip() == "":
        raise ConfigError("--output is empty; give a file path")
    if path.is_dir():
        raise ConfigError(f"--output {path} is a folder; give a file path")
    if not path.parent.is_dir():
        raise ConfigError(f"--output {path}: the folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"--output {path} is not writable")
    table = trials_table(run_dir)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if fmt == "csv":
            table.to_csv(tmp, index=False)
        else:
            table.to_parquet(tmp, index=False, engine="pyarrow")
        os.replace(tmp, path)
    except (OSError, ValueError, TypeError) as e:      # pyarrow's ArrowInvalid is a ValueError
        Path(tmp).unlink(missing_ok=True)
        raise ConfigError(f"--output {path}: cannot write ({getattr(e, 'strerror', None) or e})") from None
    return path, len(table)

"""Run folders and the per-run SQLite store.

A run folder holds::

    config.json      the resolved config (+ experiment name, scale, vitheory version)
    results.sqlite   one row per finished trial: key, seed, params (all config values + trial
                     parameters, JSON), metrics (JSON)
    figures/         PNG and PDF figures
    report.md        the report, rebuilt from config.json + results.sqlite only

Crash safety: each batch of trials is inserted in one SQLite transaction, and the trial key is the
primary key, so a run killed with SIGKILL loses at most the batch in flight and a re-run inserts every
trial exactly once.  A failed write (a full disk, a read-only folder) rolls the transaction back and is
reported as a :class:`~vitheory.config.ConfigError`; nothing half-written stays.

Metrics are stored as strict JSON: a non-finite float (NaN, +-Inf) becomes ``null``, so SQLite's JSON
functions and every JSON reader accept every row.  Readers (reports) open the database read-only and never
create a table in a file they did not create.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from vitheory.config import ConfigError

SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    key        TEXT PRIMARY KEY,
    experiment TEXT NOT NULL,
    seed       INTEGER NOT NULL,
    params     TEXT NOT NULL,
    metrics    TEXT NOT NULL,
    seconds    REAL,
    created    REAL NOT NULL
);
"""
COLUMNS = ("key", "experiment", "seed", "params", "metrics", "seconds", "created")


def trial_key(experiment: str, trial: Mapping[str, Any]) -> str:
    blob = json.dumps({"experiment": experiment, **trial}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (recursively), ready for strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def dumps(value: Any, **kw) -> str:
    return json.dumps(finite_json(value), allow_nan=False, **kw)


def _db_error(path: Path, e: BaseException) -> ConfigError:
    msg = str(e)
    if "readonly" in msg or "read-only" in msg or isinstance(e, PermissionError):
        return ConfigError(f"{path}: cannot write the results database (read-only file or folder)")
    if "full" in msg or "too large" in msg.lower() or getattr(e, "errno", None) in (27, 28):
        return ConfigError(f"{path}: cannot write the results database (the disk is full or the file size limit "
                           "was reached); nothing of the failed batch was stored, re-run to resume once there is room")
    if isinstance(e, sqlite3.DatabaseError) and ("not a database" in msg or "malformed" in msg):
        return ConfigError(f"{path}: corrupt results database ({msg}); use a new --out folder")
    return ConfigError(f"{path}: results database error ({e.__class__.__name__}: {msg})")


class Store:
    """The SQLite table of one run folder (``read_only``: for reports; never creates or changes anything)."""

    def __init__(self, path: str | os.PathLike, *, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        try:
            if read_only:
                self.conn = self._connect_read_only()
            else:
                self.conn = sqlite3.connect(self.path, timeout=60)
                tables = [r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
                if not tables:                   # a new database: ours to set up
                    self.conn.execute("PRAGMA journal_mode=WAL")
                    with self.conn:
                        self.conn.execute(SCHEMA)
            self._check_schema()
        except sqlite3.DatabaseError as e:
            raise _db_error(self.path, e) from None

    def _connect_read_only(self) -> sqlite3.Connection:
        uri = f"file:{self.path.resolve()}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=60)
        try:
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError:
            # a WAL database in a read-only folder cannot create its shared-memory file: read it as immutable
            conn.close()
            return sqlite3.connect(uri + "&immutable=1", uri=True, timeout=60)

    def _check_schema(self) -> None:
        cols = tuple(r[1] for r in self.conn.execute("PRAGMA table_info(trials)"))
        if cols != COLUMNS:
            self.conn.close()
            raise ConfigError(f"{self.path}: not a vitheory results database (no trials table of vitheory's schema)")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def done_keys(self) -> set[str]:
        try:
            return {k for (k,) in self.conn.execute("SELECT key FROM trials")}
        except sqlite3.DatabaseError as e:
            raise _db_error(self.path, e) from None

    def insert_many(self, experiment: str, rows: Iterable[tuple[str, Mapping, Mapping, float]]) -> None:
        """Insert (key, params, metrics, seconds) rows atomically; already present keys are kept."""
        now = time.time()
        values = [(k, experiment, int(p.get("seed", 0)), dumps(p, sort_keys=True), dumps(m), s, now)
                  for k, p, m, s in rows]
        try:
            with self.conn:  # one transaction: all rows or none
                self.conn.executemany(
                    "INSERT OR IGNORE INTO trials(key, experiment, seed, params, metrics, seconds, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", values)
        except (sqlite3.DatabaseError, OSError) as e:
            raise _db_error(self.path, e) from None

    def rows(self) -> list[dict[str, Any]]:
        try:
            cur = list(self.conn.execute("SELECT key, seed, params, metrics, seconds FROM trials ORDER BY rowid"))
        except sqlite3.DatabaseError as e:
            raise _db_error(self.path, e) from None
        out = []
        for k, s, p, m, sec in cur:
            try:
                params, metrics = json.loads(p), json.loads(m)
            except (TypeError, ValueError):
                raise ConfigError(f"{self.path}: the stored row of trial {k} is not valid JSON (the database was "
                                  "changed outside vitheory); use a new --out folder") from None
            if not isinstance(params, dict) or not isinstance(metrics, dict):
                raise ConfigError(f"{self.path}: the stored row of trial {k} is not a JSON object")
            out.append({"key": k, "seed": s, "params": params, "metrics": metrics, "seconds": sec})
        return out

    def count(self) -> int:
        try:
            return self.conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise _db_error(self.path, e) from None


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """config.json of a run folder, checked: a JSON object naming the experiment and holding its config."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a run folder (no config.json)")
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: corrupt config.json ({e.__class__.__name__}: {e})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("experiment"), str) \
            or not isinstance(meta.get("config"), dict):
        raise ConfigError(f"{path}: not a vitheory config.json (needs an object with 'experiment' and 'config')")
    return meta


def count_trials(run_dir: str | os.PathLike) -> int:
    """Finished trials stored in a run folder (0 without a results database)."""
    path = Path(run_dir) / "results.sqlite"
    if not path.is_file() or path.stat().st_size == 0:      # none yet, or an empty file left by a failed start
        return 0
    with Store(path, read_only=True) as s:
        return s.count()


def open_store(run_dir: str | os.PathLike) -> Store:
    """The results database of a run folder, opened read-only."""
    path = Path(run_dir) / "results.sqlite"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no results.sqlite in this run folder")
    store = Store(path, read_only=True)
    store.count()
    return store

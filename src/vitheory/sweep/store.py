"""Run folders and the per-run SQLite store.

A run folder holds::

    config.json      the resolved config (+ experiment name, scale, vitheory version)
    results.sqlite   one row per finished trial: key, seed, params (all config values + trial
                     parameters, JSON), metrics (JSON)
    figures/         PNG and PDF figures
    report.md        the report, rebuilt from config.json + results.sqlite only

Crash safety: each batch of trials is inserted in one SQLite transaction, and the trial key is the
primary key, so a run killed with SIGKILL loses at most the batch in flight and a re-run inserts every
trial exactly once.
"""
from __future__ import annotations

import hashlib
import json
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


def trial_key(experiment: str, trial: Mapping[str, Any]) -> str:
    blob = json.dumps({"experiment": experiment, **trial}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


class Store:
    """The SQLite table of one run folder."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.conn = sqlite3.connect(self.path, timeout=60)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(SCHEMA)
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def done_keys(self) -> set[str]:
        return {k for (k,) in self.conn.execute("SELECT key FROM trials")}

    def insert_many(self, experiment: str, rows: Iterable[tuple[str, Mapping, Mapping, float]]) -> None:
        """Insert (key, params, metrics, seconds) rows atomically; already present keys are kept."""
        now = time.time()
        with self.conn:  # one transaction
            self.conn.executemany(
                "INSERT OR IGNORE INTO trials(key, experiment, seed, params, metrics, seconds, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(k, experiment, int(p.get("seed", 0)), json.dumps(p, sort_keys=True), json.dumps(m), s, now)
                 for k, p, m, s in rows])

    def rows(self) -> list[dict[str, Any]]:
        cur = self.conn.execute("SELECT key, seed, params, metrics, seconds FROM trials ORDER BY rowid")
        return [{"key": k, "seed": s, "params": json.loads(p), "metrics": json.loads(m), "seconds": sec}
                for k, s, p, m, sec in cur]

    def count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM trials").fetchone()[0]


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a run folder (no config.json)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: corrupt config.json ({e.__class__.__name__}: {e})") from None


def open_store(run_dir: str | os.PathLike) -> Store:
    path = Path(run_dir) / "results.sqlite"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no results.sqlite in this run folder")
    try:
        store = Store(path)
        store.count()
    except sqlite3.DatabaseError as e:
        raise ConfigError(f"{path}: corrupt results database ({e})") from None
    return store

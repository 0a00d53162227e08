"""Faults during a sweep: SIGKILL, SIGTERM, two writers on one folder, a write failure, a corrupt store.

After the fault and a re-run of the same command, every trial is stored exactly once, nothing finished is lost,
and the stored numbers equal those of an uninterrupted run.  (Listed in docs/reliability.md.)
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from vitheory.experiments.base import get_experiment, resolve_config

FAST = ["--set", "N_grid=20,40", "--set", "steps=60", "--set", "n_test=100", "--set", "d=8", "--set", "d_k=8",
        "--set", "m=16", "--set", "L=12", "--set", "batch_models=1"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}   # tiny models: one thread is fastest


def command(out: Path) -> list[str]:
    return [sys.executable, "-m", "vitheory.cli", "run", "sample-complexity", "--scale", "smoke", *FAST,
            "--out", str(out), "--quiet"]


def total_trials() -> int:
    exp = get_experiment("sample-complexity")
    return len(exp.trials(resolve_config(exp, "smoke", dict(a.split("=", 1) for a in FAST[1::2]))))


def stored(out: Path) -> dict[str, dict]:
    db = out / "results.sqlite"
    if not db.is_file():
        return {}
    try:
        with closing(sqlite3.connect(db, timeout=30)) as con:
            rows = con.execute("SELECT key, metrics FROM trials").fetchall()
    except sqlite3.Error:
        return {}
    keys = [k for k, _ in rows]
    assert len(keys) == len(set(keys)), "a trial stored twice"
    return {k: json.loads(m) for k, m in rows}


def start_and_wait(out: Path, at_least: int = 3) -> subprocess.Popen:
    proc = subprocess.Popen(command(out), env=ENV, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and len(stored(out)) < at_least and proc.poll() is None:
        time.sleep(0.1)
    return proc


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, dict]:
    """The stored metrics of an uninterrupted run of the same command."""
    out = tmp_path_factory.mktemp("faults") / "reference"
    assert subprocess.run(command(out), env=ENV).returncode == 0
    return stored(out)


def same_numbers(a: dict[str, dict], b: dict[str, dict]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert {m: v for m, v in a[k].items()} == b[k], k


def test_sigkill_mid_sweep_then_resume(tmp_path, reference):
    out = tmp_path / "killed"
    proc = start_and_wait(out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(stored(out))
    assert 3 <= partial < total_trials(), "the run was not killed mid-sweep; nothing was tested"
    assert subprocess.run(command(out), env=ENV).returncode == 0
    same_numbers(stored(out), reference)
    assert (out / "report.md").is_file()


def test_sigterm_mid_sweep_is_a_clean_interrupt(tmp_path):
    out = tmp_path / "terminated"
    proc = start_and_wait(out)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "terminated; re-run the same command to resume" in err
    assert len(stored(out)) < total_trials()
    assert subprocess.run(command(out), env=ENV).returncode == 0
    assert len(stored(out)) == total_trials()


def test_two_writers_on_one_folder(tmp_path, reference):
    out = tmp_path / "shared"
    procs = [subprocess.Popen(command(out), env=ENV, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    same_numbers(stored(out), reference)


def test_write_failure_loses_nothing(tmp_path, reference):
    """The file-size limit (as on a full disk) is reached while storing: exit 2, one line, nothing half-written."""
    out = tmp_path / "full"
    limit = 48 << 10          # room for config.json and a few batches, not for the whole sweep

    def small_files():
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    p = subprocess.run(command(out), env=ENV, capture_output=True, text=True, preexec_fn=small_files, timeout=600)
    err = p.stderr.strip()
    assert p.returncode == 2 and err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    partial = len(stored(out))
    assert partial < total_trials()
    assert subprocess.run(command(out), env=ENV).returncode == 0
    same_numbers(stored(out), reference)


def test_corrupt_store_found_on_resume(tmp_path):
    out = tmp_path / "corrupt"
    proc = start_and_wait(out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for extra in ("-wal", "-shm"):
        Path(str(out / "results.sqlite") + extra).unlink(missing_ok=True)
    (out / "results.sqlite").write_bytes(b"\x00garbage" * 512)
    before = (out / "results.sqlite").read_bytes()
    p = subprocess.run(command(out), env=ENV, capture_output=True, text=True)
    assert p.returncode == 2 and "corrupt" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert (out / "results.sqlite").read_bytes() == before

"""The Dask executor: the same stored results as a local run, a worker killed mid-sweep loses nothing, and bad
executor options are refused before any folder exists.  Clusters run on 127.0.0.1 only.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import tempfile
import threading
import time
from contextlib import closing

import pytest

from vitheory import cli
from vitheory.config import ConfigError
from vitheory.sweep import executors
from vitheory.sweep.executors import DaskExecutor
from vitheory.sweep.runner import run_experiment

distributed = pytest.importorskip("distributed", reason="the optional package distributed is not installed")

# a smoke sweep of 12 one-trial batches (batch_models=1: many tasks, so workers share the sweep)
FAST = dict(N_grid=[20, 40], steps=60, n_test=100, d=8, d_k=8, m=16, L=12, batch_models=1)
TIMING = ("seconds",)           # per-trial wall time is stored beside the metrics, never inside them


def stored(out) -> dict[str, dict]:
    with closing(sqlite3.connect(out / "results.sqlite")) as con:
        rows = con.execute("SELECT key, metrics FROM trials").fetchall()
    keys = [k for k, _ in rows]
    assert len(keys) == len(set(keys)), "a trial stored twice"
    return {k: json.loads(m) for k, m in rows}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("dask") / "local"
    run_experiment("sample-complexity", scale="smoke", overrides=FAST, out=out, progress=False)
    return stored(out)


def test_local_cluster_stores_the_same_results_as_a_local_run(tmp_path, monkeypatch, reference):
    monkeypatch.chdir(tmp_path)                              # a dask-scratch-space would appear here
    before = {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("vitheory-dask-")}
    ex = DaskExecutor(workers=2)
    with ex:
        sched = ex.client.scheduler_info()
        assert sched["address"].startswith("tcp://127.0.0.1:")
        assert len(sched["workers"]) == 2 and all(a.startswith("tcp://127.0.0.1:") for a in sched["workers"])
        port = int(sched["address"].rsplit(":", 1)[1])
        df = run_experiment("sample-complexity", scale="smoke", overrides=FAST, out=tmp_path / "dask",
                            progress=False, executor=ex)
    assert stored(tmp_path / "dask") == reference            # same keys, identical metrics
    assert len(df) == len(reference)
    assert not (tmp_path / "dask-scratch-space").exists()
    after = {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("vitheory-dask-")}
    assert after <= before, "the cluster's temporary directory was not removed"
    with socket.socket() as s:                               # the cluster was stopped at the end
        assert s.connect_ex(("127.0.0.1", port)) != 0
    prov = json.loads((tmp_path / "dask" / "provenance.json").read_text())["sessions"][-1]
    assert prov["executor"].startswith("dask") and prov["device"] == "cpu" and prov["wall_s"] > 0


def test_a_worker_killed_mid_sweep_loses_nothing(tmp_path, reference):
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address=None, local_directory=str(tmp_path / "scratch"))
    killed: dict = {}

    def kill_a_busy_worker():
        with distributed.Client(cluster.scheduler_address, timeout=30) as c:
            deadline = time.time() + 60
            while time.time() < deadline:
                busy = {w: ks for w, ks in c.processing().items() if ks}
                if busy and (tmp_path / "run" / "results.sqlite").exists():
                    worker = sorted(busy)[0]
                    pid = c.run(os.getpid, workers=[worker])[worker]
                    os.kill(pid, signal.SIGKILL)
                    killed.update(worker=worker, tasks=busy[worker])
                    return
                time.sleep(0.02)

    try:
        watcher = threading.Thread(target=kill_a_busy_worker)
        watcher.start()
        run_experiment("sample-complexity", scale="smoke", overrides=FAST, out=tmp_path / "run",
                       progress=False, executor="dask", scheduler=cluster.scheduler_address)
        watcher.join()
    finally:
        cluster.close()
    assert killed, "no worker was killed while it ran a task: nothing was tested"
    assert stored(tmp_path / "run") == reference            # every trial once, the same numbers


@pytest.mark.parametrize("args, words", [
    (["--executor", "spark"], "--executor"),
    (["--executor", "dask", "--scheduler", "not an address"], "--scheduler"),
    (["--executor", "dask", "--scheduler", "tcp://host:99999"], "--scheduler"),
    (["--scheduler", "tcp://127.0.0.1:8786"], "--scheduler"),
    (["--executor", "dask", "--workers", "0"], "--workers"),
    (["--executor", "dask", "--workers", "two"], "--workers"),
    (["--executor", "dask", "--workers", "2", "--scheduler", "127.0.0.1:8786"], "--workers"),
    (["--workers", "2"], "--workers"),
])
@pytest.mark.parametrize("verb", ["run", "reproduce"])
def test_bad_executor_options_one_error_line_exit_2_no_folder(tmp_path, capsys, args, words, verb):
    out = tmp_path / "out"
    argv = [verb, "sample-complexity"] if verb == "run" else [verb, "--only", "sample-complexity"]
    assert cli.main([*argv, "--scale", "smoke", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert not out.exists()


def test_unreachable_scheduler_is_an_error_before_any_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(executors, "CONNECT_TIMEOUT", 1.0)
    with socket.socket() as s:                               # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    assert cli.main(["run", "sample-complexity", "--scale", "smoke", "--out", str(out), "--quiet",
                     "--executor", "dask", "--scheduler", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot connect to the Dask scheduler" in err[0], err
    assert not out.exists()


def test_missing_distributed_is_a_clear_message(monkeypatch):
    monkeypatch.setattr(executors.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="optional package 'distributed'"):
        executors.check_executor("dask")

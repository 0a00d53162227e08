"""Where the batches of a sweep run: in this process (``local``) or on a Dask cluster (``dask``).

An executor takes the batches :func:`vitheory.sweep.runner.plan_batches` made and yields ``(batch, metrics,
seconds_per_trial)`` as each batch finishes, in any order.  Only the client process (the one that called
:func:`~vitheory.sweep.runner.run_experiment`) writes the run store: workers compute metrics and send them back,
the client inserts each finished batch in one transaction.  So the crash-safety of the store is unchanged, and a
trial is stored once whatever the executor (the trial key is the primary key; ``INSERT OR IGNORE``).

Dask: ``DaskExecutor(scheduler=None)`` starts a ``distributed.LocalCluster`` bound to 127.0.0.1 (one worker
process per core, one thread each, no dashboard, a temporary local directory removed at the end) and stops it
when the run ends; ``DaskExecutor(scheduler="tcp://host:8786")`` joins a running cluster (e.g. one started by
dask-jobqueue) and leaves it running.  A worker that dies mid-task (killed, out of memory, its node lost) has
its batch re-run by the scheduler on another worker; after ``allowed-failures`` (Dask's setting, 3 by default)
lost workers on one batch the run stops with an error, keeping everything stored.  GPU workers: start workers
with ``--resources GPU=1``; when the cluster advertises a ``GPU`` resource every batch asks for one, and
``--device auto`` is resolved on the worker (so a CPU-only client can drive GPU workers).
"""
from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import tempfile
import time
from typing import Any, Iterator

from vitheory.config import ConfigError, build_config, config_to_dict
from vitheory.sweep.batch import _run_batch, resolve_device

EXECUTORS = ("local", "dask")
CONNECT_TIMEOUT = 10.0            # seconds to reach a scheduler given with --scheduler
_ADDRESS = re.compile(r"^(?:(tcp|tls|inproc|ucx|ws|wss)://)?([A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:]+\]):(\d{1,5})$")


def check_executor(executor: str, scheduler: str | None = None, workers: int | None = None) -> None:
    """Check the executor options; raises ConfigError naming the option and the allowed values."""
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor={executor!r} is not allowed; choose one of {', '.join(EXECUTORS)}")
    if executor == "local":
        if scheduler is not None:
            raise ConfigError("--scheduler is used only with --executor dask")
        if workers is not None:
            raise ConfigError("--workers is used only with --executor dask")
        return
    if scheduler is not None:
        m = _ADDRESS.match(str(scheduler).strip())
        if not m or not 1 <= int(m.group(3)) <= 65535:
            raise ConfigError(f"--scheduler={scheduler!r} is not a Dask scheduler address; give HOST:PORT or "
                              "tcp://HOST:PORT (port 1..65535), e.g. tcp://10.0.0.5:8786")
        if workers is not None:
            raise ConfigError("--workers sets the size of the local cluster; it cannot be used with --scheduler "
                              "(the cluster you join has its own workers)")
    if workers is not None and not (isinstance(workers, int) and 1 <= workers <= 1024):
        raise ConfigError(f"--workers={workers!r} is not allowed; give an integer in 1..1024")
    if importlib.util.find_spec("distributed") is None:
        raise ConfigError("--executor dask needs the optional package 'distributed' (pip install "
                          "'vitheory[cluster]' or pip install 'distributed>=2024.1'); or use --executor local")


def run_batch_task(experiment: str, cfg_dict: dict, batch: list[dict], device: str) -> tuple[list[dict], float, dict]:
    """One batch on a worker: the metrics of its trials, the seconds per trial, and where it ran (device,
    torch threads).  Top-level, so that it pickles by reference."""
    import torch
    from vitheory.experiments.base import get_experiment
    exp = get_experiment(experiment)
    cfg = build_config(exp.config, cfg_dict)
    dev = resolve_device(device)
    t0 = time.perf_counter()
    metrics = _run_batch(exp, cfg, batch, dev, None)
    return metrics, (time.perf_counter() - t0) / max(1, len(batch)), {"device": dev,
                                                                      "threads": torch.get_num_threads()}


class _Seen:
    """Where the batches of a run ran (devices, torch threads), recorded as provenance."""

    def __init__(self):
        self.devices: set[str] = set()
        self.threads: set[int] = set()

    def add(self, where: dict) -> None:
        self.devices.add(str(where.get("device")))
        self.threads.add(int(where.get("threads", 0)))

    def as_dict(self) -> dict[str, Any]:
        def one(values):
            values = sorted(values)
            return values[0] if len(values) == 1 else values or None
        return {"device": one(self.devices), "threads": one(self.threads)}


class LocalExecutor:
    """Every batch in this process, one after the other."""
    name = "local"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def describe(self) -> str:
        return "local (this process)"

    def __init__(self):
        self.seen = _Seen()

    def map_batches(self, exp, cfg, batches: list[list[dict]], device: str, bar) -> Iterator[tuple[list, list, float]]:
        import torch
        dev = resolve_device(device)
        self.seen.add({"device": dev, "threads": torch.get_num_threads()})
        for batch in batches:
            t0 = time.perf_counter()
            metrics = _run_batch(exp, cfg, batch, dev, bar)
            yield batch, metrics, (time.perf_counter() - t0) / len(batch)


class DaskExecutor:
    """Batches as tasks on a Dask cluster; results come back to the client as they finish."""
    name = "dask"

    def __init__(self, scheduler: str | None = None, workers: int | None = None,
                 connect_timeout: float | None = None):
        check_executor("dask", scheduler, workers)
        self.scheduler = None if scheduler is None else str(scheduler).strip()
        self.workers = workers
        self.connect_timeout = CONNECT_TIMEOUT if connect_timeout is None else connect_timeout
        self.client = self.cluster = self._tmp = self._config = None
        self.seen = _Seen()

    def __enter__(self):
        import dask
        import distributed
        try:
            if self.scheduler is None:
                n = self.workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                     else os.cpu_count() or 1)
                self._tmp = tempfile.mkdtemp(prefix="vitheory-dask-")
                # the scheduler's and workers' scratch space too (never a dask-scratch-space in the cwd or /tmp)
                self._config = dask.config.set({"temporary-directory": self._tmp})
                self._config.__enter__()
                self.cluster = distributed.LocalCluster(
                    n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                    local_directory=self._tmp, silence_logs=logging.ERROR)
                self.client = distributed.Client(self.cluster)
            else:
                address = self.scheduler if "://" in self.scheduler else "tcp://" + self.scheduler
                self.client = distributed.Client(address, timeout=self.connect_timeout)
        except (OSError, TimeoutError) as e:
            self.__exit__(None, None, None)
            where = f"the Dask scheduler at {self.scheduler}" if self.scheduler else "a local Dask cluster"
            raise ConfigError(f"cannot connect to {where} ({' '.join(str(e).split())[:200]}); nothing was stored")\
                from None
        except BaseException as e:
            self.__exit__(None, None, None)
            if isinstance(e, RuntimeError) and self.scheduler is None:
                # the worker processes are spawned: they import the calling script again, which must not start
                # a run at import time
                raise ConfigError(f"the local Dask cluster did not start ({' '.join(str(e).split())[:200]}); in a "
                                  "script, call vitheory.run(..., executor='dask') under "
                                  "`if __name__ == '__main__':`") from None
            raise
        return self

    def __exit__(self, *exc):
        for obj in (self.client, self.cluster):
            if obj is not None:
                try:
                    obj.close()
                except Exception:                      # closing a cluster whose workers already died
                    pass
        self.client = self.cluster = None
        if self._config is not None:
            self._config.__exit__(None, None, None)
            self._config = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        return False

    def describe(self) -> str:
        n = len(self.client.scheduler_info().get("workers", {})) if self.client is not None else "?"
        where = self.scheduler or "local cluster on 127.0.0.1"
        return f"dask ({where}, {n} workers)"

    def _resources(self) -> dict[str, Any]:
        """{"GPU": 1} when the cluster's workers advertise GPUs (dask-worker --resources GPU=1), else none."""
        workers = self.client.scheduler_info().get("workers", {}).values()
        return {"GPU": 1} if any("GPU" in (w.get("resources") or {}) for w in workers) else {}

    def map_batches(self, exp, cfg, batches: list[list[dict]], device: str, bar) -> Iterator[tuple[list, list, float]]:
        import distributed
        if not batches:
            return
        cfg_dict = config_to_dict(cfg)
        resources = self._resources()
        futures = {}
        for i, batch in enumerate(batches):
            # pure=False: a re-run of the same command must compute again, never reuse a cached result
            fut = self.client.submit(run_batch_task, exp.name, cfg_dict, batch, device, pure=False,
                                     resources=resources or None, key=f"{exp.name}-batch-{i}-{time.time_ns()}")
            futures[fut] = batch
        try:
            for fut in distributed.as_completed(list(futures)):
                batch = futures[fut]
                try:
                    metrics, per, where = fut.result()
                    self.seen.add(where)
                except distributed.KilledWorker as e:
                    raise ConfigError(f"a batch of {len(batch)} trials of {exp.name} killed every worker that ran "
                                      f"it ({e}); out of memory? Everything stored so far is kept: lower the models "
                                      "trained together (--set batch_models=...) and re-run to resume") from None
                if bar is not None:
                    bar.update(len(batch))
                yield batch, metrics, per
                fut.release()
        finally:
            for fut in futures:
                if not fut.done():
                    fut.cancel()


def make_executor(executor: Any = "local", scheduler: str | None = None, workers: int | None = None):
    """An executor object from its name (an object with ``map_batches`` is returned as it is)."""
    if hasattr(executor, "map_batches"):
        return executor
    check_executor(executor, scheduler, workers)
    return LocalExecutor() if executor == "local" else DaskExecutor(scheduler, workers)

"""Speed-up of a sweep from 1 to 2 Dask workers (LocalCluster on 127.0.0.1), both in one run.

    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/cluster_speedup.py [EXPERIMENT] [SCALE]

Times run_experiment (cluster start, sweep, stop) for workers = 1 and 2 into fresh folders, checks the stored
metrics are identical, and prints the ratio last.  Default: sample-complexity at smoke scale with
batch_models=1 (24 one-trial tasks), a pipeline-sized sweep: on a loaded 2-core machine the ratio is a floor.
"""
from __future__ import annotations

import json
import sqlite3
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path


def stored(out: Path) -> dict:
    with closing(sqlite3.connect(out / "results.sqlite")) as con:
        return {k: json.loads(m) for k, m in con.execute("SELECT key, metrics FROM trials")}


def main() -> None:
    from vitheory.sweep.runner import run_experiment
    name = sys.argv[1] if len(sys.argv) > 1 else "sample-complexity"
    scale = sys.argv[2] if len(sys.argv) > 2 else "smoke"
    over = {"batch_models": 1, "steps": 200, "N_grid": [20, 40, 60, 80]} if name == "sample-complexity" else {}
    root = Path(tempfile.mkdtemp(prefix="vitheory-speedup-"))
    walls, results = {}, {}
    for workers in (1, 2):
        t0 = time.perf_counter()
        run_experiment(name, scale=scale, overrides=over, out=root / f"w{workers}", progress=False,
                       executor="dask", workers=workers)
        walls[workers] = time.perf_counter() - t0
        results[workers] = stored(root / f"w{workers}")
        print(f"{name} ({scale}, {len(results[workers])} trials): {workers} worker(s) {walls[workers]:.1f} s",
              flush=True)
    assert results[1] == results[2], "the stored metrics differ between 1 and 2 workers"
    print(f"speed-up 1 -> 2 workers: {walls[1] / walls[2]:.2f}x")


if __name__ == "__main__":
    main()

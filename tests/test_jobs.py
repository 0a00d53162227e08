"""`vitheory reproduce --jobs N`: experiments run N at a time in their own processes, with the same stored
results as one after the other."""
import sqlite3

import pytest

from vitheory import cli

ONLY = "iterations,width"


def stored(folder):
    with sqlite3.connect(folder / "results.sqlite") as db:
        rows = db.execute("select key, metrics from trials order by key").fetchall()
    import json
    drop = {"trial_seconds", "seconds", "wall_s"}
    return [(k, {a: b for a, b in json.loads(m).items() if a not in drop}) for k, m in rows]


def test_jobs_2_stores_what_jobs_1_stores(tmp_path, capsys):
    # the same numbers need the same torch thread count (reductions round differently on more threads):
    # --jobs 2 gives each process cores // 2 threads, so the one-after-the-other run uses as many
    import os

    import torch
    one, two = tmp_path / "one", tmp_path / "two"
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    try:
        assert cli.main(["reproduce", "--scale", "smoke", "--only", ONLY, "--out", str(one), "--quiet"]) == 0
    finally:
        torch.set_num_threads(before)
    assert cli.main(["reproduce", "--scale", "smoke", "--only", ONLY, "--out", str(two), "--quiet", "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 at a time" in out and out.count("done in") >= 4
    for name in ONLY.split(","):
        a, b = stored(one / name), stored(two / name)
        assert len(a) > 0 and a == b
    assert (two / "report.md").exists() and (two / "report.html").exists()


@pytest.mark.parametrize("argv, needle", [(["--jobs", "0"], "--jobs=0"), (["--jobs", "2", "--executor", "dask"], "--jobs")])
def test_bad_jobs_is_refused_before_anything_is_written(tmp_path, capsys, argv, needle):
    out = tmp_path / "r"
    assert cli.main(["reproduce", "--scale", "smoke", "--only", ONLY, "--out", str(out), *argv]) == 2
    assert needle in capsys.readouterr().err and not out.exists()

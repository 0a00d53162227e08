"""Every registered experiment, end to end through the public API at the smoke scale: a real run (model, data,
training), a stored trial per planned trial, a report with claims and figures, and a resume that adds nothing."""
import json
import sqlite3

import pytest

import vitheory
from vitheory.experiments.base import SCALES, get_experiment, registry, resolve_config

NAMES = list(registry())


@pytest.mark.parametrize("name", NAMES)
def test_every_scale_preset_is_a_valid_config(name):
    exp = get_experiment(name)
    assert exp.paper and exp.figure and exp.claim
    for scale in SCALES:
        resolve_config(exp, scale)


@pytest.mark.parametrize("name", NAMES)
def test_smoke_run_through_the_runner(name, run_dir):
    exp = get_experiment(name)
    planned = exp.trials(resolve_config(exp, "smoke"))
    df = vitheory.run(name, scale="smoke", out=run_dir, progress=False)
    assert len(df) == len(planned) > 0
    with sqlite3.connect(run_dir / "results.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM trials").fetchone()[0] == len(planned)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["experiment"] == name and summary["claims"]
    for c in summary["claims"]:
        assert c["id"] and c["statement"] and c["evidence"] and c["supported"] in (True, False, None)
    report = (run_dir / "report.md").read_text()
    assert name in report and summary["claims"][0]["id"] in report
    figures = sorted(p.name for p in (run_dir / "figures").iterdir())
    assert any(f.endswith(".png") for f in figures) and any(f.endswith(".pdf") for f in figures)
    # resume: the same command finds every trial done and stores nothing new
    again = vitheory.run(name, scale="smoke", out=run_dir, progress=False)
    assert len(again) == len(planned)
    with sqlite3.connect(run_dir / "results.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM trials").fetchone()[0] == len(planned)

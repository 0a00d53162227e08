"""vitheory export: the trials of a run folder as one flat table, CSV or Parquet; bad input refused."""
from __future__ import annotations

import json

import pandas as pd
import pytest

import vitheory
from vitheory import cli
from vitheory.report import export

FAST = dict(N_grid=[20, 40], steps=40, n_test=50, d=8, d_k=8, m=16, L=12)


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("export") / "run"
    vitheory.run("sample-complexity", scale="smoke", overrides=FAST, out=out, progress=False)
    return out


def check_table(table: pd.DataFrame, run) -> None:
    df = vitheory.load_results(run)
    assert len(table) == len(df) and table["trial_key"].is_unique
    assert {"experiment", "trial_key", "trial_seconds"} <= set(table.columns)
    assert set(df.columns) <= set(table.columns)                     # every param and metric, one column each
    assert list(table["seed"]) == list(df["seed"]) and list(table["N"]) == list(df["N"])
    assert table["test_error"].tolist() == pytest.approx(df["test_error"].tolist(), nan_ok=True)
    assert json.loads(table["N_grid"].iloc[0]) == [20, 40]            # a list value as JSON text


def test_csv(run, capsys):
    assert cli.main(["export", str(run)]) == 0
    assert "trials ->" in capsys.readouterr().out
    check_table(pd.read_csv(run / "trials.csv"), run)


def test_parquet_to_a_chosen_file(run, tmp_path):
    pytest.importorskip("pyarrow", reason="pyarrow is not installed")
    out = tmp_path / "t.parquet"
    assert cli.main(["export", str(run), "--format", "parquet", "--output", str(out)]) == 0
    check_table(pd.read_parquet(out), run)


def test_parquet_without_pyarrow_is_a_clear_message(run, monkeypatch, tmp_path):
    monkeypatch.setattr(export.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(export.ConfigError, match="pyarrow"):
        export.export_trials(run, "parquet", tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()


@pytest.mark.parametrize("args, words", [
    (["--format", "xml"], "--format"),
    (["--output", "{tmp}/no/such/folder/t.csv"], "does not exist"),
    (["--output", "{tmp}"], "is a folder"),
])
def test_bad_input_one_error_line(run, tmp_path, capsys, args, words):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cli.main(["export", str(run), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_not_a_run_folder(tmp_path, capsys):
    assert cli.main(["export", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err

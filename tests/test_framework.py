"""Configs, the CLI, run folders, resume after SIGKILL, report rebuilding, determinism."""
import json
import sqlite3

import pytest

import vitheory
from vitheory.cli import main
from vitheory.config import ConfigError
from vitheory.experiments.base import get_experiment, registry, resolve_config

SMOKE_FAST = ["--set", "N_grid=20,40", "--set", "steps=30", "--set", "n_test=100",
              "--set", "d=8", "--set", "d_k=8", "--set", "m=16", "--set", "L=12"]


def test_registry_lists_paper1_experiments():
    names = list(registry())
    for n in ("sample-complexity", "noise-and-init", "attention-concentration", "iterations", "sparsification",
              "assumptions-table", "memorization-heads", "memorization-context", "memorization-head-dim", "saturation"):
        assert n in names


def test_list_command(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "sample-complexity" in out and "Li" in out


@pytest.mark.parametrize("args,needle", [
    (["run", "nope"], "unknown experiment 'nope'"),
    (["run", "sample-complexity", "--set", "alpha_conf=0.9", "--set", "inv_alpha2=1.0"], "alpha_conf"),
    (["run", "sample-complexity", "--set", "alpha_conf=0.3", "--set", "inv_alpha2=14"], "must exceed alpha_conf"),
    (["run", "cnn-sample-complexity", "--set", "alpha_conf=0.28"], "must exceed alpha_conf"),
    (["run", "cnn-sample-complexity", "--set", "models=cnn,mlp"], "models="),
    (["run", "cnn-sample-complexity", "--set", "inv_alpha2=4"], "unknown parameter 'inv_alpha2'"),
    (["run", "sample-complexity", "--set", "L=0"], "L=0 is out of range"),
    (["run", "sample-complexity", "--set", "tau=-1"], "tau=-1.0 is out of range"),
    (["run", "sample-complexity", "--set", "bogus=3"], "unknown parameter 'bogus'"),
    (["run", "sample-complexity", "--set", "steps=ten"], "wrong type"),
    (["run", "sample-complexity", "--set", "noise=uniform"], "noise"),
    (["run", "sample-complexity", "--set", "steps"], "key=value"),
    (["run", "sample-complexity", "--scale", "huge"], "invalid choice"),
    (["run", "sample-complexity", "--seeds", "0"], "--seeds=0 is out of range"),
    (["run", "attention-concentration", "--set", "alpha_star=0.7", "--set", "alpha_conf=0.4"], "> 1"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, needle):
    out = tmp_path / "run"
    assert main(args + ["--out", str(out)] if args[0] == "run" and "--out" not in args else args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and needle in err, err
    assert not out.exists()


def test_alpha_sum_above_one_is_rejected():
    with pytest.raises(ConfigError, match="alpha_conf"):
        resolve_config(get_experiment("sample-complexity"), "smoke", {"inv_alpha2": "1.0", "alpha_conf": "0.5"})


def test_run_folder_report_and_rebuild(tmp_path):
    out = tmp_path / "sc"
    assert main(["run", "sample-complexity", "--scale", "smoke", *SMOKE_FAST, "--out", str(out), "--quiet"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["experiment"] == "sample-complexity" and cfg["config"]["steps"] == 30
    con = sqlite3.connect(out / "results.sqlite")
    rows = con.execute("SELECT params, metrics FROM trials").fetchall()
    n_expected = len(get_experiment("sample-complexity").trials(
        resolve_config(get_experiment("sample-complexity"), "smoke",
                       dict(a.split("=", 1) for a in SMOKE_FAST[1::2]))))
    assert len(rows) == n_expected
    # the floor check's trials (model "floor") come first; the first training trial follows them
    assert json.loads(rows[0][0])["model"] == "floor" and "oracle_errors" in json.loads(rows[0][1])
    first = next(r for r in rows if json.loads(r[0])["model"] != "floor")
    params, metrics = json.loads(first[0]), json.loads(first[1])
    assert {"seed", "alpha_star", "N", "tau", "lr"} <= set(params) and "test_error" in metrics
    report = (out / "report.md").read_text()
    assert "alpha_*^-2" in report and "N_min" in report
    assert (out / "figures" / "sample_complexity_heatmap.png").is_file()
    assert (out / "figures" / "sample_complexity_heatmap.pdf").is_file()
    # the report is rebuilt from stored results only
    (out / "report.md").unlink()
    for f in (out / "figures").iterdir():
        f.unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == report
    # a second run of the same command computes nothing new
    before = con.execute("SELECT COUNT(*) FROM trials").fetchone()[0]

    assert main(["run", "sample-complexity", "--scale", "smoke", *SMOKE_FAST, "--out", str(out), "--quiet"]) == 0
    assert con.execute("SELECT COUNT(*) FROM trials").fetchone()[0] == before
    # a different config refuses to mix into the same folder
    assert main(["run", "sample-complexity", "--scale", "smoke", *SMOKE_FAST, "--set", "tau=0.2",
                 "--out", str(out), "--quiet"]) == 2


def test_report_on_missing_or_corrupt_folder(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    assert main(["report", str(bad)]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_same_seed_same_numbers():
    kw = dict(scale="smoke", overrides=dict(a.split("=", 1) for a in SMOKE_FAST[1::2]), progress=False)
    a = vitheory.run("sample-complexity", **kw)
    b = vitheory.run("sample-complexity", **kw)
    assert len(a) > 0
    for col in ("test_error", "test_loss", "oracle_errors", "mean_pool_errors"):   # floor rows: no test error
        assert a[col].fillna(-1).tolist() == b[col].fillna(-1).tolist()


def test_api_run_without_folder_shows_progress(capsys):
    """The notebook call of the README: no run folder, progress bar on (the default)."""
    df = vitheory.run("sample-complexity", scale="smoke",
                      overrides={**dict(a.split("=", 1) for a in SMOKE_FAST[1::2])})
    exp = get_experiment("sample-complexity")
    cfg = resolve_config(exp, "smoke", {**dict(a.split("=", 1) for a in SMOKE_FAST[1::2])})
    assert len(df) == len(exp.trials(cfg)) and set(df["model"]) == {"vit", "floor"}   # floor check + grid
    assert "sample-complexity" in capsys.readouterr().err


def test_cnn_sample_complexity_smoke_report(tmp_path):
    """Figure 1b: CNN and ViT on the same grid, the three Proposition-1 claims in the report."""
    out = tmp_path / "cnn"
    sets = ["--set", "N_grid=20,40", "--set", "steps=30", "--set", "n_test=100", "--set", "d=8", "--set", "d_k=8",
            "--set", "m=16", "--set", "L=12", "--set", "inv_alpha4=120,160,200"]
    assert main(["run", "cnn-sample-complexity", "--scale", "smoke", *sets, "--out", str(out), "--quiet"]) == 0
    df = vitheory.load_results(out)
    assert set(df["model"]) == {"cnn", "vit"} and len(df) == 2 * 3 * 2 * 2
    report = (out / "report.md").read_text()
    for claim in ("cnn-law", "cnn-needs-more", "ratio-grows", "Proposition 1: CNN against ViT"):
        assert claim in report
    assert (out / "figures" / "cnn_sample_complexity_heatmap.png").is_file()

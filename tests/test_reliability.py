"""Bad input, faults in the environment and extreme values at every entry point, as a table of cases.

Each case runs a command (in-process through ``vitheory.cli.main``, or as a subprocess where a signal or a
resource limit is part of the case) and checks its outcome class:

* ``works``: exit 0 and the stated result is right;
* ``refused``: exit 2, one line ``error: ...`` on stderr naming the problem, no traceback, and nothing written
  (no run folder created, every existing file unchanged), after which the corrected command runs;
* ``failure stored``: the run completes and the trial is stored as a failure (e.g. a diverged training).

The same table, rendered, is docs/reliability.md; ``test_reliability_doc_is_current`` keeps the two equal
(regenerate with ``python tests/test_reliability.py``).  Faults (signals, two writers, a full disk, a corrupt
store) are in tests/test_faults.py and the property tests in tests/test_fuzz_cli.py; both are listed in the
document too.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from vitheory.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
FAST = ["--set", "N_grid=20,40", "--set", "steps=30", "--set", "n_test=100", "--set", "d=8", "--set", "d_k=8",
        "--set", "m=16", "--set", "L=12"]
RUN = ["run", "sample-complexity", "--scale", "smoke", *FAST, "--quiet"]
ASSUMPTIONS = ["run", "assumptions-table", "--scale", "smoke", "--set", "representations=embedding,random_attention",
               "--quiet"]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------
def state(path: Path) -> dict:
    """Every file below ``path`` (or ``path`` itself) with its content hash: equal states = nothing written."""
    if not path.exists() and not path.is_symlink():
        return {}
    if path.is_file() or path.is_symlink():
        return {".": hashlib.sha1(path.read_bytes()).hexdigest() if path.is_file() else os.readlink(path)}
    # SQLite's shared-memory index (-shm) and an empty write-ahead log (-wal) appear when a WAL database is read:
    # they are not content
    def content(p):
        return not (p.name.endswith("-shm") or (p.name.endswith("-wal") and p.stat().st_size == 0))
    return {str(p.relative_to(path)): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(path.rglob("*")) if content(p)}


def refused(capsys, argv, needle, *watch: Path):
    """``argv`` exits 2 with one error line containing ``needle``; nothing under ``watch`` changes."""
    before = [state(w) for w in watch]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, (code, err)
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert needle.lower() in err.lower(), err
    assert [state(w) for w in watch] == before, "a refused command wrote something"
    return err


def works(capsys, argv):
    code = main(argv)
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def run_folder(tmp_path, name="run") -> Path:
    out = tmp_path / name
    assert main([*RUN, "--out", str(out)]) == 0
    return out


def metrics(out: Path) -> list[dict]:
    with closing(sqlite3.connect(out / "results.sqlite")) as con, con:
        assert all(v == 1 for (v,) in con.execute("SELECT json_valid(metrics) FROM trials")), "invalid JSON stored"
        return [json.loads(m) for (m,) in con.execute("SELECT metrics FROM trials")]


# ------------------------------------------------------------------------------------------------------------
# the cases
# ------------------------------------------------------------------------------------------------------------
CASES: dict[str, tuple[str, str, str]] = {}


def case(area: str, what: str, outcome: str):
    def register(fn):
        CASES[fn.__name__] = (area, what, outcome)
        return fn
    return register


@case("wrong results", "`run sample-complexity --set lr=1e6` (a step size that cannot train)", "refused (lr range)")
def c_lr_huge(tmp_path, capsys):
    refused(capsys, [*RUN, "--set", "lr=1e6", "--out", str(tmp_path / "r")], "lr=", tmp_path)


@case("wrong results", "`--set tau=1e20`, and 1e308 for tau, lr, sigma, delta, pattern_norm", "refused (range)")
def c_huge_scales(tmp_path, capsys):
    for key, value in (("tau", "1e20"), ("tau", "1e308"), ("lr", "1e308"), ("sigma", "1e308"), ("delta", "1e308"),
                       ("pattern_norm", "1e308"), ("lr", "inf"), ("tau", "nan")):
        refused(capsys, [*RUN, "--set", f"{key}={value}", "--out", str(tmp_path / "r")], f"{key}=", tmp_path)


@case("wrong results", "`--set lr=100` (inside the range; the training diverges)",
      "failure stored: every trial diverged, none a success; metrics valid JSON")
def c_diverged_is_failure(tmp_path, capsys):
    out = tmp_path / "r"
    works(capsys, [*RUN, "--set", "lr=100", "--out", str(out)])
    rows = [r for r in metrics(out) if "oracle_errors" not in r]   # the floor check's rows train nothing
    assert rows and all(r["diverged"] and not r["success"] for r in rows)
    assert "diverged" in (out / "report.md").read_text()


@case("wrong results", "`report` on a folder whose config.json lacks its \"config\" key", "refused")
def c_report_config_without_config(tmp_path, capsys):
    out = run_folder(tmp_path)
    meta = json.loads((out / "config.json").read_text())
    del meta["config"]
    (out / "config.json").write_text(json.dumps(meta))
    refused(capsys, ["report", str(out)], "config", out)


@case("checked too late", "`run assumptions-table --set query_index=999`, then the corrected command",
      "refused before the folder exists; the corrected command runs")
def c_query_index(tmp_path, capsys):
    out = tmp_path / "a"
    refused(capsys, [*ASSUMPTIONS, "--set", "query_index=999", "--out", str(out)], "query_index", tmp_path)
    assert not out.exists()
    works(capsys, [*ASSUMPTIONS, "--set", "query_index=0", "--out", str(out)])


@case("checked too late", "an image folder that exists but holds no image; a CIFAR path with no batches; "
      "a junk pretrained_weights file", "refused before the folder exists")
def c_unusable_files(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    junk = tmp_path / "weights.safetensors"
    junk.write_bytes(b"not a safetensors file")
    for key, value, needle in (("image_source", f"folder:{empty}", "no image"),
                               ("image_source", f"cifar10:{empty}", "CIFAR-10"),
                               ("pretrained_weights", str(junk), "pretrained_weights")):
        argv = ["run", "assumptions-table", "--scale", "smoke", "--quiet", "--set", f"{key}={value}",
                "--out", str(tmp_path / "a")]
        refused(capsys, argv, needle, tmp_path)
        assert not (tmp_path / "a").exists()


@case("checked too late", "a folder left by an interrupted start (0-byte config.json.tmp, empty results.sqlite)",
      "works: the command starts afresh")
def c_leftover_tmp(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "config.json.tmp").write_bytes(b"")
    sqlite3.connect(out / "results.sqlite").close()
    works(capsys, [*RUN, "--out", str(out)])
    assert not (out / "config.json.tmp").exists() and metrics(out)


@case("checked too late", "a folder holding another config with no finished trial, then the corrected command",
      "works: a folder with no finished trial never blocks")
def c_no_finished_trial_never_blocks(tmp_path, capsys):
    out = tmp_path / "r"
    (tmp_path / "r").mkdir()
    (out / "config.json").write_text(json.dumps({"experiment": "sample-complexity", "config": {"tau": 9}}))
    works(capsys, [*RUN, "--out", str(out)])
    assert json.loads((out / "config.json").read_text())["config"]["tau"] != 9 and metrics(out)


@case("checked too late", "a folder holding another config with finished trials", "refused; the folder unchanged")
def c_other_config_with_trials(tmp_path, capsys):
    out = run_folder(tmp_path)
    refused(capsys, [*RUN, "--set", "tau=0.2", "--out", str(out)], "different config", out)


@case("tracebacks", "`--out` that is a file, a symbolic link to a file, under a file, a dangling link, or empty",
      "refused")
def c_out_not_a_folder(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    link = tmp_path / "link"
    link.symlink_to(f)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    for out, needle in ((f, "is a file"), (link, "is a file"), (f / "sub", "is under"), (dangling, "dangling"),
                        ("", "--out is empty")):
        refused(capsys, [*RUN, "--out", str(out)], needle, tmp_path)


@case("tracebacks", "`--out` in a read-only folder, and a re-run on a read-only finished run folder",
      "refused (simulated with os.access when the tests run as root, who may write anywhere)")
def c_read_only(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    done = run_folder(tmp_path, "done")
    if IS_ROOT:
        real = os.access
        blocked = (ro, done, done / "config.json", done / "results.sqlite", done / "report.md")
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if (mode & os.W_OK and Path(p) in blocked)
                            else real(p, mode, **kw))
    else:
        for p in (ro, done / "config.json", done / "results.sqlite", done / "report.md", done):
            p.chmod(0o555 if p.is_dir() else 0o444)
    refused(capsys, [*RUN, "--out", str(ro / "r")], "not writable", tmp_path / "ro")
    refused(capsys, [*RUN, "--out", str(done)], "not writable", done)
    refused(capsys, ["report", str(done)], "not writable", done)


@case("tracebacks", "`run` and `report` on a corrupt results.sqlite", "refused (corrupt); the file unchanged")
def c_corrupt_store(tmp_path, capsys):
    out = run_folder(tmp_path)
    for extra in ("-wal", "-shm"):
        Path(str(out / "results.sqlite") + extra).unlink(missing_ok=True)
    (out / "results.sqlite").write_bytes(b"garbage" * 100)
    refused(capsys, [*RUN, "--out", str(out)], "corrupt", out)
    refused(capsys, ["report", str(out)], "corrupt", out)


@case("tracebacks", "`report` on a config.json that is a JSON list", "refused")
def c_config_list(tmp_path, capsys):
    out = run_folder(tmp_path)
    (out / "config.json").write_text("[1, 2, 3]")
    refused(capsys, ["report", str(out)], "config.json", out)


@case("tracebacks", "`report` on a row with bad metrics JSON; the combined report of its parent",
      "refused; the parent's report lists the folder as not reportable and reports the others")
def c_bad_metrics_row(tmp_path, capsys):
    parent = tmp_path / "all"
    parent.mkdir()
    run_folder(parent, "good")
    bad = run_folder(parent, "bad")
    with closing(sqlite3.connect(bad / "results.sqlite")) as con, con:
        con.execute("UPDATE trials SET metrics = '{broken' WHERE rowid = 1")
    refused(capsys, ["report", str(bad)], "not valid JSON", bad)
    works(capsys, ["report", str(parent)])
    text = (parent / "report.md").read_text()
    assert "could not report" in text and "bad" in text and "good/figures" in text


@case("tracebacks", "`report` where figures/ is a file", "refused")
def c_figures_is_a_file(tmp_path, capsys):
    out = run_folder(tmp_path)
    for f in (out / "figures").iterdir():
        f.unlink()
    (out / "figures").rmdir()
    (out / "figures").write_text("a file")
    refused(capsys, ["report", str(out)], "not a folder", out)


@case("tracebacks", "a read-only results database", "refused with 'read-only', not 'corrupt'")
def c_read_only_database(tmp_path, capsys, monkeypatch):
    out = run_folder(tmp_path)
    db = out / "results.sqlite"
    if IS_ROOT:
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if (mode & os.W_OK and Path(p) == db)
                            else real(p, mode, **kw))
    else:
        db.chmod(0o444)
    err = refused(capsys, [*RUN, "--set", "seeds=3", "--out", str(out)], "read-only", out)
    assert "corrupt" not in err


@case("tracebacks", "`report` on another program's SQLite file named results.sqlite", "refused; the file unchanged")
def c_foreign_sqlite(tmp_path, capsys):
    out = run_folder(tmp_path)
    db = out / "results.sqlite"
    for extra in ("", "-wal", "-shm"):
        Path(str(db) + extra).unlink(missing_ok=True)
    with closing(sqlite3.connect(db)) as con, con:
        con.execute("CREATE TABLE songs (title TEXT)")
        con.execute("INSERT INTO songs VALUES ('x')")
    refused(capsys, ["report", str(out)], "not a vitheory results database", db)
    refused(capsys, [*RUN, "--out", str(out)], "not a vitheory results database", db)
    with closing(sqlite3.connect(db)) as con, con:
        assert [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["songs"]


@case("tracebacks", "`reproduce --only \"\"` and `--only ,`", "refused; no folder created")
def c_reproduce_only_empty(tmp_path, capsys):
    for only in ("", ","):
        refused(capsys, ["reproduce", "--scale", "smoke", "--only", only, "--out", str(tmp_path / "rp")], "--only",
                tmp_path)
        assert not (tmp_path / "rp").exists()


@case("tracebacks", "out of memory on in-range sizes (d = L = 4096 under a 4 GB address-space limit)",
      "refused: one line naming the batch and what to lower; stored trials kept")
def c_out_of_memory(tmp_path):
    out = tmp_path / "oom"
    code = (f"import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)); "
            f"from vitheory.cli import main; sys.exit(main({[*RUN, '--set', 'd=4096', '--set', 'L=4096', '--set', 'N_grid=400', '--out', str(out)]!r}))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    err = p.stderr.strip()
    assert p.returncode == 2 and err.startswith("error: out of memory") and "\n" not in err, err
    assert "batch_models" in err


@case("tracebacks", "a reader that closes the pipe (`vitheory ... | head`)", "works: quiet exit, no traceback")
def c_broken_pipe():
    p = subprocess.Popen([sys.executable, "-m", "vitheory.cli", "show", "sample-complexity"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    p.wait(timeout=60)
    assert "Traceback" not in err and "Error" not in err, err


@case("smaller", "`steps_run` of one trial trained in batches of different sizes", "works: the same number")
def c_steps_run_per_trial():
    import vitheory
    over = dict(a.split("=", 1) for a in FAST[1::2])
    a = vitheory.run("sample-complexity", scale="smoke", overrides={**over, "batch_models": 1}, progress=False)
    b = vitheory.run("sample-complexity", scale="smoke", overrides=over, progress=False)
    key = ["alpha_star", "N", "seed"]
    a, b = a[a["model"] == "vit"], b[b["model"] == "vit"]          # the floor check's rows train nothing
    assert a.sort_values(key)["steps_run"].tolist() == b.sort_values(key)["steps_run"].tolist()


@case("smaller", "`run --dry-run` on a good and on a bad config", "works / refused: nothing run or written")
def c_dry_run(tmp_path, capsys):
    out = tmp_path / "r"
    assert "nothing was run or written" in works(capsys, [*RUN, "--dry-run", "--out", str(out)])
    assert not out.exists()
    refused(capsys, [*RUN, "--dry-run", "--set", "L=0", "--out", str(out)], "L=0", tmp_path)


def _call(fn, tmp_path, capsys, monkeypatch):
    import inspect
    available = {"tmp_path": tmp_path, "capsys": capsys, "monkeypatch": monkeypatch}
    return fn(**{k: available[k] for k in inspect.signature(fn).parameters})


@pytest.mark.parametrize("name", list(CASES))
def test_case(name, tmp_path, capsys, monkeypatch):
    _call(globals()[name], tmp_path, capsys, monkeypatch)


# ------------------------------------------------------------------------------------------------------------
# the document
# ------------------------------------------------------------------------------------------------------------
FAULTS = [  # tests/test_faults.py
    ("SIGKILL in the middle of a sweep, then the same command", "every trial stored exactly once"),
    ("SIGTERM in the middle of a sweep", "exit 143 with a one-line message; the re-run stores every trial once"),
    ("two processes running the same command on one folder", "both finish; every trial stored exactly once"),
    ("a write failure: the file-size limit reached (ulimit -f) while storing", "exit 2 with one line; nothing half-"
     "written; the re-run without the limit stores every trial once, identical to an uninterrupted run"),
    ("a corrupt store found on resume", "refused; the file unchanged"),
]
FUZZ = [  # tests/test_fuzz_cli.py
    ("`run --dry-run` with random and malformed `--set key=value` for every experiment",
     "validates, or exit 2 with one error line; nothing written"),
    ("`report` on folders with random config.json and results.sqlite contents", "a report, or exit 2 with one "
     "error line; the input files unchanged"),
    ("random argument lists for every verb", "exit 0 or 2, never a traceback"),
]
LINALG_CASES = [  # tests/test_linalg_inputs.py: (test function, case, outcome)
    ("test_kruskal_rank_at_extreme_scales", "a 12x6 Gaussian array times 1e200 or 1e-200 through `kruskal_rank`",
     "works: k-rank 6, as unscaled"),
    ("test_assumptions_on_scaled_tokens", "`vitheory assumptions` on tokens scaled by 1e-200 .. 1e200",
     "works: the three checks as unscaled"),
    ("test_powers_of_two_give_bit_identical_results", "an array scaled by powers of two", "works: bit-identical"),
    ("test_paper_mode_refuses_what_float32_cannot_hold", "paper (float32) mode on values float32 cannot hold",
     "refused, naming the input"),
    ("test_long_double_beyond_float64_is_refused", "long-double values beyond float64", "refused"),
    ("test_int64_near_2_62_is_exact", "int64 values near 2^62", "works: k-rank 2 (rational arithmetic)"),
    ("test_big_endian_arrays", "big-endian .npy arrays", "works: read, same result as little-endian"),
    ("test_bad_npy_files", "a text file named .npy, a truncated .npy, a header claiming 149 GiB, an object "
     "array, a string array", "refused with the file's actual problem (never called 'pickled' unless it is); no "
     "pickle is loaded"),
    ("test_memory_is_checked_before_allocating", "an array larger than the available memory",
     "refused before allocating, naming the shape and the sizes"),
    ("test_out_of_memory_becomes_one_error", "out of memory inside the rank computation", "refused: one line"),
    ("test_pt_files", ".pt files: sparse COO and CSR tensors, integer tensors, two tensors, junk, a pickle "
     "payload", "works (sparse and integer tensors) or refused with one line; loaded with weights_only=True"),
    ("test_cuda_on_cpu_torch", "`--device cuda` on CPU torch", "refused: one line"),
    ("test_closed_pipe_is_not_an_error", "`vitheory kruskal ... | head -c 10`", "works: quiet exit 0"),
]
LINALG_FUZZ = [  # tests/test_linalg_fuzz.py
    ("400 random arrays through every vitheory.linalg function: every dtype and byte order, structured rows "
     "(duplicate, zero, parallel, planted-dependent, low-rank, integers near the top of their range), scales "
     "1e-298 .. 1e301, NaN, Inf, empty, wrong number of dimensions",
     "the result of the unscaled array (and the brute-force Kruskal rank), or ConfigError naming the input"),
    ("60 integer arrays near 2^62: exact Kruskal rank", "equal to the rank in rational arithmetic"),
    ("250 such arrays as .npy / .pt / sparse .pt files, truncated, garbage, text, missing or a folder, through "
     "`kruskal` and `assumptions`", "the API's result, or exit 2 with one error line; no traceback"),
    ("150 random in-range and out-of-range option values of `kruskal` / `assumptions`",
     "a result, or exit 2 with one error line"),
]


def render() -> str:
    lines = ["# Reliability", "",
             "What was tried as a new user would, and what happens. Generated from the test suite: the cases are "
             "tests/test_reliability.py (each row is one test; the suite fails if an outcome differs), the faults "
             "tests/test_faults.py, the property tests tests/test_fuzz_cli.py and tests/test_linalg_fuzz.py. Regenerate with "
             "`.venv/bin/python tests/test_reliability.py`; `tests/test_reliability.py::test_reliability_doc_is_current` "
             "keeps this page equal to the suite.", "",
             "Outcome classes: **works** (exit 0, result checked); **refused** (exit 2, one line `error: ...` naming "
             "the problem, no traceback, nothing written, every existing file unchanged); **failure stored** (the "
             "trial is stored as a failure, never as a success).", "",
             "## Cases", "", "| area | case | outcome |", "|---|---|---|"]
    lines += [f"| {area} | {what} | {outcome} |" for area, what, outcome in CASES.values()]
    lines += ["", "## Faults", "", "| fault | outcome |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in FAULTS]
    lines += ["", "## Linear-algebra inputs", "", "| case | outcome | test |", "|---|---|---|"]
    lines += [f"| {case} | {outcome} | `{name}` |" for name, case, outcome in LINALG_CASES]
    lines += ["", "## Property tests", "", "| input | outcome |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in FUZZ + LINALG_FUZZ]
    lines += ["", f"In all: {len(CASES) + len(LINALG_CASES)} cases, {len(FAULTS)} faults, {len(FUZZ) + len(LINALG_FUZZ)} property tests; wrong results 0, "
              "tracebacks 0, folders left by refused input 0, results lost 0 (each is an assertion of the suite).", ""]
    return "\n".join(lines)


def test_linalg_rows_name_existing_tests():
    source = (Path(__file__).parent / "test_linalg_inputs.py").read_text()
    missing = [name for name, _, _ in LINALG_CASES if f"def {name}(" not in source]
    assert not missing, f"docs/reliability.md rows name tests that do not exist: {missing}"


def test_reliability_doc_is_current():
    assert DOC.is_file() and DOC.read_text() == render(), \
        "docs/reliability.md differs from the suite: run `.venv/bin/python tests/test_reliability.py`"


if __name__ == "__main__":
    DOC.write_text(render())
    print(f"wrote {DOC}")

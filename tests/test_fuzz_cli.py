"""Property tests of the command line: random and malformed input never gives a traceback or writes anything.

* ``run --dry-run`` with random ``--set key=value`` (real keys with hostile values, unknown keys, malformed
  items) for every experiment: the config validates, or exit 2 with one ``error:`` line; nothing is written.
* ``report`` on folders with random ``config.json`` and ``results.sqlite`` contents: a report, or exit 2 with one
  line; the input files are unchanged.
* random argument lists for every verb: exit 0 or 2, never a traceback.

(The linear-algebra entry points -- arrays of every dtype, scale and shape -- have their own property tests.)
"""
from __future__ import annotations

import dataclasses
import json
import sqlite3
import tempfile
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitheory.cli import main
from vitheory.experiments.base import registry

NAMES = list(registry())
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))

hostile_numbers = st.sampled_from(["0", "-1", "1e308", "-1e308", "1e-320", "nan", "inf", "-inf", "1e6", "3.5",
                                   "999999999999999999999", "0x10", "1_000", "", " ", "true", "none"])
hostile_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
values = st.one_of(hostile_numbers, hostile_text,
                   st.lists(hostile_numbers, min_size=0, max_size=4).map(",".join))


def one_error_line(err: str) -> bool:
    err = err.strip()
    return err.startswith("error: ") and "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data())
def test_run_dry_run_with_random_overrides(name, data, capsys):
    fields = [f.name for f in dataclasses.fields(registry()[name].config)]
    keys = st.one_of(st.sampled_from(fields), hostile_text)
    items = data.draw(st.lists(st.one_of(st.tuples(keys, values).map(lambda kv: f"{kv[0]}={kv[1]}"), hostile_text),
                               min_size=1, max_size=3))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        argv = ["run", name, "--scale", "smoke", "--dry-run", "--out", str(out)]
        for item in items:
            argv += ["--set", item]
        code = main(argv)
        cap = capsys.readouterr()
        assert code in (0, 2), (argv, cap.err)
        assert code == 0 or one_error_line(cap.err), (argv, cap.err)
        assert "Traceback" not in cap.err
        assert not out.exists(), "--dry-run or a refused command wrote the run folder"


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                                     hostile_text),
                           lambda children: st.one_of(st.lists(children, max_size=3),
                                                      st.dictionaries(hostile_text, children, max_size=3)),
                           max_leaves=8)
configs = st.one_of(json_values,
                    st.fixed_dictionaries({"experiment": st.sampled_from(NAMES + ["nope"]),
                                           "config": st.dictionaries(st.sampled_from(["seeds", "tau", "d", "n", "L",
                                                                                      "steps", "junk"]),
                                                                     json_values, max_size=3)}))


def write_store(path: Path, kind: str, rows) -> None:
    if kind == "bytes":
        path.write_bytes(rows)
        return
    with closing(sqlite3.connect(path)) as con, con:
        if kind == "foreign":
            con.execute("CREATE TABLE other (x)")
            return
        con.execute("CREATE TABLE trials (key TEXT PRIMARY KEY, experiment TEXT NOT NULL, seed INTEGER NOT NULL, "
                    "params TEXT NOT NULL, metrics TEXT NOT NULL, seconds REAL, created REAL NOT NULL)")
        con.executemany("INSERT OR IGNORE INTO trials VALUES (?, 'x', 0, ?, ?, 0, 0)",
                        [(str(i), p, m) for i, (p, m) in enumerate(rows)])


stores = st.one_of(
    st.tuples(st.just("bytes"), st.binary(max_size=300)),
    st.tuples(st.just("foreign"), st.none()),
    st.tuples(st.just("rows"), st.lists(st.tuples(json_values.map(json.dumps) | hostile_text,
                                                  json_values.map(json.dumps) | hostile_text), max_size=3)))


@SETTINGS
@given(config=configs, store=stores)
def test_report_on_random_folders(config, store, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        (run / "config.json").write_text(json.dumps(config))
        write_store(run / "results.sqlite", *store)
        before = {p.name: p.read_bytes() for p in run.iterdir()}
        code = main(["report", str(run)])
        cap = capsys.readouterr()
        assert code in (0, 2) and (code == 0 or one_error_line(cap.err)), cap.err
        assert "Traceback" not in cap.err
        after = {p.name: p.read_bytes() for p in run.iterdir() if p.name in before}
        assert after == before, "report changed its input files"


VERBS = ["list", "show", "run", "report", "reproduce", "kruskal", "assumptions"]
tokens = st.one_of(st.sampled_from(VERBS + NAMES + ["--scale", "smoke", "paper", "huge", "--set", "--seeds", "--out",
                                                    "--only", "--device", "cuda", "--samples", "--k", "--tol",
                                                    "--exact", "--query-index", "-1", "0", "x=1", "--help"]),
                   hostile_text)


@SETTINGS
@given(argv=st.lists(tokens, min_size=0, max_size=6))
def test_random_argument_lists(argv, capsys, tmp_path_factory):
    if "run" in argv[:1] or "reproduce" in argv[:1]:
        argv = argv + ["--dry-run"]                  # check every input, train nothing
    if "--help" in argv:
        argv = [a for a in argv if a != "--help"]
    cwd = tmp_path_factory.mktemp("cwd")
    import os
    here = os.getcwd()
    os.chdir(cwd)                                    # default run folders would land here
    try:
        code = main(argv)
    except SystemExit as e:                          # argparse's own exit (none expected: errors are ConfigError)
        code = e.code
    finally:
        os.chdir(here)
    cap = capsys.readouterr()
    assert code in (0, 2), (argv, code, cap.err)
    assert "Traceback" not in cap.err
    assert code == 0 or one_error_line(cap.err), (argv, cap.err)

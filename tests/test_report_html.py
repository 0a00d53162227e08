"""report.html (one self-contained file: figures embedded, no external resource) and the provenance in both
reports, for one run folder and for a reproduce folder; older run folders without provenance.json still report."""
from __future__ import annotations

import re
import subprocess
import sys
from html.parser import HTMLParser

import pytest
import torch

import vitheory
from vitheory import cli

FAST = ["--set", "N_grid=20,40", "--set", "steps=40", "--set", "n_test=50", "--set", "d=8", "--set", "d_k=8",
        "--set", "m=16", "--set", "L=12"]


class Refs(HTMLParser):
    """Every src/href/url reference of a page, and its <img> sources."""

    def __init__(self):
        super().__init__()
        self.refs, self.imgs = [], []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("src", "href", "srcset", "poster", "data", "action") and v is not None:
                self.refs.append(v)
                if tag == "img" and k == "src":
                    self.imgs.append(v)


def self_contained(page: str) -> Refs:
    refs = Refs()
    refs.feed(page)
    external = [r for r in refs.refs if not (r.startswith("data:") or r.startswith("#"))]
    assert not external, f"references outside the file: {external[:5]}"
    assert not re.search(r"https?://", " ".join(refs.refs))
    assert "url(" not in page and "@import" not in page and "<script" not in page.lower()
    assert "<link" not in page.lower()
    return refs


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("html") / "run"
    assert cli.main(["run", "sample-complexity", "--scale", "smoke", *FAST, "--out", str(out), "--quiet"]) == 0
    return out


def test_run_folder_html_is_self_contained_with_figures_and_provenance(run):
    page = (run / "report.html").read_text()
    refs = self_contained(page)
    figures = sorted(p.stem for p in (run / "figures").glob("*.png"))
    assert figures and len(refs.imgs) == len(figures)
    assert all(src.startswith("data:image/png;base64,") and len(src) > 1000 for src in refs.imgs)
    assert 'class="badge' in page and "Spread over seeds" in page and "95% CI" in page
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=str(run.parents[0])).stdout.strip()   # tmp is no checkout: "" -> only the label
    for text in ("vitheory version", vitheory.__version__, "git commit", torch.__version__, "threads", "wall time",
                 "vitheory run sample-complexity --scale smoke", "device"):
        assert text in page, text
    assert commit == "" or commit in page
    md = (run / "report.md").read_text()
    assert "## Provenance" in md and torch.__version__ in md and "vitheory run sample-complexity" in md
    assert "wall time" in md and "git commit" in md


def test_an_older_run_folder_without_provenance_still_reports(run, tmp_path):
    import shutil
    old = tmp_path / "old"
    shutil.copytree(run, old)
    (old / "provenance.json").unlink()
    vitheory.report(old)
    page = (old / "report.html").read_text()
    self_contained(page)
    assert "not recorded" in page and "not recorded" in (old / "report.md").read_text()


def test_reproduce_report_html(tmp_path, one_thread):
    root = tmp_path / "repro"
    assert cli.main(["reproduce", "--scale", "smoke", "--only", "sample-complexity", "--out", str(root),
                     "--quiet"]) == 0
    page = (root / "report.html").read_text()
    refs = self_contained(page)
    assert len(refs.imgs) == len(list((root / "sample-complexity" / "figures").glob("*.png"))) > 0
    assert "Wall time per experiment" in page and "all experiments" in page
    assert "vitheory reproduce --scale smoke --only sample-complexity" in page
    md = (root / "report.md").read_text()
    assert "wall time: all experiments" in md and "## Summary" in md


def test_paper_value_shown_beside_ours():
    from vitheory.experiments.base import Claim
    from vitheory.report.html import claims_html
    table = claims_html([Claim("X1", "a law", True, "slope 2.1", paper="slope 2 (Fig. 1)"),
                         Claim("X2", "another", None, "too few points")])
    assert "the paper" in table and "slope 2 (Fig. 1)" in table and "inconclusive" in table
    assert "the paper" not in claims_html([Claim("X2", "another", None, "too few points")])


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))

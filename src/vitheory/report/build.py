"""Reports rebuilt from stored results only (config.json + results.sqlite of a run folder).

``build_report(run_dir)`` re-runs the experiment's ``analyze`` and ``plot`` on the stored rows and
writes ``report.md`` and ``figures/``; ``build_combined_report(root)`` does it for every run folder
below a ``vitheory reproduce`` folder and writes one ``report.md`` with a summary of every claim.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pandas as pd

from vitheory.config import ConfigError, build_config
from vitheory.experiments.base import Analysis, Experiment, get_experiment, results_frame
from vitheory.sweep.runner import in_trial_order
from vitheory.sweep.store import dumps, open_store, read_run_config, trial_key


def _setup_matplotlib() -> None:
    import matplotlib
    matplotlib.use("Agg")


def load_run(run_dir: str | os.PathLike) -> tuple[Experiment, object, pd.DataFrame, dict]:
    """(experiment, config, one-row-per-trial DataFrame, config.json contents) of a run folder."""
    meta = read_run_config(run_dir)
    exp = get_experiment(meta.get("experiment", "?"))
    cfg = build_config(exp.config, meta.get("config", {}))
    with open_store(run_dir) as store:
        rows = store.rows()
    rows = in_trial_order(exp, rows, [trial_key(exp.name, t) for t in exp.trials(cfg)], keep_others=True)
    return exp, cfg, results_frame(rows), meta


def df_to_markdown(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    if df is None or len(df) == 0:
        return "_(no rows)_"
    cols = [str(c) for c in df.columns]

    def fmt(v):
        if isinstance(v, float):
            return format(v, floatfmt) if pd.notna(v) else "–"
        return str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


SMOKE_NOTE = ("**Smoke scale: every verdict below is a pipeline check (the code ran end to end), not evidence "
              "for or against the paper's claim.**")


def verdict_text(c, scale: str | None) -> str:
    return f"{c.verdict} (pipeline check)" if scale == "smoke" else c.verdict


def render_section(exp: Experiment, meta: dict, analysis: Analysis, figures: list[str], n_rows: int,
                   fig_prefix: str = "figures", heading: str = "#", smoke_note: bool = True) -> str:
    cfg = meta.get("config", {})
    scale = meta.get("scale")
    out = [f"{heading} {exp.name}: {exp.figure}", ""]
    if scale == "smoke" and smoke_note:
        out += [SMOKE_NOTE, ""]
    out += [f"**Paper:** {exp.paper}  ", f"**Claim under test:** {exp.claim}  ",
            f"**Scale:** `{scale}` · **trials stored:** {n_rows}", ""]
    if exp.description:
        out += [exp.description, ""]
    out += ["| claim | verdict | evidence (measured) |", "|---|---|---|"]
    for c in analysis.claims:
        out.append(f"| **{c.id}** {c.statement} | {verdict_text(c, scale)} | {c.evidence} |")
    out.append("")
    for title, table in analysis.tables.items():
        out += [f"**{title}**", "", df_to_markdown(table), ""]
    for fig in figures:
        out += [f"![{fig}]({fig_prefix}/{fig}.png)", ""]
    if analysis.notes:
        out += ["Notes:", ""] + [f"- {n}" for n in analysis.notes] + [""]
    out += ["<details><summary>Resolved config</summary>", "", "```json",
            json.dumps(cfg, indent=1, sort_keys=True), "```", "</details>", ""]
    return "\n".join(out)


def _writable_outputs(run_dir: Path) -> Path:
    """The figures folder of a run folder, after checking that the report's outputs can be written there."""
    fig_dir = run_dir / "figures"
    if fig_dir.exists() and not fig_dir.is_dir():
        raise ConfigError(f"{fig_dir} is not a folder; move it away so the report can write its figures there")
    for p in (run_dir, fig_dir, run_dir / "report.md", run_dir / "summary.json"):
        if p.exists() and not os.access(p, os.W_OK):
            raise ConfigError(f"{p} is not writable (read-only); the report cannot be rebuilt there")
    return fig_dir


def diverged_note(df: pd.DataFrame) -> str | None:
    """A note on trials whose training diverged (non-finite loss or output): they count as failures."""
    if "diverged" not in df:
        return None
    n = int(df["diverged"].fillna(False).astype(bool).sum())
    return None if n == 0 else (f"{n} of {len(df)} trials diverged (a non-finite loss, output or weight during "
                                "training): each is stored as a failure, never as a success.")


def analyze_run(run_dir: str | os.PathLike) -> tuple[Experiment, dict, Analysis, list[str], int]:
    _setup_matplotlib()
    exp, cfg, df, meta = load_run(run_dir)
    if len(df) == 0:
        raise ConfigError(f"{run_dir}: the run has no stored trials yet; nothing to report")
    fig_dir = _writable_outputs(Path(run_dir))
    analysis = exp.analyze(cfg, df)
    note = diverged_note(df)
    if note:
        analysis.notes.insert(0, note)
    try:
        fig_dir.mkdir(exist_ok=True)
        figures = exp.plot(cfg, df, analysis, str(fig_dir))
        _write_text(Path(run_dir) / "summary.json", dumps(
            {"experiment": exp.name, "scale": meta.get("scale"), "numbers": analysis.numbers,
             "claims": [{"id": c.id, "statement": c.statement, "supported": c.supported, "evidence": c.evidence}
                        for c in analysis.claims]}, indent=2, default=float))
    except OSError as e:
        raise ConfigError(f"{run_dir}: cannot write the report ({e.strerror or e})") from None
    return exp, meta, analysis, figures, len(df)


def build_report(run_dir: str | os.PathLike) -> Path:
    """Rebuild ``report.md`` and the figures of one run folder from its stored results."""
    exp, meta, analysis, figures, n = analyze_run(run_dir)
    path = Path(run_dir) / "report.md"
    _write_text(path, render_section(exp, meta, analysis, figures, n) + f"\n_Rebuild with `vitheory report {run_dir}`._\n")
    return path


def _write_text(path: Path, text: str) -> None:
    """Write atomically: a reader (or a second process building the same report) never sees half a file."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise ConfigError(f"{path}: cannot write ({e.strerror or e})") from None


def build_combined_report(root: str | os.PathLike) -> Path:
    """One report for every run folder directly below ``root`` (the layout of ``vitheory reproduce``)."""
    root = Path(root)
    run_dirs = sorted([p for p in root.iterdir() if (p / "config.json").is_file()])
    if not run_dirs:
        raise ConfigError(f"{root}: no run folders (subfolders with config.json) to report on")
    from vitheory.experiments.base import ORDER
    rank = {n: i for i, n in enumerate(ORDER)}
    sections, summary = [], []
    loaded = []
    for d in run_dirs:
        try:
            loaded.append((d, *analyze_run(d)))
        except ConfigError as e:
            summary.append(f"| {d.name} | – | could not report: {e} |")
    loaded.sort(key=lambda t: rank.get(t[1].name, len(ORDER)))
    for d, exp, meta, analysis, figures, n in loaded:
        for c in analysis.claims:
            summary.append(f"| {exp.name} | {c.id}: {c.statement} | **{verdict_text(c, meta.get('scale'))}** |")
        sections.append(render_section(exp, meta, analysis, figures, n, fig_prefix=f"{d.name}/figures",
                                       heading="##", smoke_note=False))
    scales = sorted({m.get("scale", "?") for _, _, m, *_ in loaded})
    text = ["# vitheory report", "",
            "Each section states a paper's claim, the numbers measured in this run, and whether they support it. "
            "Verdicts use the stated rules; a claim the measurement does not support is reported as such.", "",
            *([SMOKE_NOTE, ""] if "smoke" in scales else []),
            f"Scale(s): {', '.join(scales)}. Rebuild with `vitheory report {root}`.", "",
            "## Summary", "", "| experiment | claim | verdict |", "|---|---|---|", *summary, "", *sections]
    path = root / "report.md"
    _write_text(path, "\n".join(text))
    return path


def rebuild(path: str | os.PathLike) -> Path:
    """`vitheory report DIR`: a single run folder, or a folder of run folders."""
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"{path}: no such folder")
    if (p / "config.json").is_file():
        return build_report(p)
    return build_combined_report(p)

"""Reports rebuilt from stored results only (config.json + results.sqlite of a run folder).

``build_report(run_dir)`` re-runs the experiment's ``analyze`` and ``plot`` on the stored rows and
writes ``report.md``, the self-contained ``report.html`` (:mod:`vitheory.report.html`) and ``figures/``;
``build_combined_report(root)`` does it for every run folder below a ``vitheory reproduce`` folder and writes
one ``report.md`` and ``report.html`` with a summary of every claim.  Both carry the provenance recorded in
each run folder's provenance.json (:mod:`vitheory.sweep.provenance`).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

from vitheory._version import __version__
from vitheory.config import ConfigError, build_config, config_to_dict
from vitheory.experiments.base import Analysis, Experiment, get_experiment, results_frame
from vitheory.report.cross import construct_vs_trained, construct_vs_trained_note
from vitheory.report.html import claims_html, esc, page, rows_html, section_html, seed_spread, table_html
from vitheory.sweep.provenance import read_provenance, summarize
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
    for p in (run_dir, fig_dir, run_dir / "report.md", run_dir / "report.html", run_dir / "summary.json"):
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
    exp, meta, analysis, figures, n, _, _ = _analyze(run_dir)
    return exp, meta, analysis, figures, n


def _analyze(run_dir: str | os.PathLike):
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
             "claims": [{"id": c.id, "statement": c.statement, "supported": c.supported, "evidence": c.evidence,
                         **({"paper": c.paper} if getattr(c, "paper", "") else {})}
                        for c in analysis.claims]}, indent=2, default=float))
    except OSError as e:
        raise ConfigError(f"{run_dir}: cannot write the report ({e.strerror or e})") from None
    return exp, meta, analysis, figures, len(df), cfg, df


def trial_param_names(exp: Experiment, cfg) -> list[str]:
    """The parameters that vary from trial to trial (the keys of the trial dicts), in first-seen order."""
    names: dict[str, None] = {}
    for t in exp.trials(cfg):
        names.update(dict.fromkeys(t))
    return list(names)


def metric_names(df: pd.DataFrame, cfg, trial_params: list[str]) -> list[str]:
    params = set(config_to_dict(cfg)) | set(trial_params)
    return [c for c in df.columns if c not in params]


def provenance_rows(run_dir: str | os.PathLike, meta: dict) -> list[tuple[str, str]]:
    """(label, value) rows saying what made the stored results (provenance.json; older folders: what config.json
    says)."""
    p = summarize(read_provenance(run_dir))
    if not p:
        return [("provenance", "not recorded (this run folder was made before vitheory recorded provenance.json)"),
                ("vitheory version", meta.get("vitheory_version", "unknown")), ("scale", meta.get("scale", "?")),
                ("report built with", f"vitheory {__version__}")]
    wall = p["wall_s"]
    wall_text = "unknown" if wall is None else f"{wall:.1f} s over {p['sessions']} session(s)"
    if p["unfinished_sessions"]:
        wall_text += f" ({p['unfinished_sessions']} session(s) interrupted; their time is not counted)"
    rows = [("vitheory version", p["vitheory_version"]), ("git commit", p["git_commit"]),
            ("torch / numpy", f"{p['torch']} / {p['numpy']}"), ("python", f"{p['python']} on {p['platform']}"),
            ("device", p["device"]), ("threads", p["threads"]), ("executor", p["executor"]),
            ("scale", meta.get("scale", "?")), ("wall time", wall_text),
            ("started / finished (UTC)", f"{_utc(p['started'])} / {_utc(p['finished'])}")]
    rows += [(f"command{'' if len(p['commands']) == 1 else f' {i + 1}'}", c) for i, c in enumerate(p["commands"])]
    if p["vitheory_version"] != __version__:
        rows.append(("report built with", f"vitheory {__version__}"))
    return rows


def _utc(t) -> str:
    if not isinstance(t, (int, float)):
        return "–"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def provenance_markdown(rows: list[tuple[str, str]], heading: str = "##") -> str:
    return "\n".join([f"{heading} Provenance", "", "| | |", "|---|---|",
                      *(f"| {k} | {str(v).replace('|', '/')} |" for k, v in rows), ""])


def _html_section(run_dir: Path, exp, meta, analysis, figures, n, cfg, df, level: int = 1) -> str:
    params = trial_param_names(exp, cfg)
    spread = seed_spread(df, params, metric_names(df, cfg, params)) if "seed" in params else pd.DataFrame()
    return section_html(exp, meta, analysis, figures, run_dir / "figures", n, spread,
                        provenance_rows(run_dir, meta), level=level)


def build_report(run_dir: str | os.PathLike) -> Path:
    """Rebuild ``report.md``, ``report.html`` and the figures of one run folder from its stored results."""
    exp, meta, analysis, figures, n, cfg, df = _analyze(run_dir)
    path = Path(run_dir) / "report.md"
    _write_text(path, render_section(exp, meta, analysis, figures, n) + f"\n_Rebuild with `vitheory report {run_dir}`._\n"
                + "\n" + provenance_markdown(provenance_rows(run_dir, meta)))
    body = _html_section(Path(run_dir), exp, meta, analysis, figures, n, cfg, df)
    _write_text(Path(run_dir) / "report.html", page(f"vitheory: {exp.name}", [
        body, f'<p class="meta">Built from the stored results only; rebuild with <code>vitheory report '
              f'{esc(run_dir)}</code>.</p>']))
    return path


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _write_text(path: Path, text: str) -> None:
    """Write atomically: a reader (or a second process building the same report) never sees half a file."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_UMASK)           # the permissions of a plain new file, not mkstemp's 0600
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
    failed_html = []
    for d in run_dirs:
        try:
            loaded.append((d, *_analyze(d)))
        except ConfigError as e:
            summary.append(f"| {d.name} | – | could not report: {e} |")
            failed_html.append(f"<tr><td>{esc(d.name)}</td><td>–</td><td>could not report: {esc(e)}</td></tr>")
    loaded.sort(key=lambda t: rank.get(t[1].name, len(ORDER)))
    html_sections, html_claims, walls, spans = [], [], [], []
    for d, exp, meta, analysis, figures, n, cfg, df in loaded:
        for c in analysis.claims:
            summary.append(f"| {exp.name} | {c.id}: {c.statement} | **{verdict_text(c, meta.get('scale'))}** |")
        sections.append(render_section(exp, meta, analysis, figures, n, fig_prefix=f"{d.name}/figures",
                                       heading="##", smoke_note=False))
        html_claims.append(claims_html(analysis.claims, with_experiment=exp.name))
        html_sections.append(_html_section(d, exp, meta, analysis, figures, n, cfg, df, level=2))
        spans.append(summarize(read_provenance(d)))          # read once: wall time, start/end, environment
        walls.append((exp.name, spans[-1].get("wall_s"), meta.get("scale", "?")))
    scales = sorted({m.get("scale", "?") for _, _, m, *_ in loaded})
    known = [w for _, w, _ in walls if w is not None]
    total = f"{sum(known):.1f} s" + ("" if len(known) == len(walls) else f" (known for {len(known)} of {len(walls)})")
    timing = [(f"{name} ({scale})", "not recorded" if w is None else f"{w:.1f} s") for name, w, scale in walls]
    timing.append(("all experiments", total))
    starts = [p.get("started") for p in spans if isinstance(p.get("started"), (int, float))]
    ends = [p.get("finished") for p in spans if isinstance(p.get("finished"), (int, float))]
    if starts and ends and len(starts) == len(ends) == len(spans):
        # with `reproduce --jobs N` experiments overlap: the elapsed span is less than the sum above
        timing.append(("elapsed, first start to last finish", f"{max(ends) - min(starts):.1f} s"))
    cross_md, cross_html = _cross_sections(loaded)
    env = spans[-1] if spans else {}
    env_rows = [("vitheory version", env.get("vitheory_version", __version__)), ("git commit", env.get("git_commit", "unknown")),
                ("torch / numpy", f"{env.get('torch', '?')} / {env.get('numpy', '?')}"), ("device", env.get("device", "?")),
                ("threads", env.get("threads", "?")), ("executor", env.get("executor", "?")),
                ("command", (env.get("commands") or ["not recorded"])[-1])]
    text = ["# vitheory report", "",
            "Each section states a paper's claim, the numbers measured in this run, and whether they support it. "
            "Verdicts use the stated rules; a claim the measurement does not support is reported as such.", "",
            *([SMOKE_NOTE, ""] if "smoke" in scales else []),
            f"Scale(s): {', '.join(scales)}. Rebuild with `vitheory report {root}`.", "",
            "## Summary", "", "| experiment | claim | verdict |", "|---|---|---|", *summary, "",
            provenance_markdown(env_rows + [(f"wall time: {k}", v) for k, v in timing]), *cross_md, *sections]
    path = root / "report.md"
    _write_text(path, "\n".join(text))
    intro = (f"<h1>vitheory report</h1><p>Each section states a paper's claim, the numbers measured in this run, "
             f"and whether they support it. Verdicts use the stated rules; a claim the measurement does not "
             f"support is reported as such. Scale(s): {esc(', '.join(scales))}. Rebuild with "
             f"<code>vitheory report {esc(root)}</code>.</p>")
    toc = "<p>" + " · ".join(f'<a href="#{esc(e.name)}">{esc(e.name)}</a>' for _, e, *_ in loaded) + "</p>"
    _write_text(root / "report.html", page("vitheory report", [
        intro, toc, "<h2>Summary</h2>", *html_claims,
        ("<table><tbody>" + "".join(failed_html) + "</tbody></table>") if failed_html else "",
        "<h2>Provenance</h2>", rows_html(env_rows), "<p><strong>Wall time per experiment</strong></p>",
        rows_html(timing), *cross_html, *html_sections]))
    return path


def _cross_sections(loaded) -> tuple[list[str], list[str]]:
    """Markdown and HTML of the cross-experiment comparisons whose inputs this report holds."""
    by_name = {exp.name: (cfg, analysis) for _, exp, _, analysis, _, _, cfg, _ in loaded}
    if "memorization-heads" not in by_name or "memorization-construct" not in by_name:
        return [], []
    (h_cfg, h_an), (c_cfg, c_an) = by_name["memorization-heads"], by_name["memorization-construct"]
    tab = construct_vs_trained(h_cfg, h_an.numbers, c_an.numbers)
    if tab is None:
        return [], []
    title = "C13 against training: certified T of the construction and trained capacity at the same (H, n, d_h)"
    note = construct_vs_trained_note(h_cfg, c_cfg.d)
    return ([f"## {title}", "", df_to_markdown(tab), "", note, ""],
            [f"<h2>{esc(title)}</h2>", table_html(tab), f"<p>{esc(note)}</p>"])


def rebuild(path: str | os.PathLike) -> Path:
    """`vitheory report DIR`: a single run folder, or a folder of run folders."""
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"{path}: no such folder")
    if (p / "config.json").is_file():
        return build_report(p)
    return build_combined_report(p)

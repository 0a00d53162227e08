"""report.html: one self-contained file a researcher can send to a colleague.

Everything is inside the file: figures as base64 PNG (``data:`` URIs), the style sheet inline, no script, no
link to anything outside it.  It holds what report.md holds -- the claims with verdict badges (and the paper's
value beside ours where the experiment states it), the experiment's tables, its figures, notes, the resolved
config -- plus, per grid cell, the spread of every metric over seeds (mean, standard deviation, 95 %
t-interval of the mean, number of seeds), and the provenance of the stored results.
"""
from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1b1f24;line-height:1.45}
h1{border-bottom:2px solid #d0d7de;padding-bottom:.3em}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.88em;display:block;overflow-x:auto}
th,td{border:1px solid #d0d7de;padding:.25em .55em;text-align:left;vertical-align:top}th{background:#f6f8fa}
tr:nth-child(even) td{background:#fbfcfd}td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:.1em .55em;border-radius:1em;font-size:.85em;font-weight:600;white-space:nowrap}
.supported{background:#dafbe1;color:#116329;border:1px solid #4ac26b}
.not-supported{background:#ffebe9;color:#a40e26;border:1px solid #ff8182}
.inconclusive{background:#fff8c5;color:#7d4e00;border:1px solid #d4a72c}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #d0d7de}figcaption{font-size:.85em;color:#57606a}
details{margin:.5em 0 1em}summary{cursor:pointer;color:#0969da}pre{background:#f6f8fa;padding:.8em;overflow-x:auto;
font-size:.82em}.meta{color:#57606a}.prov td:first-child{font-weight:600;white-space:nowrap}
"""


def esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def badge(supported: bool | None) -> str:
    cls, text = {True: ("supported", "supported"), False: ("not-supported", "NOT supported"),
                 None: ("inconclusive", "inconclusive")}[supported]
    return f'<span class="badge {cls}">{text}</span>'


def _cell(v: Any, floatfmt: str = ".4g") -> str:
    if isinstance(v, float):
        return f'<td class="num">{format(v, floatfmt) if math.isfinite(v) else "–"}</td>'
    if v is None:
        return "<td>–</td>"
    if isinstance(v, (int,)) and not isinstance(v, bool):
        return f'<td class="num">{v}</td>'
    return f"<td>{esc(v)}</td>"


def table_html(df: pd.DataFrame) -> str:
    if df is None or len(df) == 0:
        return "<p><em>(no rows)</em></p>"
    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def rows_html(rows: Iterable[tuple[str, Any]], cls: str = "prov") -> str:
    return f'<table class="{cls}">' + "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in rows) \
        + "</table>"


def figure_html(fig_dir: Path, name: str) -> str:
    png = fig_dir / f"{name}.png"
    if not png.is_file():
        return f"<p><em>figure {esc(name)}: no PNG was written</em></p>"
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{esc(name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(name)}</figcaption></figure>")


def claims_html(claims: Sequence, with_experiment: str | None = None) -> str:
    paper = any(getattr(c, "paper", "") for c in claims)
    head = ("<th>experiment</th>" if with_experiment is not None else "") + "<th>claim</th><th>verdict</th>" + \
        ("<th>the paper</th>" if paper else "") + "<th>evidence (measured here)</th>"
    out = [f"<table><thead><tr>{head}</tr></thead><tbody>"]
    for c in claims:
        out.append("<tr>" + (f"<td>{esc(with_experiment)}</td>" if with_experiment is not None else "")
                   + f"<td><strong>{esc(c.id)}</strong> {esc(c.statement)}</td><td>{badge(c.supported)}</td>"
                   + (f"<td>{esc(getattr(c, 'paper', '') or '–')}</td>" if paper else "")
                   + f"<td>{esc(c.evidence)}</td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def seed_spread(df: pd.DataFrame, trial_params: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Per grid cell (the trial parameters other than the seed): mean, std, 95 % t-interval of the mean and
    the number of seeds of every numeric metric that is not constant."""
    from scipy import stats
    cells = [p for p in trial_params if p != "seed" and p in df]
    nums = [m for m in metrics if m in df and pd.api.types.is_numeric_dtype(df[m])
            and df[m].astype(float).nunique(dropna=True) > 1]
    if not nums:
        return pd.DataFrame()
    keyed = df.copy()
    for c in cells:
        keyed[c] = keyed[c].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
    groups = keyed.groupby(cells, sort=False, dropna=False) if cells else [((), keyed)]
    rows = []
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(cells, key))
        row["seeds"] = len(g)
        for m in nums:
            x = g[m].astype(float).dropna().to_numpy()
            mean = float(x.mean()) if len(x) else float("nan")
            sd = float(x.std(ddof=1)) if len(x) > 1 else float("nan")
            half = float(stats.t.ppf(0.975, len(x) - 1) * sd / math.sqrt(len(x))) if len(x) > 1 else float("nan")
            row[f"{m} mean"] = mean
            row[f"{m} std"] = sd
            row[f"{m} 95% CI"] = "–" if not math.isfinite(half) else f"[{mean - half:.4g}, {mean + half:.4g}]"
        rows.append(row)
    return pd.DataFrame(rows)


def page(title: str, body: Iterable[str]) -> str:
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body>" + "\n".join(body) + "</body></html>\n")


def section_html(exp, meta: dict, analysis, figures: list[str], fig_dir: Path, n_rows: int, spread: pd.DataFrame,
                 provenance: list[tuple[str, Any]], level: int = 1) -> str:
    h, h2 = f"h{level}", f"h{level + 1}"
    out = [f"<{h} id=\"{esc(exp.name)}\">{esc(exp.name)}: {esc(exp.figure)}</{h}>",
           f"<p><strong>Paper:</strong> {esc(exp.paper)}<br><strong>Claim under test:</strong> {esc(exp.claim)}<br>"
           f"<strong>Scale:</strong> <code>{esc(meta.get('scale'))}</code> · <strong>trials stored:</strong> "
           f"{n_rows}</p>"]
    if exp.description:
        out.append(f"<p>{esc(exp.description)}</p>")
    out += [f"<{h2}>Claims</{h2}>", claims_html(analysis.claims)]
    for title, tab in analysis.tables.items():
        out += [f"<p><strong>{esc(title)}</strong></p>", table_html(tab)]
    if figures:
        out.append(f"<{h2}>Figures</{h2}>")
        out += [figure_html(fig_dir, f) for f in figures]
    if analysis.notes:
        out += [f"<{h2}>Notes</{h2}>", "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in analysis.notes) + "</ul>"]
    if len(spread):
        out += [f"<{h2}>Spread over seeds, per grid cell</{h2}>",
                "<p class=\"meta\">Mean, standard deviation and 95 % t-interval of the mean over the seeds of each "
                "cell, for every metric that varies; computed from the stored trials.</p>",
                f"<details{' open' if len(spread) <= 40 else ''}><summary>{len(spread)} cell(s)</summary>"
                + table_html(spread) + "</details>"]
    out += [f"<{h2}>Provenance</{h2}>", rows_html(provenance),
            "<details><summary>Resolved config</summary><pre>"
            + esc(json.dumps(meta.get("config", {}), indent=1, sort_keys=True)) + "</pre></details>"]
    return "\n".join(out)

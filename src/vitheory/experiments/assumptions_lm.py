"""The language-model rows of the assumption checks of Mahdavi, Liao & Thrampoulidis (ICLR 2024), claim C6
(optional; from the paper's GPT-2 / BERT notebook, ../shared/papers/mha_memorization.md 3.5).

Rows: for GPT-2 and BERT, randomly initialised (transformers configurations, offline) and, when a local folder is
given, trained weights; each at ``embedded`` (``hidden_states[0]``) and ``encoded`` (``hidden_states[1]``).
Query vector: GPT-2 the last position, BERT position 0 ([CLS]).  Columns as in ``assumptions-table``: General
Position (every ``min(T, d)`` query vectors independent), Assumption 1 (every ``n`` query vectors independent,
``n`` = tokens per sequence), Assumption 2 (every ``n x d`` token matrix has rank ``n``), in the project's
float64 convention and the notebook's float32 one, next to the notebook's numbers; plus the sampled Kruskal-rank
curve of encoded BERT [CLS] vectors.

Text: the documentation topics of ``pydoc_data`` (offline; the notebook: Wikipedia), see
:mod:`vitheory.data.text`.  Sizes are a project choice: the notebook used gpt2-large (d = 1280, n = 1024) and
bert-large (d = 1024, n = 512) on T = 2000 sequences; the default here is GPT-2 small / BERT-base dimensions
(d = 768) with n = 128 tokens and T = 400 sequences (``size=large`` and the paper scale restore the notebook's).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from vitheory.config import ConfigError, check_all_in_range, check_choice, check_range, knob
from vitheory.experiments._assumptions_rows import MARK, _agg, _fmt_frac, _rng, _verdict
from vitheory.experiments.assumptions_table import PAPER, _checks_for
from vitheory.experiments.base import Analysis, Claim, Experiment

LAYERS = ("embedded", "encoded")
#: the notebook's numbers (../shared/papers/mha_memorization.md 3.5; gpt2-large n = 1024, bert-large n = 512, T = 2000)
PAPER_LM = {("gpt2", "embedded"): {"a1": "0.0", "a2": "≈ all", "kr": ""},
            ("gpt2", "encoded"): {"a1": "1.0", "a2": "≈ all (trained: ≈ 1900/2000)", "kr": ""},
            ("bert", "embedded"): {"a1": "0.0", "a2": "≈ all", "kr": ""},
            ("bert", "encoded"): {"a1": "0.0", "a2": "≈ all", "kr": "≈ 341 random, ≈ 291 trained (n = 512)"}}


@dataclass(frozen=True)
class Config:
    models: tuple[str, ...] = knob(("gpt2", "bert"), "language models: gpt2, bert")
    size: Literal["tiny", "base", "large"] = knob("base", "random-model size: base (d = 768), large (the notebook's "
                                                  "gpt2-large / bert-large), tiny (d = 64, smoke)", project_choice=True)
    gpt2_trained: str = knob("", "local transformers GPT-2 folder (weights + tokenizer) for the trained rows; "
                             "empty: random rows only")
    bert_trained: str = knob("", "local transformers BERT folder (weights + tokenizer) for the trained rows; "
                             "empty: random rows only")
    gpt2_tokens: int = knob(128, "tokens per GPT-2 sequence n (the notebook: 1024)", project_choice=True)
    bert_tokens: int = knob(128, "tokens per BERT sequence n (the notebook: 512)", project_choice=True)
    n_sequences: int = knob(400, "sequences T per model (the notebook: 2000)", project_choice=True)
    text_seed: int = knob(0, "seed of the sequences (the same for every trial)")
    n_subsets: int = knob(2000, "random subsets per Assumption-1 check (the notebook: 5000)")
    paper_subsets: int = knob(500, "random subsets per Assumption-1 check in the float32 convention")
    gp_subsets: int = knob(100, "random subsets per General Position check, both conventions", project_choice=True)
    rank_subsets: int = knob(25, "subsets whose rank is computed for the rank ranges", project_choice=True)
    curve_subsets: int = knob(200, "random orderings for the Kruskal-rank curve of encoded BERT [CLS]",
                              project_choice=True)
    curve_step: int = knob(10, "k grid step of the Kruskal-rank curve (the notebook: 10)")
    tol: float = knob(1e-5, "tolerance on the smallest singular value of unit vectors", project_choice=True)
    tol_sweep: tuple[float, ...] = knob((), "further tolerances for Assumption 1", project_choice=True)
    paper_mode: bool = knob(True, "also compute the notebook's float32 default-tolerance verdicts")
    margins: bool = knob(True, "smallest singular values of every Assumption-1 subset and context")
    pass_fraction: float = knob(0.99, "a sampled check holds when its fraction is >= this", project_choice=True)
    context_fraction: float = knob(0.95, "C6: Assumption 2 holds for at least this fraction of sequences "
                                   "(the spec's 95 %)")
    seeds: int = knob(1, "random-weight seeds")
    batch_size: int = knob(16, "sequences per forward pass")
    query_index: int = knob(0, "unused (GPT-2 queries the last token, BERT token 0); kept for the shared checks")

    def validate(self) -> None:
        if not self.models:
            raise ConfigError("models is empty; choose from gpt2, bert")
        for m in self.models:
            check_choice("models", m, ("gpt2", "bert"))
        check_choice("size", self.size, ("tiny", "base", "large"))
        for name in ("gpt2_trained", "bert_trained"):
            p = getattr(self, name)
            if p and not os.path.isdir(p):
                raise ConfigError(f"{name}={p!r} is not a folder; give a local transformers model folder or leave it empty")
        check_range("gpt2_tokens", self.gpt2_tokens, 8, 4096)
        check_range("bert_tokens", self.bert_tokens, 8, 4096)
        check_range("n_sequences", self.n_sequences, 2, 1_000_000)
        check_range("text_seed", self.text_seed, 0, None)
        for name in ("n_subsets", "paper_subsets", "gp_subsets", "rank_subsets", "curve_subsets"):
            check_range(name, getattr(self, name), 1, 10_000_000)
        check_range("curve_step", self.curve_step, 1, 100_000)
        check_range("tol", self.tol, 0.0, 1.0, lo_open=True, hi_open=True)
        check_all_in_range("tol_sweep", self.tol_sweep, 0.0, 1.0, lo_open=True, hi_open=True, nonempty=False)
        check_range("pass_fraction", self.pass_fraction, 0.0, 1.0, lo_open=True)
        check_range("context_fraction", self.context_fraction, 0.0, 1.0, lo_open=True)
        check_range("seeds", self.seeds, 1, 10_000)
        check_range("batch_size", self.batch_size, 1, 100_000)


def _weights_of(cfg: Config, model: str) -> list[str]:
    return ["random"] + (["trained"] if getattr(cfg, f"{model}_trained") else [])


def trials(cfg: Config) -> list[dict]:
    return [{"model": m, "weights": w, "layer": layer, "seed": s} for s in range(cfg.seeds) for m in cfg.models
            for w in _weights_of(cfg, m) for layer in LAYERS]


@functools.lru_cache(maxsize=2)
def _trained(kind: str, path: str):
    from vitheory.models.lm_features import load_lm
    return load_lm(kind, path)


def _n_tokens(cfg: Config, kind: str) -> int:
    return cfg.gpt2_tokens if kind == "gpt2" else cfg.bert_tokens


@functools.lru_cache(maxsize=4)
def _sequences(kind: str, weights: str, path: str, T: int, n: int, seed: int):
    from vitheory.data import text as tx
    from vitheory.models import lm_features as lf
    if weights == "trained":
        tok = _trained(kind, path)[1]

        def encode(s):
            return tok(s, add_special_tokens=False, verbose=False)["input_ids"]
        cls, sep = (tok.cls_token_id, tok.sep_token_id) if kind == "bert" else (None, None)
    else:
        encode = tx.byte_encoder(lf.BYTE_OFFSET[kind])
        cls, sep = lf.BERT_CLS, lf.BERT_SEP
    if kind == "gpt2":
        return tx.gpt2_sequences(T, n, seed, encode)
    if cls is None or sep is None:
        raise ConfigError(f"bert_trained={path}: the tokenizer has no [CLS] / [SEP] token")
    return tx.bert_sequences(T, n, seed, encode, cls, sep)


def check_inputs(cfg: Config) -> None:
    """Trained folders load (weights and tokenizer), sequences fit the models' positions, sequences can be drawn."""
    from vitheory.models import lm_features as lf
    for kind in cfg.models:
        n = _n_tokens(cfg, kind)
        for w in _weights_of(cfg, kind):
            path = getattr(cfg, f"{kind}_trained") if w == "trained" else ""
            if w == "trained":
                model = _trained(kind, path)[0]
                n_max = lf.max_positions(model, kind)
            else:
                a = lf.SIZES[kind][cfg.size]
                n_max = a["n_positions"] if kind == "gpt2" else a["max_position_embeddings"]
            if n > n_max:
                raise ConfigError(f"{kind}_tokens={n} is out of range; allowed range: [8, {n_max}] (the {w} "
                                  f"{kind} has {n_max} positions)")
            _sequences(kind, w, path, cfg.n_sequences, n, cfg.text_seed)


def run_trials(cfg: Config, batch: list[dict], device: str) -> list[dict]:
    from vitheory.data.text import distinct_documents
    from vitheory.models import lm_features as lf
    out: dict[tuple, dict] = {}
    for key in dict.fromkeys((t["model"], t["weights"], t["seed"]) for t in batch):
        kind, w, seed = key
        path = getattr(cfg, f"{kind}_trained") if w == "trained" else ""
        if w == "trained":
            model, _, desc = _trained(kind, path)
        else:
            model = lf.random_lm(kind, seed, cfg.size)
            desc = f"random {kind} ({cfg.size}: d {model.config.hidden_size}), seed {seed}, byte-level ids"
        seqs = _sequences(kind, w, path, cfg.n_sequences, _n_tokens(cfg, kind), cfg.text_seed)
        parts = list(lf.representations(model, kind, seqs.ids, seqs.token_type, cfg.batch_size, device))
        for layer in [t["layer"] for t in batch if (t["model"], t["weights"], t["seed"]) == key]:
            m = _checks_for((p[layer] for p in parts), cfg, seed, device,
                            curve=(kind == "bert" and layer == "encoded"), query_index=0 if kind == "bert" else -1)
            m.update({"model_desc": desc, "n_sources": distinct_documents(seqs.names), "text": seqs.source})
            out[key + (layer,)] = m
        del parts
    return [dict(out[(t["model"], t["weights"], t["seed"], t["layer"])]) for t in batch]


# --------------------------------------------------------------------------------------------------
# analysis
# --------------------------------------------------------------------------------------------------
def _rows(cfg: Config, df: pd.DataFrame) -> dict:
    per = {}
    for (kind, w, layer), sub in df.groupby(["model", "weights", "layer"], sort=False):
        g, a1, a2, pa1 = _agg(sub, "gp"), _agg(sub, "a1"), _agg(sub, "a2"), _agg(sub, "p_a1")
        pg = _agg(sub, "p_gp")
        a2["ranks"] = _rng(sub["a2_rank_min"].min(), sub["a2_rank_max"].max())
        est = sub["curve_estimate"].dropna() if "curve_estimate" in sub else pd.Series(dtype=float)
        per[(kind, w, layer)] = {"gp": g, "p_gp": pg, "a1": a1, "p_a1": pa1, "a2": a2,
                                 "p_a2": _agg(sub, "p_a2"), "T": int(sub["T"].iloc[0]),
                                 "n": int(sub["n_tokens"].iloc[0]), "d": int(sub["dim"].iloc[0]),
                                 "sources": int(sub["n_sources"].iloc[0]), "desc": sub["model_desc"].iloc[0],
                                 "kr": [int(v) for v in est] if len(est) else None}
    return per


def analyze(cfg: Config, df: pd.DataFrame) -> Analysis:
    a = Analysis()
    per = _rows(cfg, df)
    pf = cfg.pass_fraction
    rows = []
    for (kind, w, layer), r in per.items():
        ref = PAPER_LM[(kind, layer)]
        cell = lambda x, kind_: f"{MARK[_verdict(x, kind_, pf)]} {_fmt_frac(x)} (ranks {x.get('ranks', '–')})" if x else "–"
        rows.append({"model": kind, "weights": w, "layer": layer, "sources (documents)": r["sources"], "T": r["T"],
                     "n": r["n"], "d": r["d"], "GP k": r["gp"].get("k"),
                     "GP float64": cell(r["gp"], "gp"), "GP float32": cell(r["p_gp"], "gp"), "GP paper": "0.0",
                     "A1 float64": cell(r["a1"], "a1"), "A1 float32": cell(r["p_a1"], "a1"), "A1 paper": ref["a1"],
                     "A2 float64": f"{MARK[_verdict(r['a2'], 'a2', 0)]} {round(r['a2']['fmin'] * r['T'])}/{r['T']}",
                     "A2 float32": (f"{round(r['p_a2']['fmin'] * r['T'])}/{r['T']}" if r["p_a2"] else "–"),
                     "A2 paper": ref["a2"], "Kruskal estimate": (min(r["kr"]) if r["kr"] else "–"),
                     "Kruskal paper": ref["kr"] or "–"})
    a.tables[f"Language-model assumption table: float64 (unit vectors, tol = {cfg.tol:g}) | float32 (the notebook's "
             "convention) | the notebook's numbers; sources = distinct documents; ✓ = holds"] = pd.DataFrame(rows)
    a.claims += claims(cfg, per)
    a.notes += [f"Text: {df['text'].iloc[0]}; the notebook used Wikipedia 20220301.en (2000 sequences per model).",
                f"Sizes (project choice): {cfg.size} random models, n = {cfg.gpt2_tokens} (GPT-2) / {cfg.bert_tokens} "
                f"(BERT) tokens, T = {cfg.n_sequences}; the notebook: gpt2-large n = 1024, bert-large n = 512, "
                "T = 2000. The notebook's numbers are quoted for those sizes and are not one-to-one comparable.",
                "Random rows read byte-level token ids (UTF-8 bytes; project choice); trained rows use their own "
                "tokenizer. General Position is tested at k = min(T, d)."]
    a.numbers["rows"] = {f"{k[0]}/{k[1]}/{k[2]}": {"a1": v["a1"].get("fraction"), "a2": v["a2"].get("fraction"),
                                                   "gp": v["gp"].get("fraction"), "kruskal": v["kr"]}
                         for k, v in per.items()}
    return a


def claims(cfg: Config, per: dict) -> list[Claim]:
    pf = cfg.pass_fraction

    def rows_of(kind, layer=None):
        return {k: v for k, v in per.items() if k[0] == kind and (layer is None or k[2] == layer)}

    def judge(cid, stmt, rows, ok, fmt, rule):
        if not rows:
            return Claim(cid, stmt, None, "not measured")
        good = {k: ok(v) for k, v in rows.items()}
        ev = "; ".join(f"{k[0]} {k[1]} {k[2]}: {fmt(v)}" for k, v in rows.items()) + f". Rule: {rule}"
        return Claim(cid, stmt, all(good.values()), ev)
    out = [
        judge("C6-gpt2-A1", "GPT-2 layer-1 last-token vectors satisfy Assumption 1 (k = n)",
              rows_of("gpt2", "encoded"), lambda v: v["a1"]["fmin"] >= pf,
              lambda v: f"{_fmt_frac(v['a1'])} at k = n = {v['n']} (float32 {_fmt_frac(v['p_a1'])})",
              f"fraction >= {pf} in every GPT-2 encoded row (notebook: 1.0 at n = 1024)."),
        judge("C6-bert-A1", "BERT [CLS] vectors fail Assumption 1 (fraction 0 at k = n)",
              rows_of("bert"), lambda v: v["a1"]["fmax"] <= 0.01,
              lambda v: f"{_fmt_frac(v['a1'])} at k = n = {v['n']} (float32 {_fmt_frac(v['p_a1'])})",
              "fraction <= 0.01 in every BERT row (notebook: 0.0 at n = 512)."),
        judge("C6-bert-kruskal", "The estimated Kruskal rank of encoded BERT [CLS] vectors is below n",
              {k: v for k, v in rows_of("bert", "encoded").items() if v["kr"]},
              lambda v: min(v["kr"]) < v["n"], lambda v: f"estimate {min(v['kr'])} vs n = {v['n']}",
              f"largest k with fraction >= {pf} below n (notebook: ≈ 341 random, ≈ 291 trained at n = 512)."),
        judge("C6-contexts", f"Context matrices have full rank n for >= {cfg.context_fraction:.0%} of sequences",
              per, lambda v: v["a2"]["fmin"] >= cfg.context_fraction,
              lambda v: f"{round(v['a2']['fmin'] * v['T'])}/{v['T']}",
              f"fraction >= {cfg.context_fraction} in every row (notebook: ≈ all; trained GPT-2 encoded ≈ 95 %)."),
    ]
    return out


def plot(cfg: Config, df: pd.DataFrame, analysis: Analysis, fig_dir: str) -> list[str]:
    import matplotlib.pyplot as plt
    from vitheory.analysis.figures import save_figure
    cur = df[df["curve_ks"].notna()] if "curve_ks" in df else df.iloc[0:0]
    if not len(cur):
        return []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (kind, w), sub in cur.groupby(["model", "weights"], sort=False):
        fr = np.mean(np.array([list(v) for v in sub["curve_fractions"]]), axis=0)
        ax.plot(sub["curve_ks"].iloc[0], fr, "o-", ms=3, label=f"{kind} {w} encoded [CLS]")
    n = int(cur["n_tokens"].iloc[0])
    ax.axvline(n, color="green", ls="--", lw=1, label=f"n = {n}")
    ax.set_xlabel("Kruskal rank candidate k")
    ax.set_ylabel("fraction of random k-subsets with full rank")
    ax.set_title("BERT [CLS] after block 1: sampled Kruskal-rank curve")
    ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=8)
    return [save_figure(fig, fig_dir, "assumptions_lm_kruskal_curve")]


EXPERIMENT = Experiment(
    name="assumptions-lm",
    paper=PAPER,
    figure="Assumption checks on GPT-2 / BERT representations (the paper's language-model notebook; optional C6)",
    claim="GPT-2 layer-1 last tokens satisfy Assumption 1; BERT [CLS] vectors do not; contexts have full rank",
    config=Config,
    trials=trials,
    run_trials=run_trials,
    analyze=analyze,
    plot=plot,
    scales={
        "smoke": {"size": "tiny", "gpt2_tokens": 16, "bert_tokens": 16, "n_sequences": 40, "n_subsets": 100,
                  "paper_subsets": 50, "gp_subsets": 20, "rank_subsets": 10, "curve_subsets": 50, "curve_step": 2},
        "default": {},
        "paper": {"size": "large", "gpt2_tokens": 1024, "bert_tokens": 512, "n_sequences": 2000, "n_subsets": 5000,
                  "paper_subsets": 5000, "gp_subsets": 5000, "rank_subsets": 5000, "curve_subsets": 5000},
    },
    group_key=lambda trial: (trial["model"], trial["weights"], trial["seed"]),
    check_inputs=check_inputs,
    description=("Rows: GPT-2 and BERT (random; trained from a local folder when given) at hidden_states[0] and [1]. "
                 "Query: GPT-2 last token, BERT [CLS]. Columns: GP (k = min(T, d)), Assumption 1 (k = n), "
                 "Assumption 2, both numerical conventions, and the Kruskal-rank curve of encoded BERT [CLS]."),
)

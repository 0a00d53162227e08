"""The experiment interface every paper figure/table implements.

An experiment is a *sweep of trials*: ``trials(cfg)`` lists them (a dict of parameters including
``seed``), ``run_trials(cfg, trials, device)`` computes their metrics (many trials at once, as one
batched tensor program), the framework stores one SQLite row per trial (:mod:`vitheory.sweep`), and
``analyze`` + ``plot`` turn the stored rows -- and nothing else -- into claims, tables and figures
(:mod:`vitheory.report`).  So a report can always be rebuilt from a run folder, and a killed sweep can
resume.

To add an experiment, write a module in ``vitheory/experiments/`` that defines a module-level
``EXPERIMENT = Experiment(...)``; it is discovered automatically.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Mapping, Sequence

import pandas as pd

SCALES = ("smoke", "default", "paper")


@dataclass
class Claim:
    """One claim of a paper, checked against measured numbers.

    ``supported`` is True/False, or None when the measurement cannot decide (e.g. too few points).
    ``evidence`` states the measured numbers that decide it, and the rule used.
    ``paper`` (optional) states the paper's own value or result for the same quantity (e.g. "N_min ∝ alpha_*^-2
    (Fig. 2)"); the reports show it beside ours.
    """
    id: str
    statement: str
    supported: bool | None
    evidence: str
    paper: str = ""

    @property
    def verdict(self) -> str:
        return {True: "supported", False: "NOT supported", None: "inconclusive"}[self.supported]


@dataclass
class Analysis:
    """What ``analyze`` returns: claims, markdown tables, free-text notes and headline numbers."""
    claims: list[Claim] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    """A registered experiment.

    name      : CLI name, e.g. ``sample-complexity``
    paper     : short citation, e.g. ``Li et al. ICLR 2023``
    figure    : which figure/table/claim of the paper it reproduces
    claim     : one-line claim under test
    config    : frozen dataclass type; defaults are the *default* scale
    scales    : overrides for ``smoke`` / ``paper`` (``default`` is usually ``{}``)
    trials    : cfg -> list of trial dicts (JSON-serialisable, must include ``seed``)
    run_trials: (cfg, trials, device) -> list of metric dicts, same order
    analyze   : (cfg, df) -> Analysis, where df has one row per stored trial (params + metrics columns)
    plot      : (cfg, df, analysis, fig_dir) -> list of figure base names written as PNG and PDF
    group_key : trial -> hashable; trials with equal keys may be batched in one run_trials call
    max_batch : (cfg) -> the largest number of trials passed to one run_trials call
    check_inputs: (cfg) -> None; the checks that need files or data (folders, weights, token counts of a
                model), raising ConfigError; the runner calls it before the run folder is created
    """
    name: str
    paper: str
    figure: str
    claim: str
    config: type
    trials: Callable[[Any], list[dict]]
    run_trials: Callable[[Any, list[dict], str], list[dict]]
    analyze: Callable[[Any, pd.DataFrame], Analysis]
    plot: Callable[[Any, pd.DataFrame, Analysis, str], list[str]]
    scales: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    group_key: Callable[[dict], Hashable] = lambda trial: ()
    max_batch: Callable[[Any], int] = lambda cfg: 10_000
    check_inputs: Callable[[Any], None] = lambda cfg: None
    description: str = ""

    def scale_overrides(self, scale: str) -> Mapping[str, Any]:
        if scale not in SCALES:
            from vitheory.config import ConfigError
            raise ConfigError(f"--scale={scale!r} is not allowed; choose one of {', '.join(SCALES)}")
        return self.scales.get(scale, {})


# --------------------------------------------------------------------------------------------------
# registry: every module of this package that defines EXPERIMENT
# --------------------------------------------------------------------------------------------------
_REGISTRY: dict[str, Experiment] | None = None

# the order in `vitheory list` and in the combined report: paper 1 first, then paper 2
ORDER = ("sample-complexity", "cnn-sample-complexity", "noise-and-init", "data-condition", "width",
         "attention-concentration", "iterations", "sparsification", "spurious-tokens", "sparsification-images", "depth",
         "assumptions-table", "assumptions-lm", "memorization-heads", "memorization-context", "memorization-head-dim",
         "saturation", "memorization-construct")


def registry() -> dict[str, Experiment]:
    global _REGISTRY
    if _REGISTRY is None:
        import vitheory.experiments as pkg
        found: dict[str, Experiment] = {}
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name.startswith("_") or info.name == "base":
                continue
            mod = importlib.import_module(f"vitheory.experiments.{info.name}")
            exp = getattr(mod, "EXPERIMENT", None)
            if isinstance(exp, Experiment):
                if exp.name in found:
                    raise RuntimeError(f"two experiments named {exp.name!r}")
                found[exp.name] = exp
        rank = {n: i for i, n in enumerate(ORDER)}
        _REGISTRY = dict(sorted(found.items(), key=lambda kv: (rank.get(kv[0], len(ORDER)), kv[0])))
    return _REGISTRY


def get_experiment(name: str) -> Experiment:
    reg = registry()
    if name not in reg:
        from vitheory.config import ConfigError
        raise ConfigError(f"unknown experiment {name!r}; choose one of {', '.join(reg)}")
    return reg[name]


def resolve_config(exp: Experiment, scale: str = "default", overrides: Mapping[str, Any] | None = None,
                   seeds: int | None = None):
    """Defaults -> scale preset -> user overrides (-> ``seeds``), validated.  Raises ConfigError."""
    from vitheory.config import build_config, check_range
    layers: list[Mapping[str, Any]] = [exp.scale_overrides(scale), dict(overrides or {})]
    if seeds is not None:
        check_range("--seeds", seeds, 1, 10_000)
        if "seeds" not in {f.name for f in dataclasses.fields(exp.config)}:
            from vitheory.config import ConfigError
            raise ConfigError(f"--seeds is not a parameter of {exp.name}")
        layers.append({"seeds": seeds})
    return build_config(exp.config, *layers)


def results_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per trial: its parameters and its metrics as columns (metrics win on a name clash)."""
    return pd.DataFrame([{**r["params"], **r["metrics"]} for r in rows])

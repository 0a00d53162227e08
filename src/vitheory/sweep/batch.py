"""One batch of trials on this process's device: the unit every executor runs (:mod:`vitheory.sweep.executors`).

Also the ``--device`` checks, and out-of-memory as a one-line error that says how to resume.
"""
from __future__ import annotations

import re

from vitheory.config import ConfigError
from vitheory.experiments.base import Experiment
from vitheory.progress import set_reporter


def check_device_name(device: str) -> None:
    """The form of ``--device`` (auto, cpu, cuda, cuda:N), checked without asking torch what is there."""
    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d{1,3})?", device):
        raise ConfigError(f"--device={device!r} is not allowed; choose one of auto, cpu, cuda, cuda:N")


def resolve_device(device: str) -> str:
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device={device!r}: torch sees no CUDA device here; use --device cpu")
        return device
    raise ConfigError(f"--device={device!r} is not allowed; choose one of auto, cpu, cuda, cuda:N")


def _advance(bar, value: float, force: bool = False) -> None:
    """Move the bar to ``value`` trials; within a batch it only moves forward (a batch may train twice)."""
    if force or value > bar.n:
        bar.n = round(value, 1)
        bar.refresh()


def _run_batch(exp: Experiment, cfg, batch: list[dict], dev: str, bar) -> list[dict]:
    """``run_trials`` on one batch, with the bar following the trainer's progress inside the batch."""
    start = bar.n if bar is not None else 0
    if bar is not None:
        set_reporter(lambda f: _advance(bar, start + f * len(batch)))
    try:
        metrics = exp.run_trials(cfg, batch, dev)
    except MemoryError:
        raise ConfigError(out_of_memory(exp, batch, "")) from None
    except RuntimeError as e:                        # torch's allocators raise RuntimeError when memory runs out
        if "memory" not in str(e).lower() and "allocate" not in str(e).lower():
            raise
        raise ConfigError(out_of_memory(exp, batch, " ".join(str(e).split())[:200])) from None
    finally:
        set_reporter(None)
    if bar is not None:
        _advance(bar, start + len(batch), force=True)
    return metrics


def out_of_memory(exp: Experiment, batch: list[dict], detail: str) -> str:
    return (f"out of memory training a batch of {len(batch)} trials of {exp.name}{' (' + detail + ')' if detail else ''}; "
            "everything stored so far is kept: lower the models trained together (batch_models / max_models) or the "
            "sizes (--set ...), then re-run the same command to resume")

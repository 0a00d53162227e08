"""Progress inside one batch of trials.

The runner's progress bar advances per finished batch; a batch of many models trained as one tensor
program can take minutes, so long loops call :func:`report` with the fraction of the batch done and
the bar moves in between.  Without a runner (plain API use) ``report`` does nothing.
"""
from __future__ import annotations

from typing import Callable

_reporter: Callable[[float], None] | None = None


def set_reporter(fn: Callable[[float], None] | None) -> None:
    global _reporter
    _reporter = fn


def report(fraction: float) -> None:
    if _reporter is not None:
        _reporter(min(max(fraction, 0.0), 1.0))

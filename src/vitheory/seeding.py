"""Seeds and random generators: every random draw of vitheory comes from a ``torch.Generator`` seeded here.

Each trial owns its generators, seeded from the trial seed and a *tag* naming what is drawn (patterns, training
set, initial weights, mini-batch order, test set, ...).  So a model trained inside a batch of K models sees
exactly the numbers it would see trained alone, and two trials that differ only in a knob that does not enter a
tag (e.g. N for the test set) draw the same numbers for it (common random numbers).

:func:`derive_seed` hashes ``(seed, *tags)`` (stable across runs, platforms and Python versions) and
:func:`generator` returns a CPU generator seeded with it.  :func:`stream_generator` is the paper-1 experiments'
older affine scheme ``seed * 7919 + stream * 104729 + 17``, kept so that their stored results stay reproducible.
"""
from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *tags: object) -> int:
    """A 63-bit seed derived from ``seed`` and ``tags`` (stable across runs, platforms and Python versions)."""
    blob = repr((int(seed),) + tuple(tags)).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, *tags: object) -> torch.Generator:
    """A CPU generator seeded with :func:`derive_seed` ``(seed, *tags)``."""
    return torch.Generator().manual_seed(derive_seed(seed, *tags))


def stream_generator(seed: int, stream: int) -> torch.Generator:
    """The generator of stream ``stream`` (a small integer) of trial ``seed`` in the paper-1 experiments."""
    return torch.Generator().manual_seed(int(seed) * 7919 + int(stream) * 104729 + 17)

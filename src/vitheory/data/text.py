"""Offline English text for the language-model assumption checks (../shared/papers/mha_memorization.md 3.5, claim C6).

The notebook used Wikipedia articles longer than 2000 characters.  Offline, the documents are the 79 topic pages
of Python's own documentation shipped with every CPython (``pydoc_data.topics``: the language reference, about
465,000 characters of English prose with code), one document per topic, sorted by name (project choice).

Sequences (``n`` token ids each, from a seed):

* GPT-2 (:func:`gpt2_sequences`): a random contiguous ``n``-token window of a random document with at least ``n``
  tokens; every (document, start) pair once.
* BERT (:func:`bert_sequences`): ``[CLS] s1 [SEP] s2 [SEP]`` with ``len(s1) ~ U[lo, n - 3 - lo)`` (the notebook:
  ``U[5, 505)`` for ``n = 512``; here ``lo = min(5, ...)``), ``s1`` a random window of one document; with
  probability 1/2 ``s2`` continues ``s1`` in the same document, otherwise it is a window of another document;
  token types 0 up to the first ``[SEP]``, 1 after.

Tokens come from ``encode(text) -> list[int]``: a pretrained model's own tokenizer (from its local folder), or,
for randomly initialised models, :func:`byte_encoder` (UTF-8 bytes shifted by an offset: project choice; for a
random embedding table any injective map of the bytes gives the same distribution of representations).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from vitheory.config import ConfigError


@dataclass(frozen=True)
class TokenSequences:
    """``ids (T, n)`` int64, ``token_type (T, n)`` int64 (zeros for GPT-2), one provenance string per sequence
    (``"doc@start"`` or ``"doc@start+doc2@start2"``) and the documents used."""
    ids: np.ndarray
    token_type: np.ndarray
    names: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.ids)


def text_documents(min_chars: int = 0) -> list[tuple[str, str]]:
    """The topic pages of Python's documentation (``pydoc_data.topics``) as (name, text), sorted by name."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # a Python built without pydoc_data
        raise ConfigError("the offline text source needs the standard library's pydoc_data package") from None
    docs = sorted((k, v) for k, v in topics.items() if isinstance(v, str) and len(v) >= min_chars)
    if not docs:
        raise ConfigError(f"no pydoc_data topic has at least {min_chars} characters")
    return docs


def byte_encoder(offset: int = 0) -> Callable[[str], list[int]]:
    """``text -> [offset + b for b in text.encode('utf-8')]``."""
    def encode(text: str) -> list[int]:
        return [offset + b for b in text.encode("utf-8")]
    return encode


def distinct_documents(names) -> int:
    """Distinct documents behind sequence names ``doc@start`` / ``doc@start+doc2@start2``."""
    return len({part.split("@", 1)[0] for nm in names for part in str(nm).split("+")})


def _encoded(docs, encode):
    return [(name, np.asarray(encode(text), dtype=np.int64)) for name, text in docs]


def _check(T, n):
    for name, v, lo in (("n_sequences", T, 1), ("n_tokens", n, 8)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ConfigError(f"{name}={v!r} is out of range; allowed range: [{lo}, inf) (an integer)")


def gpt2_sequences(T: int, n: int, seed: int, encode: Callable[[str], list[int]],
                   docs: list[tuple[str, str]] | None = None) -> TokenSequences:
    """``T`` distinct random ``n``-token windows of the documents (see the module doc)."""
    _check(T, n)
    enc = [(nm, v) for nm, v in _encoded(docs or text_documents(), encode) if len(v) >= n]
    if not enc:
        raise ConfigError(f"n_tokens={n} is out of range: no document has {n} tokens")
    total = sum(len(v) - n + 1 for _, v in enc)
    if T > total:
        raise ConfigError(f"n_sequences={T} is out of range; allowed range: [1, {total}] ({n}-token windows)")
    rng = np.random.default_rng(seed)
    seen: set = set()
    ids = np.empty((T, n), dtype=np.int64)
    names = []
    while len(names) < T:
        j = int(rng.integers(len(enc)))
        nm, v = enc[j]
        s = int(rng.integers(len(v) - n + 1))
        if (j, s) in seen:
            continue
        seen.add((j, s))
        ids[len(names)] = v[s:s + n]
        names.append(f"{nm}@{s}")
    return TokenSequences(ids, np.zeros_like(ids), tuple(names), f"pydoc_data topics ({len(enc)} documents), seed {seed}")


def bert_sequences(T: int, n: int, seed: int, encode: Callable[[str], list[int]], cls_id: int, sep_id: int,
                   docs: list[tuple[str, str]] | None = None) -> TokenSequences:
    """``T`` distinct ``[CLS] s1 [SEP] s2 [SEP]`` sequences of ``n`` tokens (see the module doc)."""
    _check(T, n)
    enc = [(nm, v) for nm, v in _encoded(docs or text_documents(), encode) if len(v) >= n]
    if len(enc) < 2:
        raise ConfigError(f"n_tokens={n} is out of range: fewer than two documents have {n} tokens")
    lo = min(5, (n - 3) // 2)
    rng = np.random.default_rng(seed)
    seen: set = set()
    ids = np.empty((T, n), dtype=np.int64)
    tt = np.zeros((T, n), dtype=np.int64)
    names: list[str] = []
    attempts = 0
    while len(names) < T:
        attempts += 1
        if attempts > 50 * T + 1000:
            raise ConfigError(f"n_sequences={T} is out of range: cannot draw that many distinct sequences")
        L1 = int(rng.integers(lo, n - 3 - lo + 1))
        L2 = n - 3 - L1
        j = int(rng.integers(len(enc)))
        nm, v = enc[j]
        if bool(rng.integers(2)):                            # s2 continues s1
            s = int(rng.integers(len(v) - (L1 + L2) + 1))
            s1, s2 = v[s:s + L1], v[s + L1:s + L1 + L2]
            key, name = (j, s, L1, -1, -1), f"{nm}@{s}"
        else:                                                # s2 from another document
            j2 = int(rng.integers(len(enc) - 1))
            j2 += j2 >= j
            nm2, v2 = enc[j2]
            s = int(rng.integers(len(v) - L1 + 1))
            s_2 = int(rng.integers(len(v2) - L2 + 1))
            s1, s2 = v[s:s + L1], v2[s_2:s_2 + L2]
            key, name = (j, s, L1, j2, s_2), f"{nm}@{s}+{nm2}@{s_2}"
        if key in seen:
            continue
        seen.add(key)
        i = len(names)
        ids[i] = np.concatenate([[cls_id], s1, [sep_id], s2, [sep_id]])
        tt[i, L1 + 2:] = 1
        names.append(name)
    return TokenSequences(ids, tt, tuple(names), f"pydoc_data topics ({len(enc)} documents), seed {seed}")

"""Synthetic data of the multi-head-attention memorization experiments.

Mahdavi, Liao, Thrampoulidis, "Memorization Capacity of Multi-Head Attention in Transformers" (ICLR 2024);
the setup is described in ``../shared/papers/mha_memorization.md`` section 4.1 and re-implemented here from that
description.

One example t is a query vector e^(t) in R^d, a context matrix E^(t) in R^{n x d} (n tokens as rows) and a
label y^(t) that is independent of the inputs:

* queries      e^(t) ~ Uniform[0, 1]^d, i.i.d. per example;
* context      ``shared``: one E ~ Uniform[0, 1]^{n x d} for every example (the official code's ``fixed``,
               the paper's "shared context", Proposition 2);
               ``random``: an independent E^(t) ~ Uniform[0, 1]^{n x d} per example;
* labels       ``classification``: y ~ Uniform{0, ..., n_classes - 1}; ``regression``: y ~ Uniform[0, 1].

The model input is X = [e; E] in R^{(n+1) x d}: token 0 is the query, tokens 1..n the context.

Reproducibility (project choice): every data set is drawn on the CPU from its own ``torch.Generator``, seeded
from the trial seed and the data set's parameters only (not from the model's H or d_h).  So

* a model trained inside a batch of K models sees exactly the data it would see if trained alone, and
* models that differ only in H or d_h (same seed, T, d, n, context, labels) see the same data set, which
  pairs the comparisons across H and d_h (common random numbers).

Values are always drawn in float32 and then cast, so a float64 run sees the float32 data set cast up.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vitheory.seeding import derive_seed

CONTEXT_TYPES = ("shared", "random")
LABEL_KINDS = ("classification", "regression")



@dataclass(frozen=True)
class MemorizationData:
    """One synthetic data set.

    queries : [T, d]           the query tokens e^(t)
    context : [n, d]           the shared context E            (context_type == "shared")
              [T, n, d]        one context E^(t) per example    (context_type == "random")
    labels  : [T] int64        class labels                     (label_kind == "classification")
              [T] float        regression targets               (label_kind == "regression")
    """
    queries: torch.Tensor
    context: torch.Tensor
    labels: torch.Tensor
    context_type: str
    label_kind: str
    n_classes: int
    seed: int

    @property
    def T(self) -> int:
        return self.queries.shape[0]

    @property
    def d(self) -> int:
        return self.queries.shape[1]

    @property
    def n(self) -> int:
        return self.context.shape[-2]

    @property
    def shared(self) -> bool:
        return self.context_type == "shared"

    def contexts(self) -> torch.Tensor:
        """[T, n, d]: the context of every example (a broadcast view for a shared context)."""
        return self.context.expand(self.T, -1, -1) if self.shared else self.context

    def inputs(self) -> torch.Tensor:
        """[T, n+1, d]: the full input sequences X^(t) = [e^(t); E^(t)], query first."""
        return torch.cat([self.queries[:, None, :], self.contexts()], dim=1)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "MemorizationData":
        def cast(x: torch.Tensor, floating: bool) -> torch.Tensor:
            return x.to(device=device, dtype=dtype if (floating and dtype is not None) else x.dtype)
        return MemorizationData(cast(self.queries, True), cast(self.context, True),
                                cast(self.labels, self.label_kind == "regression"),
                                self.context_type, self.label_kind, self.n_classes, self.seed)


def make_memorization_data(T: int, d: int, n: int, *, context_type: str = "shared",
                           label_kind: str = "classification", n_classes: int = 100, seed: int = 0,
                           device: str | torch.device = "cpu",
                           dtype: torch.dtype = torch.float32) -> MemorizationData:
    """Draw one data set (see the module docstring).  Raises ValueError on bad sizes or kinds.

    Draw order from the data set's generator: context (shared: [n, d]), queries [T, d], contexts (random:
    [T, n, d]), labels [T].
    """
    if T < 1:
        raise ValueError(f"T={T} must be >= 1")
    if d < 1 or n < 1:
        raise ValueError(f"d={d} and n={n} must be >= 1")
    if context_type not in CONTEXT_TYPES:
        raise ValueError(f"context_type={context_type!r}; choose one of {', '.join(CONTEXT_TYPES)}")
    if label_kind not in LABEL_KINDS:
        raise ValueError(f"label_kind={label_kind!r}; choose one of {', '.join(LABEL_KINDS)}")
    if label_kind == "classification" and n_classes < 2:
        raise ValueError(f"n_classes={n_classes} must be >= 2 for classification")
    n_out = n_classes if label_kind == "classification" else 1
    g = torch.Generator().manual_seed(derive_seed(seed, "memorization-data", T, d, n, context_type,
                                                  label_kind, n_out))
    shared_context = torch.rand(n, d, generator=g) if context_type == "shared" else None
    queries = torch.rand(T, d, generator=g)
    context = shared_context if shared_context is not None else torch.rand(T, n, d, generator=g)
    if label_kind == "classification":
        labels = torch.randint(0, n_classes, (T,), generator=g)
    else:
        labels = torch.rand(T, generator=g)
    return MemorizationData(queries, context, labels, context_type, label_kind, n_out, seed).to(device, dtype)


@dataclass(frozen=True)
class StackedData:
    """K data sets of equal (d, n, context type, label kind), padded to the largest T, for batched training.

    queries : [K, T_max, d]
    context : [K, n, d] (shared) or [K, T_max, n, d] (random)
    labels  : [K, T_max]
    sizes   : [K] int64, the true T_k; rows >= T_k are zero padding and are never sampled or scored
    """
    queries: torch.Tensor
    context: torch.Tensor
    labels: torch.Tensor
    sizes: torch.Tensor
    shared: bool
    label_kind: str

    @property
    def K(self) -> int:
        return self.queries.shape[0]

    def take(self, idx: torch.Tensor) -> "StackedData":
        """The sub-stack of the models at positions ``idx``."""
        return StackedData(self.queries[idx], self.context[idx], self.labels[idx], self.sizes[idx],
                           self.shared, self.label_kind)

    def gather(self, rows: torch.Tensor):
        """rows [K, B] -> (queries [K, B, d], context [K, n, d] or [K, B, n, d], labels [K, B])."""
        K, B = rows.shape
        T_max = self.queries.shape[1]
        flat = (rows + T_max * torch.arange(K, device=rows.device)[:, None]).reshape(-1)   # rows of [K*T_max]

        def pick(x: torch.Tensor) -> torch.Tensor:
            return x.reshape((K * T_max,) + tuple(x.shape[2:])).index_select(0, flat).view((K, B) + tuple(x.shape[2:]))

        ctx = self.context if self.shared else pick(self.context)
        return pick(self.queries), ctx, pick(self.labels)


def stack_data(datasets: list[MemorizationData]) -> StackedData:
    first = datasets[0]
    for ds in datasets:
        if (ds.d, ds.n, ds.context_type, ds.label_kind) != (first.d, first.n, first.context_type, first.label_kind):
            raise ValueError("stack_data: data sets differ in d, n, context type or label kind")
    t_max = max(ds.T for ds in datasets)

    def pad(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == t_max:
            return x
        return torch.cat([x, x.new_zeros((t_max - x.shape[0],) + tuple(x.shape[1:]))], dim=0)

    queries = torch.stack([pad(ds.queries) for ds in datasets])
    labels = torch.stack([pad(ds.labels) for ds in datasets])
    context = torch.stack([ds.context if first.shared else pad(ds.context) for ds in datasets])
    sizes = torch.tensor([ds.T for ds in datasets], dtype=torch.long, device=queries.device)
    return StackedData(queries, context, labels, sizes, first.shared, first.label_kind)

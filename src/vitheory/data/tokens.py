"""The token data model of Li et al. (ICLR 2023), "A theoretical understanding of shallow ViTs".

A sample is X = [x_1, ..., x_L] in R^{d x L} with label y in {+1, -1}.  There are M patterns
mu_1..mu_M in R^d; mu_1 = o_1 (label +1) and mu_2 = o_2 (label -1) are *discriminative*, the other
M - 2 are label-irrelevant.  Each token is a noisy pattern, x_l = mu_{j(l)} + z_l, and relative to
the sample's label a token is

* label-relevant   -- its pattern is the discriminative pattern of the sample's own label,
* confusion        -- its pattern is the discriminative pattern of the other label,
* label-irrelevant -- one of the M - 2 other patterns (optionally *spurious*: a chosen irrelevant
  pattern whose frequency correlates with the label in training but not at test).

alpha_* and alpha_# are the *average* fractions of relevant and confusion tokens (the paper's word).
The label is the majority vote of the discriminative tokens; the generator always keeps
#relevant > #confusion so that the vote equals the intended label.

Project choices (the available sources of the paper do not state them; each is a knob):
* orthonormal unit patterns by default (``pattern_kind='orthonormal'``, needs d >= M); or random
  patterns of norm ``pattern_norm`` with a minimum pairwise distance ``min_separation``;
* counts by stochastic rounding so that E[#relevant] = alpha_* L exactly (``counts='stochastic'``), or
  deterministic ceil(alpha_* L) / floor(alpha_# L);
* additive noise: ``noise='bounded'`` draws a uniform direction and a norm uniform in [0, tau], so
  ||z|| <= tau; ``noise='gaussian'`` draws z ~ N(0, tau^2/d I) (E||z||^2 = tau^2);
* balanced classes; token positions shuffled per sample.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

RELEVANT, CONFUSION, IRRELEVANT, SPURIOUS = 0, 1, 2, 3
CATEGORY_NAMES = ("relevant", "confusion", "irrelevant", "spurious")


@dataclass
class TokenSamples:
    """A batch of samples from the token data model.

    X        : [n, L, d] tokens (rows are tokens; the paper writes X as d x L)
    y        : [n] labels in {+1., -1.}
    category : [n, L] int64, RELEVANT / CONFUSION / IRRELEVANT / SPURIOUS
    pattern  : [n, L] int64, index of each token's pattern
    noise_norm: [n, L] ||z_l||
    """
    X: torch.Tensor
    y: torch.Tensor
    category: torch.Tensor
    pattern: torch.Tensor
    noise_norm: torch.Tensor

    def __len__(self) -> int:
        return self.X.shape[0]

    def keep(self, idx: torch.Tensor) -> "TokenSamples":
        """Keep token positions ``idx`` [n, L'] of each sample (token sparsification)."""
        g = lambda t: torch.gather(t, 1, idx)
        X = torch.gather(self.X, 1, idx.unsqueeze(-1).expand(-1, -1, self.X.shape[-1]))
        return TokenSamples(X, self.y, g(self.category), g(self.pattern), g(self.noise_norm))


def make_patterns(d: int, M: int, *, kind: Literal["orthonormal", "random"] = "orthonormal",
                  norm: float = 1.0, min_separation: float = 0.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """[M, d] patterns; row 0 is o_1 (label +1), row 1 is o_2 (label -1).

    ``orthonormal``: M random orthonormal directions scaled to ``norm`` (pairwise distance norm*sqrt(2)).
    ``random``: Gaussian directions of norm ``norm``, redrawn until every pairwise distance is at
    least ``min_separation`` (at most 1000 tries).
    """
    if kind == "orthonormal":
        if d < M:
            raise ValueError(f"orthonormal patterns need d >= M (got d={d}, M={M})")
        A = torch.randn(d, M, generator=generator, dtype=torch.float64)
        Q, R = torch.linalg.qr(A)
        Q = Q * torch.sign(torch.diagonal(R))  # a unique, seed-determined basis
        return (Q.T * norm).float()
    for _ in range(1000):
        P = torch.randn(M, d, generator=generator, dtype=torch.float64)
        P = P / P.norm(dim=1, keepdim=True) * norm
        dist = torch.cdist(P, P) + torch.eye(M, dtype=P.dtype) * 1e9
        if dist.min() >= min_separation:
            return P.float()
    raise ValueError(f"could not draw {M} patterns of norm {norm} in R^{d} with separation >= {min_separation}")


def _stochastic_count(alpha: float, L: int, n: int, g: torch.Generator) -> torch.Tensor:
    base = int(alpha * L)
    frac = alpha * L - base
    return base + (torch.rand(n, generator=g) < frac).long()


def sample_tokens(patterns: torch.Tensor, n: int, *, L: int, alpha_star: float, alpha_conf: float,
                  tau: float, noise: Literal["bounded", "gaussian"] = "bounded",
                  counts: Literal["stochastic", "deterministic"] = "stochastic",
                  spurious_tokens: int = 0, spurious_corr: float = 0.5,
                  generator: torch.Generator | None = None) -> TokenSamples:
    """Draw ``n`` samples (balanced labels) from the token data model.

    Spurious tokens: if ``spurious_tokens`` = s > 0, pattern M-1 (an irrelevant one) is the spurious
    pattern.  A sample carries s spurious tokens (taken from its irrelevant slots) with probability
    ``spurious_corr`` if y = +1 and 1 - ``spurious_corr`` if y = -1; so corr = 0.5 means independent of the
    label (the test distribution) and corr -> 1 a strong spurious correlation (training).
    """
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    M, d = patterns.shape
    y = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, -1.0)
    if counts == "stochastic":
        n_rel = _stochastic_count(alpha_star, L, n, g)
        n_conf = _stochastic_count(alpha_conf, L, n, g)
    else:
        n_rel = torch.full((n,), int(-(-alpha_star * L // 1)), dtype=torch.long)
        n_conf = torch.full((n,), int(alpha_conf * L), dtype=torch.long)
    n_rel = n_rel.clamp(1, L)
    n_conf = torch.minimum(n_conf, n_rel - 1).clamp(min=0)          # majority vote = intended label
    n_conf = torch.minimum(n_conf, L - n_rel)

    # slot j < n_rel: relevant; n_rel <= j < n_rel + n_conf: confusion; rest irrelevant. Then shuffle.
    slot = torch.arange(L).expand(n, L)
    category = torch.full((n, L), IRRELEVANT, dtype=torch.long)
    category[slot < n_rel[:, None]] = RELEVANT
    category[(slot >= n_rel[:, None]) & (slot < (n_rel + n_conf)[:, None])] = CONFUSION
    pos = (y > 0).long()  # 1 for label +1
    rel_pattern = torch.where(pos == 1, 0, 1)
    n_irr_patterns = M - 2 - (1 if spurious_tokens > 0 else 0)
    if n_irr_patterns < 1 and bool((category == IRRELEVANT).any()):
        raise ValueError("the data model needs at least one label-irrelevant pattern (M >= 3, or M >= 4 with spurious tokens)")
    irr = 2 + torch.randint(max(n_irr_patterns, 1), (n, L), generator=g)
    pattern = torch.where(category == RELEVANT, rel_pattern[:, None],
                          torch.where(category == CONFUSION, 1 - rel_pattern[:, None], irr))
    if spurious_tokens > 0:
        p_has = torch.where(pos == 1, spurious_corr, 1.0 - spurious_corr)
        has = torch.rand(n, generator=g) < p_has
        irr_slot = (category == IRRELEVANT)
        rank = torch.cumsum(irr_slot.long(), dim=1)
        make = irr_slot & (rank <= spurious_tokens) & has[:, None]
        category = torch.where(make, SPURIOUS, category)
        pattern = torch.where(make, M - 1, pattern)
    perm = torch.argsort(torch.rand(n, L, generator=g), dim=1)
    category = torch.gather(category, 1, perm)
    pattern = torch.gather(pattern, 1, perm)

    if noise == "bounded":
        z = torch.randn(n, L, d, generator=g)
        z = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        z = z * (tau * torch.rand(n, L, 1, generator=g))
    elif noise == "gaussian":
        z = torch.randn(n, L, d, generator=g) * (tau / d ** 0.5)
    else:
        raise ValueError(f"noise={noise!r}; choose bounded or gaussian")
    X = patterns[pattern] + z
    return TokenSamples(X=X, y=y, category=category, pattern=pattern, noise_norm=z.norm(dim=-1))


def majority_label(samples: TokenSamples) -> torch.Tensor:
    """The majority vote of the discriminative tokens, recomputed from the token patterns (a check)."""
    plus = (samples.pattern == 0).sum(1)
    minus = (samples.pattern == 1).sum(1)
    return torch.where(plus > minus, 1.0, -1.0)

"""The error floor of a token data model: how often two fixed classifiers err on fresh samples.

A grid whose success criterion is "zero test errors" only measures sample complexity where the target
classifier itself makes no error; otherwise failures are a noise floor, not a boundary (issue 9).  Two
classifiers are measured on ``n`` fresh samples of the same generator (:func:`vitheory.data.tokens.sample_tokens`):

* **oracle vote** -- the data model's own labelling rule applied to the noisy tokens: every token is
  assigned to its nearest pattern, argmin_j ||x_l - mu_j||, and the label is the majority vote of the
  tokens assigned to o_1 (+1) and o_2 (-1); a tie counts as an error.  Its error is the floor of the task:
  a classifier that errs here cannot be expected to reach zero test errors.
* **mean pooling** -- sign( (1/L) sum_l x_l^T (o_1 - o_2) ): the best linear read-out of uniform attention
  (A = alpha_*).  A model whose attention does not learn is at best this classifier; where it errs but the
  oracle does not, reaching zero errors requires attention to concentrate.

Errors are counted exactly; with e errors in n samples the one-sided 95% upper bound of the error rate is
reported (3/n when e = 0, the "rule of three"; otherwise the Clopper-Pearson bound).
"""
from __future__ import annotations

import torch

from vitheory.data.tokens import sample_tokens


def upper_bound(errors: int, n: int, level: float = 0.95) -> float:
    """One-sided ``level`` upper confidence bound of an error rate with ``errors`` in ``n`` (Clopper-Pearson)."""
    from scipy import stats
    if errors >= n:
        return 1.0
    return float(stats.beta.ppf(level, errors + 1, n - errors))


def oracle_vote(X: torch.Tensor, patterns: torch.Tensor) -> torch.Tensor:
    """Nearest-pattern vote: X [n, L, d], patterns [M, d] -> [n] in {+1, -1, 0 (tie)}."""
    # argmin_j ||x - mu_j||^2 = argmax_j (2 x.mu_j - ||mu_j||^2)
    score = 2 * X @ patterns.T - (patterns ** 2).sum(1)                  # [n, L, M]
    nearest = score.argmax(-1)                                            # [n, L]
    plus, minus = (nearest == 0).sum(1), (nearest == 1).sum(1)
    return torch.sign((plus - minus).float())


def mean_pooling(X: torch.Tensor, patterns: torch.Tensor) -> torch.Tensor:
    """sign of the mean token's projection on o_1 - o_2: [n] in {+1, -1, 0}."""
    return torch.sign(X.mean(1) @ (patterns[0] - patterns[1]))


def classifier_floor(patterns: torch.Tensor, n: int, *, generator: torch.Generator, chunk: int = 4000,
                     **sample_kwargs) -> dict:
    """Errors of the oracle vote and of mean pooling on ``n`` fresh samples of ``sample_tokens(patterns, ...)``.

    ``sample_kwargs`` are those of :func:`sample_tokens` (L, alpha_star, alpha_conf, tau, noise, counts, ...).
    Returns counts, rates and 95% upper bounds: ``oracle_errors``, ``oracle_error``, ``oracle_error_ub``,
    ``mean_pool_errors``, ``mean_pool_error``, ``mean_pool_error_ub``, ``n``.
    """
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    e_oracle = e_mean = done = 0
    while done < n:
        k = min(chunk, n - done)
        s = sample_tokens(patterns, k, generator=generator, **sample_kwargs)
        e_oracle += int((oracle_vote(s.X, patterns) != s.y).sum())       # a tie (0) is an error
        e_mean += int((mean_pooling(s.X, patterns) != s.y).sum())
        done += k
    return {"n": n, "oracle_errors": e_oracle, "oracle_error": e_oracle / n, "oracle_error_ub": upper_bound(e_oracle, n),
            "mean_pool_errors": e_mean, "mean_pool_error": e_mean / n, "mean_pool_error_ub": upper_bound(e_mean, n)}

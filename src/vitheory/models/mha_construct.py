"""An explicit (untrained) one-layer multi-head attention that memorizes T examples, and its certificate (C13).

Mahdavi, Liao, Thrampoulidis (ICLR 2024), Theorem 1 and its proof idea as ``../shared/papers/mha_memorization.md``
section 2.6 states it: saturated heads, each head's attention selecting context tokens, and a read-out solved as
a linear system.  The paper's own proof is not available; the construction below is the project's, written from
that idea, and every claim about it is checked numerically by :func:`certify` on the weights it returns.

Setting (shared context, Proposition 2): T queries e^(t) in R^d, one context E in R^{n x d}, real labels y^(t).
Layer (no input map, no positions, score scale folded into W_Q), head h = 1..H:

    a_h^(t) = softmax( E W_K^h (W_Q^h)^T e^(t) )                   in R^n   (the query row of attention)
    f(X^(t)) = sum_h (a_h^(t))^T E W_V^h W_O^h w_U + b_U            (d_v = 1, one regression output)

so f^(t) = <Phi^(t), u> with the attention features Phi^(t) = [a_1^(t); ...; a_H^(t)] in R^{H n} and
u_h = E W_V^h (W_O^h w_U) in R^n.  The layer interpolates every label vector y in R^T iff the T x H n feature
matrix Phi has rank T.  Because every a_h sums to 1, rank Phi <= H (n - 1) + 1 for *any* weights.

Construction (m = min(n - 1, d_h) responsible queries per head, capacity T_max = H m + 1):

1. Selection order (linear programs, :func:`selection_order`): a peeling order t_1, ..., t_T of the queries
   such that each e^(t_j) is separated through the origin from every *later* query:
   max delta_j s.t. alpha_j . e^(t_j) = 1 and alpha_j . e^(t_k) <= -delta_j for k > j (delta capped at 1).
   Queries separable from all others (extreme rays of their cone) come first; the rest are peeled one at a
   time.  Positive queries (the project's Uniform[0, 1]^d data) with no two collinear always admit such an
   order; a repeated query -- Assumption 1 broken -- gets delta <= -1 against its twin.  The last query is the
   anchor (the "+1"); the others are dealt to heads round robin: the j-th goes to head (j - 1) mod H and
   selects context token 1 + (j - 1) div H, so head h is responsible for m queries.
2. Key-query weights.  With Assumption 2 (E has full row rank n) E E^+ = I_n for E^+ = E^T (E E^T)^{-1}, so
       W_K^h = E^+ S          (S in R^{n x d_h}: S[i, i-1] = 1 for i = 1..m, else 0)
   and W_Q^h (d x d_h) with column i-1 = lambda_j alpha_j for the query t_j that selects token i (other
   columns 0) give logits
   lambda_j alpha_j . e on token i and 0 on the tokens 0 and m+1..n-1.  Scales, last query first:
   lambda_j delta_j >= ``saturation`` (token i carries weight <= exp(-saturation) on every later query) and
   lambda_j >= saturation + lambda_k (alpha_k . e^(t_j))_+ for every later k of the same head (t_j's own
   token wins on t_j).  So every head is saturated on its own queries, one-hot on their tokens, and the
   features, rows and columns in peeling order, are block upper triangular with a unit diagonal: rank T.
   Rank E W_K^h (W_Q^h)^T <= m <= d_h, which is where d_h enters.
3. Read-out.  W_O^h = e_1^T, w_U = e_1, b_U = 0, W_V^h = E^+ u_h, so E W_V^h W_O^h w_U = u_h.  u is the
   minimum-norm solution of Phi u = y (numpy lstsq on the *computed* features, not the idealised ones).

Certificate (float64): the singular values of Phi; numerical rank = #{sigma > tol}, tol = max(T, H n) eps
sigma_max (numpy's matrix_rank rule); ``certified`` iff rank = T and the layer's forward pass, recomputed
from the weights, matches y with max |f - y| < ``err_tol`` (1e-6).  With d_h >= n, T_max = H (n - 1) + 1 is
the rank bound above, so the construction is optimal there; with d_h < n it reaches H d_h + 1, H more than
the hypothesis c = H (min(n, d_h) - 1) + 1 of the spec.

Weight layout: the TransformerLens layout of :mod:`vitheory.models.mha` for one model: W_Q, W_K [H, d, d_h],
W_V [H, d, 1], W_O [H, 1, d], w_U [d], b_U scalar.  :class:`~vitheory.models.mha.BatchedMHA` adds an input map
and sinusoidal positions and divides the scores by sqrt(d); with W_E = I, b_E = 0, pos = 0 and
W_Q * sqrt(d) it computes this layer (a test checks it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog

ERR_TOL = 1e-6


@dataclass(frozen=True)
class ConstructedMHA:
    """Weights of the constructed layer and how they were chosen.

    W_Q, W_K [H, d, d_h]; W_V [H, d, 1]; W_O [H, 1, d]; w_U [d]; b_U float.
    head [T] int: the head responsible for each query (-1 = the anchor); token [T]: the token it selects (0 = none).
    margins [T]: delta_t of the selection LP (against the later queries; NaN for the anchor);
    lam: the largest logit scale lambda_j.
    """
    W_Q: np.ndarray
    W_K: np.ndarray
    W_V: np.ndarray
    W_O: np.ndarray
    w_U: np.ndarray
    b_U: float
    head: np.ndarray
    token: np.ndarray
    margins: np.ndarray
    lam: float

    @property
    def H(self) -> int:
        return self.W_Q.shape[0]


def capacity(H: int, n: int, d_head: int) -> int:
    """T_max = H min(n - 1, d_h) + 1: the most examples this construction places."""
    return H * min(n - 1, d_head) + 1


def hypothesis_capacity(H: int, n: int, d_head: int) -> int:
    """The spec's hypothesis c_{H,n} = H (min(n, d_h) - 1) + 1."""
    return H * (min(n, d_head) - 1) + 1


def rank_bound(H: int, n: int) -> int:
    """rank Phi <= H (n - 1) + 1 for any weights (each head's attention sums to 1)."""
    return H * (n - 1) + 1


def separation(target: np.ndarray, others: np.ndarray) -> tuple[float, np.ndarray]:
    """(delta, alpha) of the LP  max delta  s.t.  alpha . target = 1,  alpha . e_s + delta <= 0 for the rows e_s of
    ``others``;  delta is capped at 1 (the LP is then bounded), -inf when target = 0."""
    d = target.shape[0]
    if len(others) == 0:
        return 1.0, target / max(float(target @ target), 1e-300)
    c = np.zeros(d + 1)
    c[-1] = -1.0                                                     # maximize delta
    A_ub = np.hstack([others, np.ones((len(others), 1))])            # alpha.e_s + delta <= 0
    res = linprog(c, A_ub=A_ub, b_ub=np.zeros(len(others)), A_eq=np.append(target, 0.0)[None, :], b_eq=[1.0],
                  bounds=[(None, None)] * d + [(None, 1.0)], method="highs")
    return (float(res.x[-1]), res.x[:d]) if res.status == 0 else (-np.inf, np.zeros(d))


def selection_order(queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A peeling order of the queries: each query is separated (delta > 0) from every query *after* it.

    queries [T, d] -> order [T] (the last one is the anchor), margins [T] (delta_t against the later queries),
    alphas [T, d].  First every query is separated from all the others (T LPs); those with delta > 0 come first,
    most separable first.  The rest R (not extreme rays of the cone of all queries) are peeled: repeatedly the
    query of R most separable from the remaining ones of R is taken next.  Positive queries with no two
    collinear always admit such an order; a repeated query gets delta <= -1 against its twin.
    """
    T = len(queries)
    margins, alphas = np.empty(T), np.zeros_like(queries)
    for t in range(T):
        margins[t], alphas[t] = separation(queries[t], np.delete(queries, t, axis=0))
    order = [int(t) for t in np.argsort(-margins, kind="stable") if margins[t] > 0]
    rest = [t for t in range(T) if margins[t] <= 0]
    if not rest:                                                     # all separable: the least separable is the anchor
        return np.array(order), margins, alphas
    while len(rest) > 1:
        trial = [separation(queries[r], queries[[s for s in rest if s != r]]) for r in rest]
        best = int(np.argmax([m for m, _ in trial]))
        r = rest.pop(best)
        margins[r], alphas[r] = trial[best]
        order.append(r)
    margins[rest[0]] = np.nan                                        # the anchor selects nothing
    return np.array(order + rest), margins, alphas


def construct(queries: np.ndarray, context: np.ndarray, labels: np.ndarray, H: int, d_head: int,
              saturation: float = 40.0) -> ConstructedMHA:
    """Build the weights for T = len(queries) examples (see the module docstring).

    queries [T, d], context [n, d] (shared), labels [T]; requires T <= capacity(H, n, d_head).  The weights are
    always built; whether they memorize is decided by :func:`certify`, never assumed.
    Raises ValueError on shapes the construction does not cover.
    """
    queries, context, labels = (np.asarray(x, dtype=np.float64) for x in (queries, context, labels))
    T, d = queries.shape
    n = context.shape[0]
    if context.shape != (n, d) or labels.shape != (T,):
        raise ValueError(f"shapes: queries {queries.shape}, context {context.shape}, labels {labels.shape}")
    m = min(n - 1, d_head)
    if n < 2 or m < 1:
        raise ValueError(f"n={n}, d_h={d_head}: the construction needs n >= 2 and d_h >= 1")
    if T > capacity(H, n, d_head):
        raise ValueError(f"T={T} exceeds the construction's capacity H min(n-1, d_h) + 1 = {capacity(H, n, d_head)}")
    order, margins, alphas = selection_order(queries)
    head, token = np.full(T, -1), np.zeros(T, dtype=np.int64)
    for k, t in enumerate(order[:T - 1]):                            # round robin: head k mod H, token 1 + k // H
        head[t], token[t] = k % H, 1 + k // H
    # logit scales, last query first: lambda_t delta_t >= saturation (t's token ~0 on every later query) and
    # lambda_t >= saturation + lambda_k (alpha_k . e_t)_+ for every later k of the same head (t's own token wins)
    lams = np.zeros(T)
    for j in range(T - 2, -1, -1):
        t = order[j]
        later = [k for k in order[j + 1:T - 1] if head[k] == head[t]]
        push = max([lams[k] * max(float(alphas[k] @ queries[t]), 0.0) for k in later], default=0.0)
        lams[t] = max(saturation / min(margins[t], 1.0) if margins[t] > 0 else saturation, saturation + push)
    lam = float(lams.max()) if T > 1 else saturation
    E_pinv = context.T @ np.linalg.inv(context @ context.T)          # [d, n], E E^+ = I_n (Assumption 2)
    W_Q, W_K = np.zeros((H, d, d_head)), np.zeros((H, d, d_head))
    for h in range(H):
        for t in np.flatnonzero(head == h):
            i = token[t]
            W_Q[h, :, i - 1] = lams[t] * alphas[t]
            W_K[h, :, i - 1] = E_pinv[:, i]                          # E W_K^h = S: column i-1 is unit vector e_i
    W_O = np.zeros((H, 1, d))
    W_O[:, 0, 0] = 1.0
    w_U = np.zeros(d)
    w_U[0] = 1.0
    feats = features(queries, context, W_Q, W_K)                     # [T, H n]
    u = np.linalg.lstsq(feats, labels, rcond=None)[0].reshape(H, n)  # Phi u = y, minimum norm
    W_V = np.einsum("dn,hn->hd", E_pinv, u)[:, :, None]              # [H, d, 1], E W_V^h = u_h
    return ConstructedMHA(W_Q, W_K, W_V, W_O, w_U, 0.0, head, token, margins, float(lam))


def _softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def attention(queries: np.ndarray, context: np.ndarray, W_Q: np.ndarray, W_K: np.ndarray) -> np.ndarray:
    """[T, H, n]: a_h^(t) = softmax(E W_K^h (W_Q^h)^T e^(t))."""
    q = np.einsum("td,hde->the", queries, W_Q)                       # [T, H, d_h]
    k = np.einsum("nd,hde->hne", context, W_K)                       # [H, n, d_h]
    return _softmax(np.einsum("the,hne->thn", q, k))


def features(queries, context, W_Q, W_K) -> np.ndarray:
    """The stacked attention features Phi [T, H n]."""
    a = attention(queries, context, W_Q, W_K)
    return a.reshape(a.shape[0], -1)


def forward(model: ConstructedMHA, queries: np.ndarray, context: np.ndarray) -> np.ndarray:
    """f(X^(t)) [T] from the weights alone: sum_h a_h^T E W_V^h W_O^h w_U + b_U."""
    a = attention(queries, context, model.W_Q, model.W_K)           # [T, H, n]
    z = np.einsum("thn,nd,hdv->thv", a, context, model.W_V)          # [T, H, 1]
    o = np.einsum("thv,hvd->td", z, model.W_O)                       # [T, d]
    return o @ model.w_U + model.b_U


@dataclass(frozen=True)
class Certificate:
    certified: bool
    T: int
    rank: int
    sigma_min: float
    sigma_max: float
    tol: float
    max_err: float
    n_unseparable: int                                              # assigned queries with margin <= 0
    reason: str                                                      # "" when certified

    def as_metrics(self) -> dict:
        return dict(self.__dict__)


def certify(model: ConstructedMHA, queries, context, labels, err_tol: float = ERR_TOL) -> Certificate:
    """Numerical rank of Phi (float64) and the interpolation error of the layer's forward pass."""
    queries, context, labels = (np.asarray(x, dtype=np.float64) for x in (queries, context, labels))
    T = len(labels)
    feats = features(queries, context, model.W_Q, model.W_K)
    sig = np.linalg.svd(feats, compute_uv=False)
    tol = float(max(feats.shape) * np.finfo(np.float64).eps * sig[0])
    rank = int((sig > tol).sum())
    sigma_min = float(sig[T - 1]) if len(sig) >= T else 0.0
    f = forward(model, queries, context)
    err = float(np.max(np.abs(f - labels))) if np.all(np.isfinite(f)) else float("inf")
    bad = int(((model.head >= 0) & (model.margins <= 0)).sum())
    why = []
    if rank < T:
        why.append(f"rank deficit {T - rank}: rank {rank} < T={T} (sigma_T={sigma_min:.3g} <= tol={tol:.3g})")
    if not err < err_tol:
        why.append(f"max |f - y| = {err:.3g} >= {err_tol:g}")
    if why and bad:
        why.append(f"{bad} assigned queries not separable from the later ones (margin <= 0; "
                   "a repeated query breaks Assumption 1)")
    return Certificate(not why, T, rank, sigma_min, float(sig[0]), tol, err, bad, "; ".join(why))

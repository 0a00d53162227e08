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

1. Selection margins (a linear program per query): maximize delta_t subject to alpha_t . e^(t) = 1 and
   alpha_t . e^(s) <= -delta_t for every s != t.  delta_t > 0 iff e^(t) can be separated through the origin
   from the other queries (it is an extreme ray of their cone; a repeated query -- Assumption 1 broken -- gives
   delta_t <= -1).  The query with the smallest margin is the anchor (the "+1"); the others are dealt to heads
   in blocks: head h is responsible for G_h = {t_h1, ..., t_hm}, and t_hi selects context token i (1..m).
2. Key-query weights.  With Assumption 2 (E has full row rank n) E E^+ = I_n for E^+ = E^T (E E^T)^{-1}, so
       W_K^h = E^+ S          (S in R^{n x d_h}: S[i, i-1] = 1 for i = 1..m, else 0)
       W_Q^h = lambda [alpha_{t_h1}, ..., alpha_{t_hm}, 0, ...]            (d x d_h)
   give the logits E W_K^h (W_Q^h)^T e = lambda (0, alpha_{t_h1} . e, ..., alpha_{t_hm} . e, 0, ..., 0):
   token i's logit is lambda on t_hi and <= -lambda delta on every other query; the tokens 0 and m+1..n-1 keep
   logit 0.  With lambda = ``saturation`` / min(delta, 1) every head is saturated: on t_hi one-hot on token i, on
   every other query (almost exactly) uniform over the zero-logit tokens, the same vector for all of them.
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
    margins [T]: delta_t of the selection LP; lam: the logit scale lambda.
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


def selection_margins(queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query t: (delta_t, alpha_t) of the LP max delta s.t. alpha.e_t = 1, alpha.e_s + delta <= 0 (s != t).

    queries [T, d] -> margins [T], alphas [T, d].  delta is capped at 1 (the LP is then bounded).
    """
    T, d = queries.shape
    margins, alphas = np.empty(T), np.zeros((T, d))
    c = np.zeros(d + 1)
    c[-1] = -1.0                                                     # maximize delta
    for t in range(T):
        others = np.delete(queries, t, axis=0)                       # [T-1, d]
        A_ub = np.hstack([others, np.ones((T - 1, 1))])              # alpha.e_s + delta <= 0
        A_eq = np.append(queries[t], 0.0)[None, :]                   # alpha.e_t = 1
        res = linprog(c, A_ub=A_ub, b_ub=np.zeros(T - 1), A_eq=A_eq, b_eq=[1.0],
                      bounds=[(None, None)] * d + [(None, 1.0)], method="highs")
        if res.status == 0:
            alphas[t], margins[t] = res.x[:d], res.x[-1]
        else:                                                        # infeasible: e_t = 0
            margins[t] = -np.inf
    return margins, alphas


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
    margins, alphas = selection_margins(queries)
    order = np.argsort(-margins, kind="stable")                      # most separable first; the last is the anchor
    head, token = np.full(T, -1), np.zeros(T, dtype=np.int64)
    for k, t in enumerate(order[:T - 1]):
        head[t], token[t] = k // m, 1 + k % m
    assigned = margins[head >= 0]
    pos = assigned[assigned > 0]
    delta = min(float(pos.min()), 1.0) if len(pos) else 1.0
    lam = saturation / delta
    E_pinv = context.T @ np.linalg.inv(context @ context.T)          # [d, n], E E^+ = I_n (Assumption 2)
    W_Q, W_K = np.zeros((H, d, d_head)), np.zeros((H, d, d_head))
    for h in range(H):
        for t in np.flatnonzero(head == h):
            i = token[t]
            W_Q[h, :, i - 1] = lam * alphas[t]
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
        why.append(f"{bad} assigned queries not separable from the others (margin <= 0; "
                   "a repeated query breaks Assumption 1)")
    return Certificate(not why, T, rank, sigma_min, float(sig[0]), tol, err, bad, "; ".join(why))

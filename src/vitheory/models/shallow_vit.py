"""The shallow ViT of Li et al. (ICLR 2023), K independent models as one tensor program.

One single-head self-attention layer followed by a two-layer perceptron and average pooling:

    F(X) = (1/|S|) sum_{l in S} a_(l)^T ReLU( W_O W_V X softmax( X^T W_K^T W_Q x_l ) )

with X in R^{d x L} (here stored row-wise as [L, d]), W_Q, W_K in R^{d_k x d}, W_V in R^{d_v x d},
W_O in R^{m x d_v} and a in R^m.  The softmax runs over the key tokens s of X (all L tokens):
attention from query l to key s is softmax_s(x_s^T W_K^T W_Q x_l).

Project choices (the paper's available sources leave them open; each is a knob of ShallowViTConfig):
* W_O is the first perceptron layer (the slide diagram); S = all L tokens;
* one shared a for all l, entries uniform in {+1/sqrt(m), -1/sqrt(m)}, frozen unless ``train_a``;
* no 1/sqrt(d_k) score scaling unless ``scale_scores``;
* initialisation = pattern-aligned reference + perturbation ("initial model error"):
  W_V = U_v^T + sigma G_V / sqrt(d), where the rows of U_v^T [d_v, d] are an orthonormal basis of the
  pattern span (zero rows beyond M): the value map keeps the pattern coordinates and drops the rest,
  W_Q = W_K = U^T + delta G / sqrt(d), where the rows of U^T [d_k, d] are an orthonormal basis of the
  pattern span (zero rows beyond M), so x_s^T W_K^T W_Q x_l starts near mu(s)^T mu(l);
  ``qk_reference='zero'`` drops U^T (near-uniform attention at the start: W_Q, W_K then start at a
  saddle where their gradients are O(delta) and attention barely moves),
  ``qk_reference='query'`` keeps U^T in W_Q only (W_K = delta G / sqrt(d)): the scores are O(delta), so the
  attention starts near uniform (A(0) ~ alpha_*) as with 'zero', but dscore/dW_K = W_Q x_l x_s^T is O(1):
  not a saddle, the attention learns from the first step,
  W_O ~ N(0, 1/d_v); G are standard Gaussians.

Parameters are stored with a leading model axis K: W_Q [K, d_k, d], W_K [K, d_k, d], W_V [K, d_v, d],
W_O [K, m, d_v], a [K, m].  Each model draws its initial weights from its own generator, so a model
trained inside a batch of K equals the same model trained alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ShallowViTConfig:
    d: int = 16            # token dimension
    m: int = 128           # perceptron width (number of ReLU neurons)
    d_k: int = 16          # query/key dimension
    d_v: int = 16          # value dimension
    train_a: bool = False  # train the output layer a (default: frozen at +-1/sqrt(m))
    scale_scores: bool = False  # divide scores by sqrt(d_k)
    sigma: float = 0.1     # initial error of W_V around the pattern-aligned reference
    delta: float = 0.1     # initial error of W_Q, W_K around their reference
    qk_reference: str = "patterns"  # "patterns" (pattern-aligned), "zero" or "query" (W_Q aligned, W_K ~ 0)


class ShallowViT(nn.Module):
    """K shallow ViTs.  ``forward(X)`` takes X [K, B, L, d] and returns F [K, B]."""

    def __init__(self, cfg: ShallowViTConfig, patterns: torch.Tensor, generators: list[torch.Generator]):
        super().__init__()
        self.cfg = cfg
        K, d, dk, dv, m = len(generators), cfg.d, cfg.d_k, cfg.d_v, cfg.m
        # projection onto the span of the patterns: the "good" value map of the reference
        Q, _ = torch.linalg.qr(patterns.double().T)                      # [d, M] basis of the pattern span

        def coords(rows: int) -> torch.Tensor:                            # [rows, d] pattern coordinates
            U = torch.zeros(rows, d)
            r = min(rows, Q.shape[1])
            U[:r] = Q.T[:r].float()
            return U
        U_q = coords(dk) if cfg.qk_reference in ("patterns", "query") else torch.zeros(dk, d)
        U_k = coords(dk) if cfg.qk_reference == "patterns" else torch.zeros(dk, d)
        P = coords(dv)
        WQ, WK, WV, WO, a = [], [], [], [], []
        for g in generators:
            WQ.append(U_q + cfg.delta * torch.randn(dk, d, generator=g) / d ** 0.5)
            WK.append(U_k + cfg.delta * torch.randn(dk, d, generator=g) / d ** 0.5)
            WV.append(P + cfg.sigma * torch.randn(dv, d, generator=g) / d ** 0.5)
            WO.append(torch.randn(m, dv, generator=g) / dv ** 0.5)
            a.append(torch.where(torch.rand(m, generator=g) < 0.5, 1.0, -1.0) / m ** 0.5)
        self.W_Q = nn.Parameter(torch.stack(WQ))
        self.W_K = nn.Parameter(torch.stack(WK))
        self.W_V = nn.Parameter(torch.stack(WV))
        self.W_O = nn.Parameter(torch.stack(WO))
        self.a = nn.Parameter(torch.stack(a), requires_grad=cfg.train_a)

    @property
    def K(self) -> int:
        return self.W_Q.shape[0]

    def _qkv(self, X: torch.Tensor, P: dict[str, torch.Tensor]):
        # one matmul for W_Q x, W_K x, W_V x: d is the large dimension, so this is most of the cost
        W = torch.cat([P["W_Q"], P["W_K"], P["W_V"]], dim=1)                # [K, 2 d_k + d_v, d]
        qkv = torch.einsum("kbld,ked->kble", X, W)                         # [K,B,L,2 d_k + d_v]
        dk = self.cfg.d_k
        return qkv[..., :dk], qkv[..., dk:2 * dk], qkv[..., 2 * dk:]

    def _softmax_scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        scores = q @ k.transpose(-1, -2)                                  # [K,B,L(query),L(key)]
        if self.cfg.scale_scores:
            scores = scores / self.cfg.d_k ** 0.5
        return scores.softmax(dim=-1)

    def attention(self, X: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """softmax_s(x_s^T W_K^T W_Q x_l): [K, B, L(query l), L(key s)]."""
        q, k, _ = self._qkv(X, self.params() if params is None else params)
        return self._softmax_scores(q, k)

    def token_outputs(self, X: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """a^T ReLU(W_O W_V X softmax(.)) for every query token l: [K, B, L]."""
        P = self.params() if params is None else params
        q, k, v = self._qkv(X, P)                                         # W_Q x_l, W_K x_s, W_V x_s
        z = self._softmax_scores(q, k) @ v                                # [K,B,L,d_v]
        h = torch.relu(torch.einsum("kble,kme->kblm", z, P["W_O"]))      # [K,B,L,m]
        K, B, L, m = h.shape
        # a^T h_l as [K, 1, m] @ [K, m, B L]: the matrix-vector form torch runs fast (the [K, B L, m] @ [K, m, 1]
        # form of einsum("kblm,km->kbl") ran ~8x slower here; same products, other summation order)
        return torch.bmm(P["a"].unsqueeze(1), h.reshape(K, B * L, m).transpose(1, 2)).view(K, B, L)

    def forward(self, X: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.token_outputs(X, params).mean(dim=-1)                 # average pooling over S

    def params(self) -> dict[str, torch.Tensor]:
        return {"W_Q": self.W_Q, "W_K": self.W_K, "W_V": self.W_V, "W_O": self.W_O, "a": self.a}

    def num_parameters(self) -> int:
        """Trainable parameters of ONE model."""
        return sum(p[0].numel() for p in self.parameters() if p.requires_grad)

"""A deeper token ViT for the synthetic data of Li et al. (ICLR 2023): claim S11 ("the trends generalize to
deeper ViTs"), K independent models as one tensor program.

The paper does not state its deeper ViTs (spec section 7, "not stated"), so the architecture is a
[project choice]: D self-attention layers on the token sequence, the first D - 1 residual, the last one
exactly the shallow model's (:mod:`vitheory.models.shallow_vit`):

    H^(0) = X                                                                          X in R^{d x L}
    h_l^(j) = h_l^(j-1) + W_P^(j) W_V^(j) H^(j-1) softmax( H^(j-1)T W_K^(j)T W_Q^(j) h_l^(j-1) ),   j = 1..D-1
    F(X) = (1/|S|) sum_{l in S} a^T ReLU( W_O W_V H^(D-1) softmax( H^(D-1)T W_K^T W_Q h_l^(D-1) ) )

with W_Q^(j), W_K^(j) in R^{d_k x d}, W_V^(j) in R^{d_v x d} (the shallow layer's form) and an output map
W_P^(j) in R^{d x d_v} back to the token space, so that the residual stream keeps each token's identity (the
token categories of X still label the keys of every layer).  W_Q, W_K, W_V, W_O, a of the last layer are the
shallow model's: at D = 1 the model *is* the shallow ViT, F(X) above with H^(0) = X.  There is no LayerNorm
and no per-block MLP (spec 10.8 suggests pre-norm attention + MLP blocks): either would make depth 1 differ
from the paper's model, which is the model every other paper-1 experiment measures.

Initialisation [project choice]: the last layer and the read-out are drawn exactly as
:class:`~vitheory.models.shallow_vit.ShallowViT` draws them (same generator, same order), so a depth-D model
and a depth-1 model of the same seed share their last layer; then, per residual layer j, W_Q^(j), W_K^(j),
W_V^(j) are drawn like the shallow model's (the same ``qk_reference``, ``delta``, ``sigma``) and
W_P^(j) = ``residual_scale`` * U_v, where U_v [d, d_v] is the transpose of the value reference (it maps the
pattern coordinates back into R^d); ``residual_scale = 0`` starts every residual branch at zero (the model then
starts as the shallow one).

Parameters have a leading model axis K: the last layer's as in ShallowViT (W_Q [K, d_k, d], ...), the residual
layers' stacked over j: W_Q_res [K, D-1, d_k, d], W_K_res [K, D-1, d_k, d], W_V_res [K, D-1, d_v, d],
W_P_res [K, D-1, d, d_v] (absent at D = 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vitheory.models.shallow_vit import ShallowViT, ShallowViTConfig

MAX_DEPTH = 16
RESIDUAL = ("W_Q_res", "W_K_res", "W_V_res", "W_P_res")


@dataclass(frozen=True)
class DeepTokenViTConfig:
    head: ShallowViTConfig = ShallowViTConfig()   # the last attention layer and the read-out (the shallow model)
    depth: int = 1                                # number of self-attention layers D
    residual_scale: float = 1.0                   # W_P^(j) = residual_scale * U_v at initialisation


class DeepTokenViT(nn.Module):
    """K deeper token ViTs.  ``forward(X)`` takes X [K, B, L, d] and returns F [K, B]."""

    def __init__(self, cfg: DeepTokenViTConfig, patterns: torch.Tensor, generators: list[torch.Generator]):
        super().__init__()
        if not 1 <= cfg.depth <= MAX_DEPTH:
            raise ValueError(f"depth={cfg.depth} out of range; allowed range: [1, {MAX_DEPTH}]")
        self.cfg = cfg
        # the last layer + read-out first: the same draws, in the same order, as the shallow model
        self.head = ShallowViT(cfg.head, patterns, generators)
        h = cfg.head
        d, dk, dv, R = h.d, h.d_k, h.d_v, cfg.depth - 1
        if R == 0:
            return
        Qb, _ = torch.linalg.qr(patterns.double().T)                     # [d, M] basis of the pattern span

        def coords(rows: int) -> torch.Tensor:                            # [rows, d] pattern coordinates
            U = torch.zeros(rows, d)
            r = min(rows, Qb.shape[1])
            U[:r] = Qb.T[:r].float()
            return U
        U_q = coords(dk) if h.qk_reference in ("patterns", "query") else torch.zeros(dk, d)
        U_k = coords(dk) if h.qk_reference == "patterns" else torch.zeros(dk, d)
        P = coords(dv)                                                    # [d_v, d] value reference
        WQ, WK, WV, WP = [], [], [], []
        for g in generators:
            q, k, v, p = [], [], [], []
            for _ in range(R):
                q.append(U_q + h.delta * torch.randn(dk, d, generator=g) / d ** 0.5)
                k.append(U_k + h.delta * torch.randn(dk, d, generator=g) / d ** 0.5)
                v.append(P + h.sigma * torch.randn(dv, d, generator=g) / d ** 0.5)
                p.append(cfg.residual_scale * P.T.clone())
            WQ.append(torch.stack(q))
            WK.append(torch.stack(k))
            WV.append(torch.stack(v))
            WP.append(torch.stack(p))
        self.W_Q_res = nn.Parameter(torch.stack(WQ))                      # [K, R, d_k, d]
        self.W_K_res = nn.Parameter(torch.stack(WK))                      # [K, R, d_k, d]
        self.W_V_res = nn.Parameter(torch.stack(WV))                      # [K, R, d_v, d]
        self.W_P_res = nn.Parameter(torch.stack(WP))                      # [K, R, d, d_v]

    @property
    def K(self) -> int:
        return self.head.K

    @property
    def depth(self) -> int:
        return self.cfg.depth

    def params(self) -> dict[str, torch.Tensor]:
        P = dict(self.head.params())
        if self.depth > 1:
            P.update({k: getattr(self, k) for k in RESIDUAL})
        return P

    def _residual(self, H: torch.Tensor, P: dict[str, torch.Tensor], j: int):
        """Residual layer j (0-based): (H + W_P W_V H softmax(.), attention [K,B,L,L])."""
        W = torch.cat([P["W_Q_res"][:, j], P["W_K_res"][:, j], P["W_V_res"][:, j]], dim=1)  # [K, 2 d_k + d_v, d]
        qkv = torch.einsum("kbld,ked->kble", H, W)                                          # [K,B,L,2 d_k + d_v]
        dk = self.cfg.head.d_k
        attn = self.head._softmax_scores(qkv[..., :dk], qkv[..., dk:2 * dk])                # [K,B,L(q),L(key)]
        z = attn @ qkv[..., 2 * dk:]                                                        # [K,B,L,d_v]
        return H + torch.einsum("kble,kde->kbld", z, P["W_P_res"][:, j]), attn

    def hidden(self, X: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """H^(D-1), the input of the last layer: [K, B, L, d] (X itself at D = 1)."""
        P = self.params() if params is None else params
        H = X
        for j in range(self.depth - 1):
            H, _ = self._residual(H, P, j)
        return H

    def attention_layers(self, X: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> list[torch.Tensor]:
        """The attention of every layer j = 1..D (the last one feeds the read-out): D tensors [K, B, L, L]."""
        P = self.params() if params is None else params
        H, out = X, []
        for j in range(self.depth - 1):
            H, attn = self._residual(H, P, j)
            out.append(attn)
        out.append(self.head.attention(H, P))
        return out

    def attention(self, X: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The last layer's attention softmax_s(h_s^T W_K^T W_Q h_l): [K, B, L(query l), L(key s)]."""
        P = self.params() if params is None else params
        return self.head.attention(self.hidden(X, P), P)

    def forward(self, X: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        P = self.params() if params is None else params
        return self.head(self.hidden(X, P), P)                             # [K, B]

    def num_parameters(self) -> int:
        """Trainable parameters of ONE model."""
        return sum(p[0].numel() for p in self.parameters() if p.requires_grad)

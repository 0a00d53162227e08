"""The CNN baseline of Proposition 1 (Li et al., ICLR 2023), K models as one tensor program.

The paper's CNN is not stated in its available sources.  Project choice: a 1-D convolution over the
token sequence with kernel size r and stride 1, ReLU, average pooling and a fixed output layer --
the ViT's perceptron with the attention replaced by a local, data-independent window:

    F(X) = (1/(L-r+1)) sum_{p} a^T ReLU( W [x_p; x_{p+1}; ...; x_{p+r-1}] ),   W in R^{m_c x r d}

a is frozen at +-1/sqrt(m_c) as in the ViT; W ~ N(0, 1/(r d)).  The width m_c is chosen so that the
CNN has about as many trainable parameters as the ViT it is compared with (``matched_width``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class CNNConfig:
    d: int = 16
    m: int = 128        # number of filters
    kernel: int = 3     # window size r over the token sequence


def matched_width(n_params: int, d: int, kernel: int) -> int:
    """Filters m_c such that m_c * r * d ~ n_params (the ViT's trainable parameter count)."""
    return max(1, round(n_params / (kernel * d)))


class TokenCNN(nn.Module):
    """K CNNs.  ``forward(X)`` takes X [K, B, L, d] and returns F [K, B]."""

    def __init__(self, cfg: CNNConfig, generators: list[torch.Generator]):
        super().__init__()
        self.cfg = cfg
        rd = cfg.kernel * cfg.d
        W, a = [], []
        for g in generators:
            W.append(torch.randn(cfg.m, rd, generator=g) / rd ** 0.5)
            a.append(torch.where(torch.rand(cfg.m, generator=g) < 0.5, 1.0, -1.0) / cfg.m ** 0.5)
        self.W = nn.Parameter(torch.stack(W))                      # [K, m, r d]
        self.a = nn.Parameter(torch.stack(a), requires_grad=False)  # [K, m]

    def params(self) -> dict[str, torch.Tensor]:
        return {"W": self.W, "a": self.a}

    def forward(self, X: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        P = self.params() if params is None else params
        K, B, L, d = X.shape
        r = self.cfg.kernel
        # W [x_p; ...; x_{p+r-1}] = sum_j W_j x_{p+j}: project every token once per offset j instead of
        # materialising the [K, B, L-r+1, r d] windows (a large copy when d is large)
        Wj = P["W"].view(K, -1, r, d)                                       # [K, m, r, d]
        proj = torch.einsum("kbld,kmjd->kbljm", X, Wj)                      # [K,B,L,r,m]
        pre = sum(proj[:, :, j:L - r + 1 + j, j] for j in range(r))         # [K,B,L-r+1,m]
        h = torch.relu(pre)
        return torch.einsum("kbpm,km->kbp", h, P["a"]).mean(-1)

    def num_parameters(self) -> int:
        return self.W[0].numel()

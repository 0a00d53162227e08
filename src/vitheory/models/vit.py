"""A plain-torch Vision Transformer of configurable depth (S10, S11; shallow_vit.md sections 7, 10.7, 10.8).

    X_0 = [x_cls; P x_1; ...; P x_n] + E_pos                      (patch embedding, [CLS], learned positions)
    X_l' = X_{l-1} + W_O softmax(Q K^T / sqrt(d_h)) V,  Q, K, V = LN_1(X_{l-1}) W_{Q,K,V}   (per head)
    X_l  = X_l' + W_2 GELU(W_1 LN_2(X_l'))                        (pre-norm blocks, l = 1..L)
    f(X) = W_head LN(X_L)[CLS]

Layout and numerics follow transformers' ``ViTModel`` (exact GELU, LayerNorm eps from its config, biases on the
Q/K/V projections) so that :meth:`ViT.from_transformers` reproduces its ``last_hidden_state``.  The split
``forward_features`` (tokens ``[B, 1+n, D]`` after the final norm) / ``forward_head`` follows timm.
Attention uses :func:`torch.nn.functional.scaled_dot_product_attention` unless the maps are asked for.

Token sparsification (S9 on images): ``keep`` patch-token indices ``[B, K]`` drop all other patch tokens right
after the embedding (the [CLS] token is always kept); :func:`select_tokens` chooses them by the [CLS] attention
of the first block, by an oracle mask of label-relevant tokens, or at random.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vitheory.config import ConfigError


class Block(nn.Module):
    """One pre-norm encoder block: multi-head self-attention then an MLP, each with a residual."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, eps: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)

    def attend(self, x: torch.Tensor, need_maps: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if need_maps:  # explicit softmax: maps [B, H, T, T]
            a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // self.heads), dim=-1)
            o = a @ v
        else:
            a, o = None, F.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(B, T, D)), a

    def forward(self, x: torch.Tensor, need_maps: bool = False):
        h, a = self.attend(x, need_maps)
        x = x + h
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return x, a


class ViT(nn.Module):
    """ViT classifier: ``image_size`` divisible by ``patch_size``; ``dim`` divisible by ``heads``."""

    def __init__(self, image_size: int = 96, patch_size: int = 16, in_chans: int = 3, num_classes: int = 10,
                 dim: int = 64, depth: int = 1, heads: int = 4, mlp_ratio: float = 2.0, eps: float = 1e-6):
        super().__init__()
        for name, v in (("image_size", image_size), ("patch_size", patch_size), ("in_chans", in_chans),
                        ("num_classes", num_classes), ("dim", dim), ("depth", depth), ("heads", heads)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name}={v!r} is out of range; allowed range: [1, inf) (an integer)")
        if image_size % patch_size:
            raise ConfigError(f"patch_size={patch_size} must divide image_size={image_size}")
        if dim % heads:
            raise ConfigError(f"heads={heads} must divide dim={dim}")
        if not mlp_ratio > 0:
            raise ConfigError(f"mlp_ratio={mlp_ratio} is out of range; allowed range: (0, inf)")
        self.patch_size, self.n_patches = patch_size, (image_size // patch_size) ** 2
        self.patch = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 1 + self.n_patches, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, max(1, round(dim * mlp_ratio)), eps) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.head = nn.Linear(dim, num_classes)

    def embed(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Pixels ``[B, C, H, W]`` -> tokens ``[B, 1+n, D]`` (or ``[B, 1+K, D]`` with ``keep [B, K]``)."""
        p = self.patch(x).flatten(2).transpose(1, 2) + self.pos[:, 1:]  # [B, n, D]
        if keep is not None:
            p = torch.gather(p, 1, keep.unsqueeze(-1).expand(-1, -1, p.shape[-1]))
        return torch.cat([(self.cls + self.pos[:, :1]).expand(len(x), -1, -1), p], dim=1)

    def forward_features(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        t = self.embed(x, keep)
        for b in self.blocks:
            t, _ = b(t)
        return self.norm(t)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats[:, 0])

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, keep))

    def attention_maps(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Every layer's attention ``[B, heads, T, T]`` (row = query), ``T = 1 + tokens``."""
        t, maps = self.embed(x, keep), []
        for b in self.blocks:
            t, a = b(t, need_maps=True)
            maps.append(a)
        return maps

    @classmethod
    def from_transformers(cls, model, num_classes: int = 10) -> "ViT":
        """Our model with the weights of a transformers ``ViTModel`` (a fresh head of ``num_classes``)."""
        c = model.config
        if c.hidden_act != "gelu" or not getattr(c, "qkv_bias", True):
            raise ConfigError(f"from_transformers: needs hidden_act='gelu' and qkv_bias=True, "
                              f"found {c.hidden_act!r}, {getattr(c, 'qkv_bias', None)!r}")
        im = c.image_size if isinstance(c.image_size, int) else c.image_size[0]
        ps = c.patch_size if isinstance(c.patch_size, int) else c.patch_size[0]
        out = cls(im, ps, c.num_channels, num_classes, c.hidden_size, c.num_hidden_layers,
                  c.num_attention_heads, c.intermediate_size / c.hidden_size, c.layer_norm_eps)
        s = model.state_dict()
        new = {"patch.weight": s["embeddings.patch_embeddings.projection.weight"],
               "patch.bias": s["embeddings.patch_embeddings.projection.bias"],
               "pos": s["embeddings.position_embeddings"],
               "norm.weight": s["layernorm.weight"], "norm.bias": s["layernorm.bias"],
               "head.weight": out.head.weight.detach(), "head.bias": out.head.bias.detach()}
        new["cls"] = s["embeddings.cls_token"]  # both add pos[:, 0] to it
        for i in range(c.num_hidden_layers):
            p, q = f"layers.{i}.", f"blocks.{i}."
            if p + "attention.q_proj.weight" not in s:  # older transformers naming
                raise ConfigError("from_transformers: unsupported ViTModel parameter names")
            new[q + "qkv.weight"] = torch.cat([s[p + f"attention.{n}_proj.weight"] for n in "qkv"])
            new[q + "qkv.bias"] = torch.cat([s[p + f"attention.{n}_proj.bias"] for n in "qkv"])
            pairs = (("proj", "attention.o_proj"), ("norm1", "layernorm_before"), ("norm2", "layernorm_after"),
                     ("fc1", "mlp.fc1"), ("fc2", "mlp.fc2"))
            for a, b in pairs:
                new[q + a + ".weight"], new[q + a + ".bias"] = s[p + b + ".weight"], s[p + b + ".bias"]
        out.load_state_dict(new)
        return out


RULES = ("cls_attention", "oracle", "random")


def select_tokens(model: ViT, x: torch.Tensor, keep: int, rule: str, relevant: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices ``[B, keep]`` (sorted) of the patch tokens to keep.

    ``cls_attention``: the ``keep`` tokens with the largest [CLS] attention of the first block (mean over heads);
    ``oracle``: label-relevant tokens first (``relevant [B, n]`` bool), ties broken at random;
    ``random``: uniform."""
    n = model.n_patches
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= n:
        raise ConfigError(f"keep={keep!r} is out of range; allowed range: 1..{n} (the number of patch tokens)")
    if rule not in RULES:
        raise ConfigError(f"rule={rule!r} is not one of {', '.join(RULES)}")
    noise = torch.rand(len(x), n, generator=generator)
    if rule == "cls_attention":
        with torch.no_grad():
            _, a = model.blocks[0](model.embed(x), need_maps=True)
        score = a[:, :, 0, 1:].mean(1)  # [B, n]
    elif rule == "oracle":
        if relevant is None or tuple(relevant.shape) != (len(x), n):
            raise ConfigError(f"rule='oracle' needs relevant of shape ({len(x)}, {n})")
        score = relevant.float() + 0.5 * noise
    else:
        score = noise
    return torch.topk(score, keep, dim=1).indices.sort(dim=1).values

"""One multi-head attention layer for the memorization experiments, K independent models as one tensor program.

Re-implemented from the description of the official code of Mahdavi, Liao, Thrampoulidis (ICLR 2024) in
``../shared/papers/mha_memorization.md`` section 4.2 (V2 semantics); no code of that repository is used.

The model, for one example X = [e; E] in R^{(n+1) x d_in} (token 0 = the query e, tokens 1..n = the context E):

    x_p   = X_p W_E + b_E + pe_p                                   input map + sinusoidal position, p = 0..n
    s_hp  = (x_0 W_Q^h) (x_p W_K^h)^T / sqrt(d_model)              score of the query against token p, head h
    a_h   = softmax_p( s_hp + m_p ),   m_0 = -inf, m_p = 0 (p >= 1)   the query never attends to itself
    z_h   = sum_p a_hp  x_p W_V^h                                  in R^{d_v}       (d_v = 1 by default)
    o     = sum_h z_h W_O^h                                        in R^{d_model}
    f(X)  = o W_U + b_U                                            class logits (or one regression output)

Only the query position is scored (loss and accuracy), so only the query row a_h of each head's attention
matrix is ever needed: ``forward_query_row`` computes exactly that.  ``forward_full`` computes the full
(n+1) x (n+1) attention of every position with the -inf mask on column 0, as the official code does, and
reads position 0; a test checks the two agree.  Because the official layer has no residual, LayerNorm or MLP,
position 0's output depends on the other rows of the attention matrix not at all.

Weights (TransformerLens layout, plus a leading model axis K):

    W_E [K, d_in, d_model]   b_E [K, d_model]         input map (a Linear with bias)
    W_Q [K, H, d_model, d_head]   W_K [K, H, d_model, d_head]
    W_V [K, H, d_model, d_v]      W_O [K, H, d_v, d_model]     no biases
    W_U [K, d_model, n_out]  b_U [K, n_out]           read-out (a Linear with bias)

Defaults that match the official code, each a constructor argument: d_model = d_in, d_v = 1, score scale
1 / sqrt(d_model) (``score_scale="d_head"`` gives 1 / sqrt(d_head)), Xavier-uniform per head for W_Q, W_K, W_V,
Xavier-uniform of the stacked [H d_v, d_model] matrix for W_O, PyTorch's Linear init for W_E, b_E, W_U, b_U.

``mask="v1"`` reproduces the arXiv-v1 code's bug for comparison only: the mask multiplied the scores, so the
masked score became 0 instead of -inf and the query kept weight exp(0) on itself.  It is never the default.

Batching: model k draws its initial weights from its own generator, so a model inside a batch of K starts from
the same weights as alone.  ``heads_active`` lets models with fewer heads share a batch with larger ones: the
extra heads are zero and their outputs are multiplied by 0, so they receive zero gradient and Adam leaves them
at zero.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from vitheory.seeding import generator

MASKS = ("v2", "v1")
SCORE_SCALES = ("d_model", "d_head")


# ------------------------------------------------------------------------------------------------------------
# sinusoidal positions
# ------------------------------------------------------------------------------------------------------------
def sinusoidal_positions(n_pos: int, d_model: int) -> torch.Tensor:
    """[n_pos, d_model]: pe[p, 2i] = sin(p / 10000^(2i/d_model)), pe[p, 2i+1] = cos(p / 10000^(2i/d_model))."""
    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]                       # [P, 1]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    pe = torch.zeros(n_pos, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : d_model // 2]
    return pe.float()


class _RowSoftmax(torch.autograd.Function):
    """softmax over the last axis with the textbook backward, dy -> y * (dy - sum(dy * y)).

    Same values as torch.softmax; used on the CPU, where PyTorch's softmax kernel is about 5x slower than
    these elementwise ops for the short rows (n keys) of this model (measured, torch 2.13, one thread).
    """

    @staticmethod
    def forward(ctx, x):
        e = (x - x.amax(-1, keepdim=True)).exp_()
        y = e.div_(e.sum(-1, keepdim=True))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        return y * (dy - (dy * y).sum(-1, keepdim=True))


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis (rows of -inf entries get weight exactly 0)."""
    return torch.softmax(x, dim=-1) if x.is_cuda else _RowSoftmax.apply(x)


def attention_param_count(H: int, d_model: int, d_head: int, d_v: int = 1) -> int:
    """Parameters of the attention layer alone: H (2 d_model d_head + 2 d_model d_v) (claim C12)."""
    return H * (2 * d_model * d_head + 2 * d_model * d_v)


# ------------------------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------------------------
class BatchedMHA(nn.Module):
    """K one-layer multi-head attention models.

    forward_query_row(queries, context) -> logits [K, B, n_out]   (the fast path used for training)
    forward_full(queries, context)      -> logits [K, B, n_out]   (full attention, for tests and benchmarks)

    queries: [K, B, d_in]; context: [K, n, d_in] (one shared context per model) or [K, B, n, d_in].
    """

    def __init__(self, *, n_ctx: int, d_in: int, n_heads: int, d_head: int, n_out: int,
                 generators: Sequence[torch.Generator], d_model: int | None = None, d_v: int = 1,
                 score_scale: str = "d_model", mask: str = "v2",
                 heads_active: Sequence[int] | None = None):
        super().__init__()
        if mask not in MASKS:
            raise ValueError(f"mask={mask!r}; choose one of {', '.join(MASKS)}")
        if score_scale not in SCORE_SCALES:
            raise ValueError(f"score_scale={score_scale!r}; choose one of {', '.join(SCORE_SCALES)}")
        K, H = len(generators), n_heads
        dm = d_in if d_model is None else d_model
        heads_active = [H] * K if heads_active is None else list(heads_active)
        if len(heads_active) != K or not all(1 <= h <= H for h in heads_active):
            raise ValueError(f"heads_active must give K={K} head counts in [1, {H}]")
        self.K, self.n_ctx, self.d_in, self.d_model, self.n_heads = K, n_ctx, d_in, dm, H
        self.d_head, self.d_v, self.n_out, self.mask, self.score_scale = d_head, d_v, n_out, mask, score_scale
        self.scale = 1.0 / math.sqrt(dm if score_scale == "d_model" else d_head)

        def xavier(g, fan_in, fan_out, *shape):
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            return (torch.rand(*shape, generator=g) * 2 - 1) * bound

        def linear(g, fan_in, *shape):            # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            return (torch.rand(*shape, generator=g) * 2 - 1) / math.sqrt(fan_in)

        def pad_heads(w, h):                       # [h, ...] -> [H, ...] with zero heads appended
            return torch.cat([w, w.new_zeros((H - h,) + tuple(w.shape[1:]))]) if h < H else w

        W_E, b_E, W_Q, W_K, W_V, W_O, W_U, b_U = ([] for _ in range(8))
        for g, h in zip(generators, heads_active):
            W_E.append(linear(g, d_in, d_in, dm))
            b_E.append(linear(g, d_in, dm))
            W_Q.append(pad_heads(xavier(g, dm, d_head, h, dm, d_head), h))
            W_K.append(pad_heads(xavier(g, dm, d_head, h, dm, d_head), h))
            W_V.append(pad_heads(xavier(g, dm, d_v, h, dm, d_v), h))
            W_O.append(pad_heads(xavier(g, h * d_v, dm, h, d_v, dm), h))
            W_U.append(linear(g, dm, dm, n_out))
            b_U.append(linear(g, dm, n_out))
        self.W_E = nn.Parameter(torch.stack(W_E))          # [K, d_in, d_model]
        self.b_E = nn.Parameter(torch.stack(b_E))          # [K, d_model]
        self.W_Q = nn.Parameter(torch.stack(W_Q))          # [K, H, d_model, d_head]
        self.W_K = nn.Parameter(torch.stack(W_K))          # [K, H, d_model, d_head]
        self.W_V = nn.Parameter(torch.stack(W_V))          # [K, H, d_model, d_v]
        self.W_O = nn.Parameter(torch.stack(W_O))          # [K, H, d_v, d_model]
        self.W_U = nn.Parameter(torch.stack(W_U))          # [K, d_model, n_out]
        self.b_U = nn.Parameter(torch.stack(b_U))          # [K, n_out]
        self.register_buffer("pos", sinusoidal_positions(n_ctx + 1, dm))                       # [n+1, d_model]
        self.register_buffer("head_mask", (torch.arange(H)[None, :] < torch.tensor(heads_active)[:, None]).float())
        self.heads_active = heads_active                                                       # head_mask [K, H]

    # --------------------------------------------------------------------------------------------------------
    def take(self, idx: Sequence[int] | torch.Tensor) -> "BatchedMHA":
        """A new BatchedMHA holding copies of the models at positions ``idx`` (used to drop finished models)."""
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.W_E.device)
        new = BatchedMHA.__new__(BatchedMHA)
        nn.Module.__init__(new)
        for key in ("n_ctx", "d_in", "d_model", "n_heads", "d_head", "d_v", "n_out", "mask", "score_scale", "scale"):
            setattr(new, key, getattr(self, key))
        new.K = len(idx)
        new.heads_active = [self.heads_active[i] for i in idx.tolist()]
        for name, p in self.named_parameters():
            setattr(new, name, nn.Parameter(p.detach()[idx].clone()))
        new.register_buffer("pos", self.pos.clone())
        new.register_buffer("head_mask", self.head_mask[idx].clone())
        return new

    def embed(self, tokens: torch.Tensor, positions: slice | int) -> torch.Tensor:
        """tokens [K, ..., P, d_in] (or [K, ..., d_in] for one position) -> X W_E + b_E + pe."""
        K = self.K
        lead = tokens.shape[1:-1]
        flat = tokens.reshape(K, -1, self.d_in)                                   # [K, M, d_in]
        x = torch.baddbmm(self.b_E[:, None, :], flat, self.W_E)                   # [K, M, d_model]
        return x.reshape((K,) + lead + (self.d_model,)) + self.pos[positions]

    # --------------------------------------------------------------------------------------------------------
    # the fast path: only the query row of attention
    # --------------------------------------------------------------------------------------------------------
    def forward_query_row(self, queries: torch.Tensor, context: torch.Tensor, return_attn: bool = False):
        """Logits at the query position, computing only the query row of each head's attention.

        Shared context ([K, n, d_in]): the context's keys and values are the same for every example, so they
        are computed once per call, and the per-head products A_h = W_Q^h (X_c W_K^h)^T are formed once:
            s_h = x_0 A_h / sqrt(d)                               [K, B, H, n]
        Per-example context ([K, B, n, d_in]): the keys are never formed; with the per-head bilinear form
        W_QK^h = W_Q^h W_K^hT (d_model x d_model, formed once per call)
            s_hp = (x_0 W_QK^h) . x_p / sqrt(d),    z_h = sum_p a_hp (x_p W_V^h),
        so the only per-example products are the n dot products per head (d_v = 1 makes z a weighted sum).
        ``return_attn`` also returns the query row of attention, [K, B, H, n] over the context tokens
        (v1 mask: [K, B, H, n+1], column 0 = the query itself).
        """
        x0 = self.embed(queries, 0)                                               # [K, B, d_model]
        n = context.shape[-2]
        xc = self.embed(context, slice(1, n + 1))                                  # [K, n, dm] or [K, B, n, dm]
        if context.dim() == 3:                                                     # shared context
            keys = torch.einsum("knm,khmd->khnd", xc, self.W_K)                   # [K, H, n, d_head]
            A = torch.einsum("khmd,khnd->khmn", self.W_Q, keys) * self.scale       # [K, H, d_model, n]
            scores = torch.einsum("kbm,khmn->kbhn", x0, A)                         # [K, B, H, n]
            values = torch.einsum("knm,khmv->khnv", xc, self.W_V)                  # [K, H, n, d_v]
        else:                                                                      # one context per example
            K, B, H, dm, dv = x0.shape[0], x0.shape[1], self.n_heads, self.d_model, self.d_v
            W_QK = torch.einsum("khmd,khed->kmhe", self.W_Q, self.W_K) * self.scale   # [K, d_model, H, d_model]
            u = torch.bmm(x0, W_QK.reshape(K, dm, H * dm)).view(K, B, H, dm)         # x_0 W_QK^h
            scores = torch.matmul(u, xc.transpose(-1, -2))                           # [K, B, H, n]
            W_V = self.W_V.permute(0, 2, 1, 3).reshape(K, dm, H * dv)                # [K, d_model, H d_v]
            v = torch.bmm(xc.reshape(K, B * n, dm), W_V).view(K, B, n, H, dv)        # x_p W_V^h
            values = None
        if self.mask == "v1":                                                     # comparison only
            scores = torch.cat([scores.new_zeros(scores.shape[:-1] + (1,)), scores], dim=-1)  # s_h0 = 0
        attn = softmax(scores)                                                     # [K, B, H, n(+1)]
        ctx_attn = attn[..., 1:] if self.mask == "v1" else attn
        if values is not None:
            z = torch.einsum("kbhn,khnv->kbhv", ctx_attn, values)                  # [K, B, H, d_v]
        else:
            z = (ctx_attn.transpose(2, 3)[..., None] * v).sum(2)                   # [K, B, H, d_v]
        if self.mask == "v1":
            z = z + attn[..., :1] * torch.einsum("kbm,khmv->kbhv", x0, self.W_V)  # + a_h0 (x_0 W_V^h)
        logits = self._readout(z)
        return (logits, attn) if return_attn else logits

    # --------------------------------------------------------------------------------------------------------
    # the reference path: full (n+1) x (n+1) attention, as the official code computes it
    # --------------------------------------------------------------------------------------------------------
    def forward_full(self, queries: torch.Tensor, context: torch.Tensor, return_attn: bool = False):
        """Logits at position 0 from full attention over all n+1 positions, with the mask on column 0.

        ``return_attn`` also returns the full attention, [K, B, H, n+1, n+1] (rows = queries, columns = keys).
        """
        K, B = queries.shape[:2]
        if context.dim() == 3:
            context = context[:, None].expand(K, B, -1, -1)
        X = torch.cat([queries[:, :, None, :], context], dim=2)                   # [K, B, n+1, d_in]
        x = self.embed(X, slice(0, X.shape[2]))                                   # [K, B, n+1, d_model]
        Q = torch.einsum("kbpm,khmd->kbhpd", x, self.W_Q)                          # [K, B, H, n+1, d_head]
        Kt = torch.einsum("kbpm,khmd->kbhpd", x, self.W_K)                         # [K, B, H, n+1, d_head]
        V = torch.einsum("kbpm,khmv->kbhpv", x, self.W_V)                          # [K, B, H, n+1, d_v]
        scores = torch.einsum("kbhpd,kbhqd->kbhpq", Q, Kt) * self.scale            # [K, B, H, n+1, n+1]
        col0 = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
        col0[0] = True
        if self.mask == "v2":
            scores = scores.masked_fill(col0, float("-inf"))                       # no one attends to the query
        else:
            scores = scores * (~col0).to(scores.dtype)                             # v1 bug: masked score = 0
        attn = softmax(scores)
        z = torch.einsum("kbhpq,kbhqv->kbhpv", attn, V)                            # [K, B, H, n+1, d_v]
        logits = self._readout(z[:, :, :, 0])                                      # read position 0
        return (logits, attn) if return_attn else logits

    def _readout(self, z: torch.Tensor) -> torch.Tensor:
        """z [K, B, H, d_v] -> logits [K, B, n_out]: o = sum_h z_h W_O^h, f = o W_U + b_U."""
        z = z * self.head_mask[:, None, :, None]                                   # padded heads output 0
        o = torch.einsum("kbhv,khvm->kbm", z, self.W_O)                            # [K, B, d_model]
        return torch.baddbmm(self.b_U[:, None, :], o, self.W_U)                    # [K, B, n_out]

    forward = forward_query_row


def model_generators(seeds: Sequence[int], tag: str = "mha-init") -> list[torch.Generator]:
    """One CPU generator per model, seeded from the model's seed (:func:`vitheory.seeding.generator`)."""
    return [generator(s, tag) for s in seeds]

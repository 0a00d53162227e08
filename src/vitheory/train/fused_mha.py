"""Hand-fused training step of K query-row attention models: forward, a hand-written backward and Adam on one
flat parameter buffer (issue 14; the default kernel of :func:`vitheory.train.memorize.memorize`).

Same model and arithmetic as :meth:`vitheory.models.mha.BatchedMHA.forward_query_row` (V2 mask) trained with
autograd and :class:`~vitheory.train.memorize.BatchedAdam` -- a test checks the gradients against autograd and
whole trainings against the autograd kernel -- but with far fewer tensor operations per step: on the CPU these
small programs are dominated by per-operation costs (autograd bookkeeping, einsum permutes, PyTorch's
cross-entropy, one Adam update per parameter tensor), not by arithmetic.

Notation (one model; K models run as one batch of matrix products): x_0 = e W_E + b_E + pe_0 (query),
x_p = E_p W_E + b_E + pe_p (context), s = 1/sqrt(d_model) (or 1/sqrt(d_h)).

Shared context (E the same for every example): per step, once per model,
    keys_h = X_c W_K^h [n, d_h];  A_h = s W_Q^h keys_h^T [d, n];  VO_h = (X_c W_V^h) W_O^h [n, d]
and per example  S_h = x_0 A_h,  a_h = softmax(S_h),  o = sum_h a_h VO_h,  f = o W_U + b_U.
Per-example context:
    W_QK^h = s W_Q^h W_K^hT [d, d];  u_h = x_0 W_QK^h;  S_hp = u_h . x_p;  z_h = sum_p a_hp x_p W_V^h;
    o = sum_h z_h W_O^h;  f = o W_U + b_U.
Loss: cross-entropy (classification) or squared error (regression) of f, averaged over the minibatch (weights for
padded rows); the gradient of the mean cross-entropy with respect to f is (softmax(f) - onehot(y)) / B, of the
squared error 2 (f - y) / B; the backward applies the chain rule through the products above
(d softmax: dS = a * (da - sum_p a_p da_p)).
"""
from __future__ import annotations

import math

import torch

from vitheory.models.mha import BatchedMHA

#: parameter order in the flat buffer (BatchedMHA's names and per-model shapes)
NAMES = ("W_E", "b_E", "W_Q", "W_K", "W_V", "W_O", "W_U", "b_U")


class FusedMHA:
    """K models' parameters in one flat buffer ``p`` [K, P] with Adam state; ``step`` trains one minibatch."""

    def __init__(self, model: BatchedMHA, p: torch.Tensor | None = None, betas=(0.9, 0.999), eps=1e-8):
        if model.mask != "v2":
            raise ValueError("FusedMHA implements the v2 mask only")
        self.template = model
        self.K, self.n_heads, self.d_model, self.d_head, self.d_v = (model.K, model.n_heads, model.d_model,
                                                                      model.d_head, model.d_v)
        self.n_out, self.scale = model.n_out, model.scale
        self.shapes = {name: tuple(getattr(model, name).shape[1:]) for name in NAMES}
        sizes = [math.prod(s) for s in self.shapes.values()]
        self.offsets = dict(zip(NAMES, [sum(sizes[:i]) for i in range(len(sizes))]))
        self.sizes = dict(zip(NAMES, sizes))
        if p is None:
            p = torch.cat([getattr(model, name).detach().reshape(model.K, -1) for name in NAMES], dim=1).clone()
        self.p = p
        self.m = torch.zeros_like(p)
        self.v = torch.zeros_like(p)
        self.t = 0
        self.betas, self.eps = betas, eps
        self.head_mask = model.head_mask.to(p.dtype)                                     # [K, H]
        self.pos = model.pos.to(p.dtype)                                                 # [n+1, d_model]

    # ----------------------------------------------------------------------------------------------------
    def view(self, name: str, p: torch.Tensor | None = None) -> torch.Tensor:
        p = self.p if p is None else p
        o = self.offsets[name]
        return p[:, o: o + self.sizes[name]].view((p.shape[0],) + self.shapes[name])

    def take(self, idx: torch.Tensor) -> "FusedMHA":
        new = FusedMHA.__new__(FusedMHA)
        new.__dict__.update(self.__dict__)
        new.p, new.m, new.v = self.p[idx].clone(), self.m[idx].clone(), self.v[idx].clone()
        new.head_mask = self.head_mask[idx]
        new.K = len(idx)
        return new

    @torch.no_grad()
    def write_rows(self, dst: BatchedMHA, src_rows: list[int], dst_rows: list[int]) -> None:
        """Copy models ``src_rows`` of this buffer into models ``dst_rows`` of ``dst``."""
        s = torch.as_tensor(src_rows, dtype=torch.long, device=self.p.device)
        d = torch.as_tensor(dst_rows, dtype=torch.long, device=dst.W_E.device)
        for name in NAMES:
            getattr(dst, name).data[d] = self.view(name)[s].to(getattr(dst, name).dtype)

    # ----------------------------------------------------------------------------------------------------
    def forward(self, q: torch.Tensor, ctx: torch.Tensor, cache: bool = False):
        """q [K, B, d_in]; ctx [K, n, d_in] (shared) or [K, B, n, d_in] -> logits [K, B, n_out] (and a cache)."""
        K, B, _ = q.shape
        H, dm, dv = self.n_heads, self.d_model, self.d_v
        n = ctx.shape[-2]
        W_E, b_E = self.view("W_E"), self.view("b_E")
        W_Q, W_K, W_V, W_O = self.view("W_Q"), self.view("W_K"), self.view("W_V"), self.view("W_O")
        W_U, b_U = self.view("W_U"), self.view("b_U")
        x0 = torch.baddbmm((b_E + self.pos[0])[:, None, :], q, W_E)                     # [K, B, dm]
        c = {"q": q, "ctx": ctx, "x0": x0}
        if ctx.dim() == 3:                                                               # shared context
            xc = torch.baddbmm(b_E[:, None, :] + self.pos[1: n + 1], ctx, W_E)           # [K, n, dm]
            keys = torch.matmul(xc[:, None], W_K)                                        # [K, H, n, dh]
            A = torch.matmul(W_Q, keys.transpose(-1, -2)).mul_(self.scale)               # [K, H, dm, n]
            Af = A.permute(0, 2, 1, 3).reshape(K, dm, H * n)                             # [K, dm, H n]
            vals = torch.matmul(xc[:, None], W_V)                                        # [K, H, n, dv]
            VO = torch.matmul(vals, W_O).mul_(self.head_mask[:, :, None, None])          # [K, H, n, dm]
            VOf = VO.reshape(K, H * n, dm)
            S = torch.bmm(x0, Af).view(K, B, H, n)
            attn = _softmax_(S)                                                          # [K, B, H, n]
            o = torch.bmm(attn.view(K, B, H * n), VOf)                                   # [K, B, dm]
            c.update(xc=xc, keys=keys, Af=Af, vals=vals, VOf=VOf, attn=attn)
        else:                                                                            # one context per example
            xc = torch.bmm(ctx.reshape(K, B * n, -1), W_E).view(K, B, n, dm)
            xc = xc.add_((b_E[:, None, :] + self.pos[1: n + 1])[:, None])                # [K, B, n, dm]
            WQK = torch.matmul(W_Q, W_K.transpose(-1, -2)).mul_(self.scale)              # [K, H, dm, dm]
            WQKf = WQK.permute(0, 2, 1, 3).reshape(K, dm, H * dm)
            u = torch.bmm(x0, WQKf)                                                      # [K, B, H dm]
            S = torch.bmm(u.view(K * B, H, dm), xc.view(K * B, n, dm).transpose(1, 2))   # [K B, H, n]
            attn = _softmax_(S).view(K, B, H, n)
            WVf = W_V.permute(0, 2, 1, 3).reshape(K, dm, H * dv)
            vals = torch.bmm(xc.view(K, B * n, dm), WVf).view(K, B, n, H, dv)
            if dv == 1:
                z = (attn * vals[..., 0].transpose(2, 3)).sum(-1, keepdim=True)          # [K, B, H, 1]
            else:
                z = torch.einsum("kbhp,kbphv->kbhv", attn, vals)                         # [K, B, H, dv]
            z = z * self.head_mask[:, None, :, None]
            o = torch.bmm(z.reshape(K, B, H * dv), W_O.reshape(K, H * dv, dm))           # [K, B, dm]
            c.update(xc=xc, WQKf=WQKf, u=u, WVf=WVf, vals=vals, z=z, attn=attn)
        logits = torch.baddbmm(b_U[:, None, :], o, W_U)                                  # [K, B, n_out]
        c["o"] = o
        return (logits, c) if cache else logits

    # ----------------------------------------------------------------------------------------------------
    def grad(self, q, ctx, y, weights, label_kind: str) -> torch.Tensor:
        """Gradient [K, P] of sum_k (mean loss of model k on its minibatch); weights [K, B] or None."""
        logits, c = self.forward(q, ctx, cache=True)
        K, B, _ = q.shape
        cw = (weights / weights.sum(1, keepdim=True))[..., None] if weights is not None else 1.0 / B
        if label_kind == "classification":                                              # (softmax - onehot) cw
            G = logits.sub_(logits.amax(-1, keepdim=True)).exp_()                        # [K, B, C]
            G.mul_(cw / G.sum(-1, keepdim=True))
            neg = (-cw).expand(K, B, 1) if torch.is_tensor(cw) else torch.full_like(G[..., :1], -cw)
            G.scatter_add_(-1, y[..., None], neg.to(G.dtype))
        else:
            G = (logits - y[..., None]).mul_(2.0).mul_(cw)                               # [K, B, 1]
        return self._backward(G, c)

    def _backward(self, G, c) -> torch.Tensor:
        q, ctx, x0, o = c["q"], c["ctx"], c["x0"], c["o"]
        K, B, _ = q.shape
        H, dm, dv, s = self.n_heads, self.d_model, self.d_v, self.scale
        n = ctx.shape[-2]
        W_Q, W_K, W_V, W_O = self.view("W_Q"), self.view("W_K"), self.view("W_V"), self.view("W_O")
        W_U = self.view("W_U")
        g = {"W_U": torch.bmm(o.transpose(1, 2), G), "b_U": G.sum(1)}
        do = torch.bmm(G, W_U.transpose(1, 2))                                           # [K, B, dm]
        attn = c["attn"]
        if ctx.dim() == 3:
            xc, keys, Af, vals, VOf = c["xc"], c["keys"], c["Af"], c["vals"], c["VOf"]
            attn_f = attn.view(K, B, H * n)
            dVO = torch.bmm(attn_f.transpose(1, 2), do).view(K, H, n, dm)
            dVO.mul_(self.head_mask[:, :, None, None])
            da = torch.bmm(do, VOf.transpose(1, 2)).view(K, B, H, n)
            dS = _softmax_backward(attn, da).view(K, B, H * n)
            dA = torch.bmm(x0.transpose(1, 2), dS).view(K, dm, H, n).permute(0, 2, 1, 3)  # [K, H, dm, n]
            dx0 = torch.bmm(dS, Af.transpose(1, 2))                                      # [K, B, dm]
            g["W_Q"] = torch.matmul(dA, keys).mul_(s)                                    # [K, H, dm, dh]
            dkeys = torch.matmul(dA.transpose(-1, -2), W_Q).mul_(s)                      # [K, H, n, dh]
            g["W_O"] = torch.matmul(vals.transpose(-1, -2), dVO)                         # [K, H, dv, dm]
            dvals = torch.matmul(dVO, W_O.transpose(-1, -2))                             # [K, H, n, dv]
            xcT = xc.transpose(1, 2)[:, None]                                            # [K, 1, dm, n]
            g["W_K"] = torch.matmul(xcT, dkeys)
            g["W_V"] = torch.matmul(xcT, dvals)
            dxc = (torch.matmul(dkeys, W_K.transpose(-1, -2)) + torch.matmul(dvals, W_V.transpose(-1, -2))).sum(1)
            g["W_E"] = torch.bmm(q.transpose(1, 2), dx0).add_(torch.bmm(ctx.transpose(1, 2), dxc))
            g["b_E"] = dx0.sum(1).add_(dxc.sum(1))
        else:
            xc, WQKf, u, WVf, vals, z = c["xc"], c["WQKf"], c["u"], c["WVf"], c["vals"], c["z"]
            g["W_O"] = torch.bmm(z.reshape(K, B, H * dv).transpose(1, 2), do).view(K, H, dv, dm)
            dz = torch.bmm(do, W_O.reshape(K, H * dv, dm).transpose(1, 2)).view(K, B, H, dv)
            dz.mul_(self.head_mask[:, None, :, None])
            if dv == 1:
                da = dz * vals[..., 0].transpose(2, 3)                                    # [K, B, H, n]
                dvals = (attn * dz).transpose(2, 3)[..., None]                            # [K, B, n, H, 1]
            else:
                da = torch.einsum("kbhv,kbphv->kbhp", dz, vals)
                dvals = torch.einsum("kbhp,kbhv->kbphv", attn, dz)
            dS = _softmax_backward(attn, da).view(K * B, H, n)
            xcf = xc.view(K * B, n, dm)
            du = torch.bmm(dS, xcf).view(K, B, H * dm)
            dxc = torch.bmm(dS.transpose(1, 2), u.view(K * B, H, dm)).view(K, B * n, dm)
            dWQK = torch.bmm(x0.transpose(1, 2), du).view(K, dm, H, dm).permute(0, 2, 1, 3)  # [K, H, dm, dm]
            dx0 = torch.bmm(du, WQKf.transpose(1, 2))                                     # [K, B, dm]
            g["W_Q"] = torch.matmul(dWQK, W_K).mul_(s)
            g["W_K"] = torch.matmul(dWQK.transpose(-1, -2), W_Q).mul_(s)
            dvals_f = dvals.reshape(K, B * n, H * dv)
            xc_flat = xc.view(K, B * n, dm)
            g["W_V"] = torch.bmm(xc_flat.transpose(1, 2), dvals_f).view(K, dm, H, dv).permute(0, 2, 1, 3)
            dxc = dxc.add_(torch.bmm(dvals_f, WVf.transpose(1, 2)))
            ctx_flat = ctx.reshape(K, B * n, -1)
            g["W_E"] = torch.bmm(q.transpose(1, 2), dx0).add_(torch.bmm(ctx_flat.transpose(1, 2), dxc))
            g["b_E"] = dx0.sum(1).add_(dxc.sum(1))
        return torch.cat([g[name].reshape(K, -1) for name in NAMES], dim=1)

    # ----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def adam_step(self, grad: torch.Tensor, lr: torch.Tensor) -> None:
        """torch.optim.Adam's update (as BatchedAdam) on the flat buffer; ``lr`` [K]."""
        b1, b2 = self.betas
        self.t += 1
        bc1, bc2_sqrt = 1 - b1 ** self.t, math.sqrt(1 - b2 ** self.t)
        self.m.mul_(b1).add_(grad, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (self.v.sqrt() / bc2_sqrt).add_(self.eps)
        step_size = (lr / bc1).to(self.p.dtype)[:, None]
        self.p.sub_(step_size * self.m / denom)

    def step(self, q, ctx, y, weights, label_kind: str, lr: torch.Tensor) -> None:
        self.adam_step(self.grad(q, ctx, y, weights, label_kind), lr)


def _softmax_(x: torch.Tensor) -> torch.Tensor:
    """In-place softmax over the last axis (x is overwritten and returned)."""
    x.sub_(x.amax(-1, keepdim=True)).exp_()
    return x.div_(x.sum(-1, keepdim=True))


def _softmax_backward(y: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """dy -> y * (dy - sum(dy * y)), the backward of y = softmax(x) (overwrites dy)."""
    return dy.sub_((dy * y).sum(-1, keepdim=True)).mul_(y)

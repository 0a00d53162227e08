"""A hand-written forward + backward of the shallow ViT's SGD objective, a group of models at a time.

The objective of one step (train/sgd.py) is  sum_k (1/B) sum_b loss(y_kb F_k(X_kb)),  with (models/shallow_vit.py)

    F(X) = (1/L) sum_l a^T ReLU(u_l),   u_l = W_O z_l,   z_l = sum_s P_ls W_V x_s,
    P_l. = softmax_s(x_s^T W_K^T W_Q x_l [/ sqrt(d_k)]).

Its gradients, with c_kb = dObjective/dF_kb (the loss derivative, by autograd on the [K_act, B] loss alone) and
g_t = c / L for every token l:

    dU = (g_t a^T) * 1[u > 0]                      [G, B L, m]
    dW_O = dU^T z,  dz = dU W_O,  da = ReLU(u)^T g_t (only when a is trained)
    dP = dz V^T,  dV = P^T dz,  dS = P * (dP - sum_s dP P)  [/ sqrt(d_k)]
    dQ = dS K,  dK = dS^T Q,  d[W_Q; W_K; W_V] = [dQ, dK, dV]^T X.

Every product is the same ``torch.bmm`` (same operands, same layout) that autograd runs for the model's forward,
and every elementwise step the same operation, so the gradients equal autograd's bit for bit (tests/test_fused.py
checks them to float32 rounding, and whole trainings give identical parameters; docs/benchmarks.md has the golden
check of the stored experiment metrics).  What differs
is the cost: the models are processed ``group`` at a time, so a group's activations ([G, B, L, m] and the
gathered mini-batch) stay in cache between the forward and the backward, all buffers are allocated once and
reused every step, the rank-1 product g_t a^T is an elementwise product instead of a bmm, and the three slices
of the fused Q/K/V projection share one gradient buffer (no zero-filled copies).
"""
from __future__ import annotations

import torch

# Models per group [project choice: 8, 16 and 32 measured alike, 4 slower, `python bench/bench_shallow.py fused`;
# docs/benchmarks.md]
GROUP = 8


class FusedShallowViTStep:
    """Gradients of the SGD objective for K_act models, the mini-batch gathered group by group from ``X_rows``.

    Buffers are allocated for ``group`` models on the first call and reused.
    """

    def __init__(self, cfg, L: int, d: int, batch: int, loss_fn, group: int | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.cfg, self.L, self.d, self.B, self.loss_fn = cfg, L, d, batch, loss_fn
        self.G = group = GROUP if group is None else group
        G, B, dk, dv, m = group, batch, cfg.d_k, cfg.d_v, cfg.m
        e = 2 * dk + dv
        kw = {"device": device, "dtype": dtype}
        BL = B * L
        self.x = torch.empty(G * B, L * d, **kw)         # gathered mini-batch rows of the group
        self.qkv = torch.empty(G, BL, e, **kw)           # [Q K V] of every token
        self.S = torch.empty(G * B, L, L, **kw)          # scores, then P (softmax in place)
        self.z = torch.empty(G, BL, dv, **kw)            # P V
        self.h = torch.empty(G, BL, m, **kw)             # u, then ReLU(u) in place, then dU in place
        self.t = torch.empty(G, 1, BL, **kw)             # a^T ReLU(u_l)
        self.dz = torch.empty(G, BL, dv, **kw)
        self.dP = torch.empty(G * B, L, L, **kw)
        self.dqkv = torch.empty(G, B, L, e, **kw)        # [dQ dK dV]

    def grads(self, X_rows: torch.Tensor, flat: torch.Tensor, y: torch.Tensor, P: dict[str, torch.Tensor],
              train_a: bool) -> dict[str, torch.Tensor]:
        """X_rows [rows, L d], flat [K_act B] rows of the mini-batches, y [K_act, B], P: parameters [K_act, ...].

        Returns {name: gradient [K_act, ...]} of the trained parameters (a only when ``train_a``).
        """
        Ka = y.shape[0]
        out = {k: torch.empty_like(P[k]) for k in ("W_Q", "W_K", "W_V", "W_O")}
        if train_a:
            out["a"] = torch.empty_like(P["a"])
        W = torch.cat([P["W_Q"], P["W_K"], P["W_V"]], dim=1)                   # [K_act, e, d]
        dW = torch.empty_like(W)
        F_all = torch.zeros_like(y)       # [K_act, B]: F of the groups so far (see _group)
        for g0 in range(0, Ka, self.G):
            g1 = min(g0 + self.G, Ka)
            self._group(X_rows, flat[g0 * self.B:g1 * self.B], y, F_all, g0, g1, W[g0:g1], P["W_O"][g0:g1],
                        P["a"][g0:g1], dW[g0:g1], out["W_O"][g0:g1], out["a"][g0:g1] if train_a else None)
        dk = self.cfg.d_k
        out["W_Q"].copy_(dW[:, :dk])
        out["W_K"].copy_(dW[:, dk:2 * dk])
        out["W_V"].copy_(dW[:, 2 * dk:])
        return out

    def _group(self, X_rows, flat, y, F_all, g0, g1, W, W_O, a, dW, dW_O, da) -> None:
        G, B, L, d, cfg = g1 - g0, self.B, self.L, self.d, self.cfg
        dk, dv, BL = cfg.d_k, cfg.d_v, self.B * self.L
        x = torch.index_select(X_rows, 0, flat, out=self.x[:G * B]).view(G, BL, d)
        # forward, the same products as ShallowViT.token_outputs
        qkv = torch.bmm(x, W.transpose(1, 2), out=self.qkv[:G])                  # [G, BL, e]
        q4 = qkv.view(G * B, L, -1)
        q, k, v = q4[..., :dk], q4[..., dk:2 * dk], q4[..., 2 * dk:]
        S = torch.bmm(q, k.transpose(1, 2), out=self.S[:G * B])                 # [G B, L, L]
        if cfg.scale_scores:
            S.div_(dk ** 0.5)
        Pm = torch.softmax(S, dim=-1)                                           # [G B, L(query), L(key)]
        z = torch.bmm(Pm, v, out=self.z[:G].view(G * B, L, dv)).view(G, BL, dv)
        h = torch.bmm(z, W_O.transpose(1, 2), out=self.h[:G])                   # u [G, BL, m]
        h.relu_()
        t = torch.bmm(a.unsqueeze(1), h.transpose(1, 2), out=self.t[:G])         # [G, 1, BL]
        torch.mean(t.view(G, B, L), dim=-1, out=F_all[g0:g1])                   # F [G, B]
        # dObjective/dF by autograd on the [K_act, B] loss only (the loss's own derivative, hinge or logistic).
        # It runs on all K_act rows (those of later groups are placeholders; the map is elementwise): torch's
        # vectorised loss derivative rounds an element by its position in the tensor, so this keeps autograd's
        # rounding exactly (on [G, B] alone the logistic derivative differed in the last bit).
        with torch.enable_grad():
            Fl = F_all.detach().requires_grad_(True)
            (cF,) = torch.autograd.grad(self.loss_fn(y * Fl).mean(dim=1).sum(), Fl)
        cF = cF[g0:g1]
        g_t = cF.unsqueeze(-1).expand(G, B, L).div(L).reshape(G, 1, BL)        # MeanBackward: grad / L
        if da is not None:                                                      # da = g_t^T ReLU(u)
            torch.bmm(g_t, h, out=da.unsqueeze(1))
        # dU = (g_t a^T) * 1[u > 0]: ReLU(u) >= 0, so sign() is the 0/1 mask (NaN stays NaN)
        dU = h.sign_().mul_(g_t.view(G, BL, 1)).mul_(a.unsqueeze(1))            # [G, BL, m]
        # dW_O [G, m, dv] as autograd forms it: (z^T dU)^T
        dW_O.copy_(torch.bmm(z.transpose(1, 2), dU).transpose(1, 2))
        dz = torch.bmm(dU, W_O, out=self.dz[:G]).view(G * B, L, dv)
        dqkv = self.dqkv[:G].view(G * B, L, -1)
        dP = torch.bmm(dz, v.transpose(1, 2), out=self.dP[:G * B])
        dqkv[..., 2 * dk:] = torch.bmm(Pm.transpose(1, 2), dz)                  # dV
        dS = torch._softmax_backward_data(dP, Pm, -1, Pm.dtype)
        if cfg.scale_scores:
            dS = dS / dk ** 0.5
        dqkv[..., :dk] = torch.bmm(dS, k)                                       # dQ
        dqkv[..., dk:2 * dk] = torch.bmm(q.transpose(1, 2), dS).transpose(1, 2)  # dK, as (Q^T dS)^T
        # d[W_Q; W_K; W_V] [G, e, d] as autograd forms it: (X^T dQKV)^T
        dW.copy_(torch.bmm(x.transpose(1, 2), dqkv.view(G, BL, -1)).transpose(1, 2))

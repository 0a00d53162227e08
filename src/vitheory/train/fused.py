"""A hand-written forward + backward of the shallow ViT's SGD objective, a group of models at a time.

The objective of one step (train/sgd.py) is  sum_k (1/B) sum_b loss(y_kb F_k(X_kb)),  with (models/shallow_vit.py)

    F(X) = (1/L) sum_l a^T ReLU(u_l),   u_l = W_O z_l,   z_l = sum_s P_ls W_V x_s,
    P_l. = softmax_s(x_s^T W_K^T W_Q x_l [/ sqrt(d_k)]).

Its gradients, with c_kb = dObjective/dF_kb (the loss derivative: autograd's own formulas on the [K_act, B] loss
alone, train/losses.py) and g_t = c / L for every token l:

    dU = (g_t a^T) * 1[u > 0]                      [G, B L, m]
    dW_O = dU^T z,  dz = dU W_O,  da = ReLU(u)^T g_t (only when a is trained)
    dP = dz V^T,  dV = P^T dz,  dS = P * (dP - sum_s dP P)  [/ sqrt(d_k)]
    dQ = dS K,  dK = dS^T Q,  d[W_Q; W_K; W_V] = [dQ, dK, dV]^T X.

Every product is the same ``torch.bmm`` (same operands, same layout) that autograd runs for the model's forward,
and every elementwise step the same operation, so the gradients equal autograd's (on one thread) bit for bit where
torch runs a group's products through the same BLAS kernels as the whole batch's: at the experiments' sizes and in
tests/test_fused.py at groups of 4 and 32; elsewhere (groups of 1 or 3 of a tiny model) to float32 rounding.  Whole
trainings give identical parameters, and docs/benchmarks.md has the golden check of the stored experiment metrics.
What differs is the cost: the models are processed ``group`` at a time, so a group's activations ([G, B, L, m] and the
gathered mini-batch) stay in cache between the forward and the backward, all buffers are allocated once and
reused every step, the rank-1 product g_t a^T is an elementwise product instead of a bmm, and the three slices
of the fused Q/K/V projection share one gradient buffer (no zero-filled copies).

With more than one torch thread the groups are shared among that many worker threads, each running its groups'
products on one core (``threads``): the products of one group are too small for a multi-threaded BLAS call to keep
two cores busy (at 2 threads the per-group path reached 0.38 of a 2-thread sgemm, `bench/peak.py`), while whole
groups in parallel keep each core on its own cache-resident working set.  A group's operations always run on one
core (also when there is one worker), so the gradients, and the trained models, are the same whatever the number
of threads (tests/test_fused.py).
"""
from __future__ import annotations

import torch

from vitheory.train.losses import objective_grad

# Models per group [project choice, `python bench/bench_shallow.py fused`, docs/benchmarks.md]: 4, whose working set
# is nearer a core's L2 than 8's (one thread, K = 220 of the default size: 94 ms a step against 102 / 111 / 111 for
# groups of 2 / 8 / 16, autograd 277; two workers: 56 against 60 ms for 8, best of 10).  One size whatever
# the number of workers: at small sizes, where torch's bmm takes its own loop instead of the BLAS, the group size
# changes the last bits, and the trained models should not depend on the thread count.
GROUP = 4
# Worker threads only for groups of at least this many matrix-product FLOPs per step [project choice]: below it a
# group is Python overhead (about 0.1 ms) more than arithmetic, and threads contend for the interpreter lock
# (8 to 220 models of a 4-token, d = 8 model ran 1.6-2.1x slower on 2 workers than on one; at the default size,
# 90 MFLOP a group, 2 workers ran 1.4-1.6x faster; `python bench/peak.py`).
MIN_WORKER_FLOPS = 20e6


class _Buffers:
    """The activations of one group of models, allocated once and reused (one set per worker thread), and their
    views for a group of G models (built once per G: a group's Python work is mostly making views)."""

    def __init__(self, G: int, B: int, L: int, d: int, dk: int, dv: int, m: int, **kw):
        e, BL = 2 * dk + dv, B * L
        self.G, self.B, self.L, self.d, self.dk, self.dv = G, B, L, d, dk, dv
        self.x = torch.empty(G * B, L * d, **kw)         # gathered mini-batch rows of the group
        self.qkv = torch.empty(G, BL, e, **kw)           # [Q K V] of every token
        self.S = torch.empty(G * B, L, L, **kw)          # scores
        self.P = torch.empty(G * B, L, L, **kw)          # softmax of the scores
        self.z = torch.empty(G, BL, dv, **kw)            # P V
        self.h = torch.empty(G, BL, m, **kw)             # u, then ReLU(u) in place, then dU in place
        self.t = torch.empty(G, 1, BL, **kw)             # a^T ReLU(u_l)
        self.dz = torch.empty(G, BL, dv, **kw)
        self.dP = torch.empty(G * B, L, L, **kw)
        self.dS = torch.empty(G * B, L, L, **kw)
        self.dqkv = torch.empty(G, B, L, e, **kw)        # [dQ dK dV]
        self.tmp = torch.empty(G * B, L, max(dk, dv), **kw)   # dQ, dK^T, dV before they join dqkv
        self._views: dict[int, dict[str, torch.Tensor]] = {}

    def views(self, G: int) -> dict[str, torch.Tensor]:
        v = self._views.get(G)
        if v is None:
            B, L, d, dk, dv, BL = self.B, self.L, self.d, self.dk, self.dv, self.B * self.L
            qkv = self.qkv[:G]
            q4 = qkv.view(G * B, L, -1)
            dqkv = self.dqkv[:G].view(G * B, L, -1)
            tmp = self.tmp.view(-1)     # contiguous [G B, L, dk], [G B, dk, L] and [G B, L, dv] views of one buffer
            v = self._views[G] = {
                "xg": self.x[:G * B], "x": self.x[:G * B].view(G, BL, d), "qkv": qkv,
                "q": q4[..., :dk], "k": q4[..., dk:2 * dk], "v": q4[..., 2 * dk:],
                "S": self.S[:G * B], "P": self.P[:G * B], "z4": self.z[:G].view(G * B, L, dv), "z": self.z[:G],
                "h": self.h[:G], "t": self.t[:G], "dz": self.dz[:G],
                "dP": self.dP[:G * B], "dS": self.dS[:G * B], "dqkv": dqkv, "dqkv3": self.dqkv[:G].view(G, BL, -1),
                "dQ": dqkv[..., :dk], "dK": dqkv[..., dk:2 * dk], "dV": dqkv[..., 2 * dk:],
                "tq": tmp[:G * B * L * dk].view(G * B, L, dk), "tkT": tmp[:G * B * dk * L].view(G * B, dk, L),
                "tv": tmp[:G * B * L * dv].view(G * B, L, dv)}
            # the transposed operands, made once too
            v.update(xT=v["x"].transpose(1, 2), kT=v["k"].transpose(1, 2), vT=v["v"].transpose(1, 2),
                     qT=v["q"].transpose(1, 2), hT=v["h"].transpose(1, 2), zT=v["z"].transpose(1, 2),
                     PT=v["P"].transpose(1, 2), dKT=v["tkT"].transpose(1, 2))
        return v


class FusedShallowViTStep:
    """Gradients of the SGD objective for K_act models, the mini-batch gathered group by group from ``X_rows``.

    ``threads``: worker threads sharing the groups (None: ``torch.get_num_threads()`` at each call; 1: the calling
    thread alone).  Buffers are allocated for ``group`` models per worker on first use and reused.
    """

    def __init__(self, cfg, L: int, d: int, batch: int, loss_fn, group: int | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, threads: int | None = None):
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be an integer >= 1 or None, got {threads!r}")
        self.cfg, self.L, self.d, self.B, self.loss_fn = cfg, L, d, batch, loss_fn
        self.G = GROUP if group is None else group
        c, e = cfg, 2 * cfg.d_k + cfg.d_v
        # matrix-product FLOPs of one model's step: forward (QKV, scores, P V, W_O, a) and twice that backward
        self.step_flops = 3 * 2 * batch * L * (d * e + L * (c.d_k + c.d_v) + c.d_v * c.m + c.m)
        self.kw = {"device": device, "dtype": dtype}
        self.threads = threads
        # worker threads only pay off on the CPU (a GPU runs one stream of kernels either way)
        self.cpu = torch.device(device).type == "cpu"
        self._buffers: list[_Buffers] = []
        self._pool, self._pool_size = None, 0

    def _buf(self, w: int, G: int) -> _Buffers:
        """Worker w's buffers, for groups of up to G models."""
        while len(self._buffers) <= w:
            self._buffers.append(None)
        if self._buffers[w] is None or self._buffers[w].G < G:
            c = self.cfg
            self._buffers[w] = _Buffers(G, self.B, self.L, self.d, c.d_k, c.d_v, c.m, **self.kw)
        return self._buffers[w]

    def grads(self, X_rows: torch.Tensor, flat: torch.Tensor, y: torch.Tensor, P: dict[str, torch.Tensor],
              train_a: bool) -> dict[str, torch.Tensor]:
        """X_rows [rows, L d], flat [K_act B] rows of the mini-batches, y [K_act, B], P: parameters [K_act, ...].

        Returns {name: gradient [K_act, ...]} of the trained parameters (a only when ``train_a``).
        """
        Ka = y.shape[0]
        out = {}
        if train_a:
            out["a"] = torch.empty_like(P["a"])
        W = torch.cat([P["W_Q"], P["W_K"], P["W_V"]], dim=1)                   # [K_act, e, d]
        # the weight gradients in the layout autograd's products give them (dW^T, dW_O^T), returned as transposed
        # views: the update reads them in place, so no group copies them into the parameters' layout
        dWt = W.new_empty(Ka, W.shape[2], W.shape[1])                         # [K_act, d, e]
        dWOt = W.new_empty(Ka, P["W_O"].shape[2], P["W_O"].shape[1])          # [K_act, dv, m]
        WT, W_OT, a3 = W.transpose(1, 2), P["W_O"].transpose(1, 2), P["a"].unsqueeze(1)   # sliced per group
        F_all = torch.zeros_like(y)       # [K_act, B]: F of the groups so far (see _group)
        threads = torch.get_num_threads() if self.threads is None else self.threads
        G = self.G
        groups = [(g0, min(g0 + G, Ka)) for g0 in range(0, Ka, G)]
        T = min(threads, len(groups)) if self.cpu and G * self.step_flops >= MIN_WORKER_FLOPS else 1

        def run(w: int, mine: list[tuple[int, int]]) -> None:
            buf = self._buf(w, G)
            for g0, g1 in mine:
                self._group(buf, X_rows, flat[g0 * self.B:g1 * self.B], y, F_all, g0, g1, WT[g0:g1],
                            P["W_O"][g0:g1], W_OT[g0:g1], a3[g0:g1], dWt[g0:g1], dWOt[g0:g1],
                            out["a"][g0:g1] if train_a else None)

        if not self.cpu:
            run(0, groups)
        elif T == 1:
            main_threads = torch.get_num_threads()
            torch.set_num_threads(1)     # one core, as in a worker: the same numbers whatever the thread count
            try:
                run(0, groups)
            finally:
                torch.set_num_threads(main_threads)
        else:
            self._run_workers(T, groups, run)
        dk = self.cfg.d_k
        dW = dWt.transpose(1, 2)                                               # [K_act, e, d] (a view)
        out["W_Q"], out["W_K"], out["W_V"], out["W_O"] = dW[:, :dk], dW[:, dk:2 * dk], dW[:, 2 * dk:], \
            dWOt.transpose(1, 2)
        return out

    def _run_workers(self, T: int, groups, run) -> None:
        """Worker w runs groups w, w + T, ...; each worker's torch operations use one thread."""
        from concurrent.futures import ThreadPoolExecutor
        if self._pool is None or self._pool_size != T:
            if self._pool is not None:
                self._pool.shutdown()
            self._pool, self._pool_size = ThreadPoolExecutor(T, thread_name_prefix="vitheory-fused"), T
        main_threads = torch.get_num_threads()

        def work(w: int) -> None:
            torch.set_num_threads(1)       # this worker's operations on one core (the team is this thread)
            with torch.no_grad():          # grad mode is per thread
                run(w, groups[w::T])
        try:
            for f in [self._pool.submit(work, w) for w in range(T)]:
                f.result()
        finally:
            torch.set_num_threads(main_threads)   # the BLAS thread count is process-wide: give it back

    def __del__(self):
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=False)

    def _group(self, buf: _Buffers, X_rows, flat, y, F_all, g0, g1, WT, W_O, W_OT, a3, dWt, dWOt, da) -> None:
        """One group: WT = W^T [G, d, e], W_O [G, m, dv] and W_OT its transpose, a3 = a [G, 1, m]; writes F_all's
        rows, dWt [G, d, e], dWOt [G, dv, m] and da."""
        G, B, L, cfg = g1 - g0, self.B, self.L, self.cfg
        dk, BL = cfg.d_k, self.B * self.L
        V = buf.views(G)
        x, q, k, v = V["x"], V["q"], V["k"], V["v"]
        torch.index_select(X_rows, 0, flat, out=V["xg"])
        # forward, the same products as ShallowViT.token_outputs
        torch.bmm(x, WT, out=V["qkv"])                                           # [G, BL, e]
        S = torch.bmm(q, V["kT"], out=V["S"])                                    # [G B, L, L]
        if cfg.scale_scores:
            S.div_(dk ** 0.5)
        Pm = torch._softmax(S, -1, False, out=V["P"])                            # [G B, L(query), L(key)]
        torch.bmm(Pm, v, out=V["z4"])
        z = V["z"]                                                               # [G, BL, dv]
        h = torch.bmm(z, W_OT, out=V["h"])                                        # u [G, BL, m]
        h.relu_()
        t = torch.bmm(a3, V["hT"], out=V["t"])                                   # [G, 1, BL]
        torch.mean(t.view(G, B, L), dim=-1, out=F_all[g0:g1])                    # F [G, B]
        # dObjective/dF (train/losses.py: autograd's own formulas, without its graph). Autograd maps the whole
        # [K_act, B] tensor, and torch's vectorised kernels round an element by its position in it (the tail of a
        # vector loop is scalar code), so the group's slice alone gives autograd's bits only where it is whole
        # vectors inside the vectorised part (64 floats: two AVX-512 vectors); elsewhere all K_act rows are
        # mapped (later groups' rows are placeholders; the map is elementwise).
        n, lo, hi = F_all.numel(), g0 * B, g1 * B
        if (hi - lo) % 64 == 0 and hi <= n - n % 64:
            cF = objective_grad(self.loss_fn, y[g0:g1], F_all[g0:g1])
        else:
            cF = objective_grad(self.loss_fn, y, F_all)[g0:g1]
        gl = cF.div_(L)                               # MeanBackward over the L tokens: the same c / L for each
        if da is not None:                                                       # da = g_t^T ReLU(u)
            torch.bmm(gl.unsqueeze(-1).expand(G, B, L).reshape(G, 1, BL), h, out=da.unsqueeze(1))
        # dU = (g_t a^T) * 1[u > 0]: ReLU(u) >= 0, so sign() is the 0/1 mask (NaN stays NaN)
        dU = h.sign_()
        dU.view(G, B, L, -1).mul_(gl.view(G, B, 1, 1))
        dU.mul_(a3)                                                              # [G, BL, m]
        # dW_O^T [G, dv, m] = z^T dU, the product autograd forms
        torch.bmm(V["zT"], dU, out=dWOt)
        dz = torch.bmm(dU, W_O, out=V["dz"]).view(G * B, L, -1)
        dP = torch.bmm(dz, V["vT"], out=V["dP"])
        V["dV"].copy_(torch.bmm(V["PT"], dz, out=V["tv"]))
        dS = torch._softmax_backward_data(dP, Pm, -1, Pm.dtype, grad_input=V["dS"])
        if cfg.scale_scores:
            dS.div_(dk ** 0.5)
        V["dQ"].copy_(torch.bmm(dS, k, out=V["tq"]))
        torch.bmm(V["qT"], dS, out=V["tkT"])
        V["dK"].copy_(V["dKT"])                                                  # dK as (Q^T dS)^T
        # d[W_Q; W_K; W_V]^T [G, d, e] = X^T dQKV, the product autograd forms
        torch.bmm(V["xT"], V["dqkv3"], out=dWt)

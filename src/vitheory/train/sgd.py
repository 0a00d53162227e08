"""Mini-batch SGD on the hinge loss (the paper's) or the logistic loss for K independent models at once.

    loss_k = (1/B) sum_{n in batch_k} max{1 - y_n F_k(X_n), 0},   theta_k <- theta_k - eta_k grad loss_k
    (logistic, a named alternative [project choice]: log(1 + exp(-y_n F_k(X_n))) in place of the hinge)

The K models share nothing: model k samples its own mini-batches (from its own generator, among its
own N_k training samples) and has its own step size eta_k.  Summing the K losses before taking
gradients gives each model exactly the gradient of its own loss, so one batched step equals K single
steps.

A model whose training margins y F(X) are all >= 1 has zero hinge gradient on every mini-batch, so it
can never move again: at each evaluation such models are *retired* from the batch (their result is
final), and the step stops once none is left.  This changes no number, only the cost.  The logistic loss has no zero-gradient region, so its models
are never retired by their margins; ``model_steps`` (a per-model step budget, e.g. a number of epochs)
retires model k after its own ``model_steps[k]`` steps.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

import vitheory.progress as progress
from vitheory.models.shallow_vit import ShallowViT
from vitheory.train.fused import FusedShallowViTStep
from vitheory.train.losses import LOSSES, hinge, logistic  # noqa: F401  (the losses live in train/losses.py)


# Samples per forward chunk in evaluation: the hidden activations of K models ([K, chunk, L, m]) then
# stay small (at K = 220 of the default size: 1.1-1.7x faster than chunks of 256 samples, varying from
# run to run; `python bench/bench_shallow.py kernels`).
PREDICT_CHUNK = 16


@torch.no_grad()
def predict(model: nn.Module, X: torch.Tensor, chunk: int = PREDICT_CHUNK, params: dict | None = None,
            models: torch.Tensor | None = None, n: int | None = None) -> torch.Tensor:
    """F for X [K, N, L, d], in chunks of samples: [K, N] (or [len(models), n]).

    ``models`` (indices into the K models) and ``n`` (the first n samples) restrict the work to what is
    read: the active models of a sweep, the samples that are not padding.
    """
    n = X.shape[1] if n is None else n
    if models is None:   # every model: no gather of X
        return torch.cat([model(X[:, i:min(i + chunk, n)], params) for i in range(0, n, chunk)], dim=1)
    P = model.params() if params is None else params
    sub = {k: v[models] for k, v in P.items()}
    buf = torch.empty(len(models), min(chunk, n), *X.shape[2:], device=X.device, dtype=X.dtype)
    out = []
    for i in range(0, n, chunk):
        j = min(i + chunk, n)
        xc = torch.index_select(X[:, i:j], 0, models, out=buf[:, :j - i])
        out.append(model(xc, sub))
    return torch.cat(out, dim=1)


@contextmanager
def _num_threads(n: int):
    """torch's thread count n inside the block (the caller's again after it)."""
    before = torch.get_num_threads()
    if n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class TrainResult:
    steps_run: int                      # steps until every model retired, or the step budget
    fit_step: torch.Tensor              # [K] first evaluated step with zero training error (-1: never)
    retired_step: torch.Tensor          # [K] step at which all margins were >= 1 (-1: never)
    history: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (step, [K] train error)
    train_error: torch.Tensor | None = None  # [K] training error at the end (None without evaluations)


def train_hinge_sgd(model: nn.Module, X: torch.Tensor, y: torch.Tensor, n: torch.Tensor, *,
                    steps: int, batch: int, lr: torch.Tensor, generators: list[torch.Generator],
                    eval_every: int = 0, callback: Callable[[int, nn.Module], None] | None = None,
                    callback_every: int = 0, lr_scale: dict[str, float] | None = None,
                    loss: str = "hinge", model_steps: torch.Tensor | None = None,
                    stop_at_fit: bool = False, fused: bool = True) -> TrainResult:
    """Train the K models of ``model`` on padded data X [K, Nmax, L, d], y [K, Nmax]; N_k = n[k].

    ``eval_every`` > 0: every that many steps, each model's full training error is recorded
    (``fit_step``, ``history``) and models with all margins >= 1 are retired (see module doc).
    ``callback(step, model)`` runs at step 0 and every ``callback_every`` steps; while a callback is
    set no model is retired, so that the callback sees every model at every step it asks for.
    ``lr_scale`` multiplies the step of the named parameters (e.g. ``{"W_Q": 10, "W_K": 10}``).
    ``loss``: "hinge" or "logistic" (logistic models are never retired by their margins).
    ``model_steps`` [K]: model k takes at most that many steps (its result is final after them); None: ``steps``.
    ``stop_at_fit``: a model stops at the first evaluation with zero training error (when only ``fit_step`` is
    read, e.g. iterations to fit: the steps after it are not computed).
    ``fused``: for a ``ShallowViT``, the gradients come from the hand-written forward + backward of train/fused.py
    (the same products and elementwise steps as autograd, so the same numbers; tests/test_fused.py), a group of
    models at a time, each group on one core; with several torch threads the groups are shared among that many
    worker threads (the trained models do not depend on the thread count).  False: autograd on the whole batch.
    """
    loss_fn = LOSSES[loss]
    K, Nmax = y.shape
    device = X.device
    lr = lr.to(device)
    full = {k: v for k, v in model.params().items()}
    trainable = [k for k, v in full.items() if v.requires_grad]
    fit_step = torch.full((K,), -1, dtype=torch.long)
    retired_step = torch.full((K,), -1, dtype=torch.long)
    result = TrainResult(steps_run=steps, fit_step=fit_step, retired_step=retired_step)
    n_dev = n.to(device)
    active = torch.arange(K, device=device)
    chunk_steps = 200
    idx_chunk = None
    # mini-batches are gathered into one reused buffer: gathering into fresh memory every step was
    # 8-30x slower here (`python bench/bench_shallow.py kernels`)
    X_rows = X.reshape(K * Nmax, -1)                                                 # [K Nmax, L d]
    xb_buf = None if fused and isinstance(model, ShallowViT) else \
        torch.empty(K * batch, X_rows.shape[1], device=device, dtype=X.dtype)

    fused_step = None
    threads = torch.get_num_threads()
    if fused and isinstance(model, ShallowViT):
        fused_step = FusedShallowViTStep(model.cfg, X.shape[2], X.shape[3], batch, loss_fn, device=device,
                                         dtype=X.dtype, threads=threads)
    # With the fused step's worker threads, this thread's own work between them (the update, the mini-batch
    # indices) runs on one thread: an OpenMP team of this thread would spin-wait after each of its parallel
    # regions and take a core from the workers (K = 220, two threads: 0.40 of the sgemm with it, 0.52 with
    # OMP_WAIT_POLICY=PASSIVE, `bench/peak.py`). Evaluations and callbacks keep every thread.
    loop_threads = 1 if fused_step is not None and fused_step.cpu and threads > 1 else threads

    last_err = torch.zeros(K)
    done = torch.zeros(K, dtype=torch.bool)

    def evaluate(step: int, ids: torch.Tensor | None = None) -> None:
        with _num_threads(threads):
            _evaluate(step, ids)

    def _evaluate(step: int, ids: torch.Tensor | None = None) -> None:
        # only the active models: a retired model has zero gradient on every mini-batch, so its
        # parameters, and hence its training error, are final (same numbers, less work)
        nonlocal active
        final = ids is not None          # models that just ran out of budget: record, change nothing else
        ids = active if ids is None else ids
        n_a = n_dev[ids]
        nmax = int(n_a.max())
        F = predict(model, X, params=full, models=None if len(ids) == K else ids, n=nmax)  # [K_act, nmax]
        valid = torch.arange(nmax, device=device)[None, :] < n_a[:, None]
        margin = torch.where(valid, y[ids, :nmax] * F, torch.full_like(F, float("inf")))
        ids_c = ids.cpu()
        # ~(margin > 0): a NaN margin (diverged model) is an error; padding has margin +inf
        last_err[ids_c] = ((~(margin > 0)).sum(1).float() / n_a.float()).cpu()
        err = last_err.clone()
        result.history.append((step, err))
        result.train_error = err
        fit_step[(err == 0) & (fit_step < 0)] = step
        if final:
            return
        if stop_at_fit:
            over[ids_c[err[ids_c] == 0]] = True
        if loss == "hinge":
            done[ids_c] = (margin >= 1).all(dim=1).cpu()
            retired_step[done & (retired_step < 0)] = step
        if callback is None:
            active = torch.nonzero(~(done | over).to(device)).flatten()

    budget = None if model_steps is None else model_steps.long().cpu()
    over = torch.zeros(K, dtype=torch.bool)    # models past their own step budget

    with _num_threads(loop_threads):
        for step in range(steps):
            if budget is not None and bool((budget == step).any()):
                ending = torch.nonzero((budget == step) & ~done).flatten().to(device)
                if eval_every > 0 and len(ending):
                    evaluate(step, ending)     # the training error at the end of their budget
                over |= budget <= step
                active = torch.nonzero(~(done | over).to(device)).flatten()
                if len(active) == 0:
                    result.steps_run = step
                    return result
            if step % 10 == 0:
                progress.report(0.9 * step / steps)
            if callback is not None and callback_every > 0 and step % callback_every == 0:
                with _num_threads(threads):
                    callback(step, model)
            if eval_every > 0 and step % eval_every == 0:
                evaluate(step)
                if len(active) == 0:
                    result.steps_run = step
                    return result
            if step % chunk_steps == 0:  # per-model mini-batch indices, from each model's own generator
                length = min(chunk_steps, steps - step)
                idx_chunk = torch.stack([torch.randint(int(n[k]), (length, batch), generator=g)
                                         for k, g in enumerate(generators)]).to(device)   # [K, length, B]
            idx = idx_chunk[active, step % chunk_steps]                                     # [K_act, B]
            flat = (active[:, None] * Nmax + idx).flatten()                                 # rows of X_rows
            yb = y.view(-1)[flat].view(len(active), batch)
            everyone = len(active) == K
            if fused_step is not None:      # the mini-batch is gathered group by group inside
                with torch.no_grad():
                    sub = {k: (v if everyone else v[active]) for k, v in full.items()}
                    g_ = fused_step.grads(X_rows, flat, yb, sub, "a" in trainable)
                grads = [g_[k] for k in trainable]
            else:
                xb = torch.index_select(X_rows, 0, flat, out=xb_buf[:len(flat)]).view(len(active), batch, *X.shape[2:])
                # while every model is active, differentiate the parameters in place (no gather/scatter copies)
                sub = full if everyone else {k: (v[active].detach().requires_grad_(k in trainable))
                                             for k, v in full.items()}
                objective = loss_fn(yb * model(xb, sub)).mean(dim=1).sum()
                grads = torch.autograd.grad(objective, [sub[k] for k in trainable])
            with torch.no_grad():
                lr_a = lr if everyone else lr[active]
                for k, g_ in zip(trainable, grads):
                    step_ = lr_a.view(-1, *([1] * (g_.dim() - 1))) * g_
                    if lr_scale and k in lr_scale:
                        step_ = step_ * lr_scale[k]
                    if everyone:
                        full[k].sub_(step_)
                    else:
                        full[k].index_add_(0, active, -step_)
        if callback is not None and callback_every > 0:
            with _num_threads(threads):
                callback(steps, model)
        if eval_every > 0:
            evaluate(steps)
        return result

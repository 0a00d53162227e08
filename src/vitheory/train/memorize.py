"""Batched memorization training: K one-layer attention models trained as one tensor program.

The procedure re-implements the official training of Mahdavi et al. (ICLR 2024) as described in
``../shared/papers/mha_memorization.md`` section 4.3:

* Adam (lr 1e-3, betas 0.9/0.999, eps 1e-8), batch 256, fp32;
* train_steps = max(floor(train_epochs * T / batch), min_train_steps);
* learning rate: linear warm-up from 0.01 lr to lr over the first train_steps // 20 steps, then cosine
  annealing to 0 over the remaining steps;
* cross-entropy on the query position's logits (classification) or MSE on its scalar output (regression);
* every ``eval_every`` steps (and at step 0) the model is evaluated on its whole training set; the
  lowest-training-loss evaluation is the "best checkpoint" whose accuracy/loss the reference reports
  (``acc_best``, ``loss_best``);
* classification runs stop as soon as the training accuracy is exactly 1.0.

Batching (project choices):

* Adam is elementwise, so one Adam over parameters of shape [K, ...] is the same arithmetic as K separate
  Adams -- with a per-model learning rate, because models with different T have different step counts and
  hence different schedules.  ``BatchedAdam`` implements torch.optim.Adam's update with an lr of shape [K]
  (a test checks it against K torch.optim.Adam instances).
* Each model walks through its own random permutations of its T_k examples, ``batch`` at a time (batches
  run across epoch boundaries), drawn from its own generator; when T_k < batch the batch is the whole set
  (padding rows get weight 0).  So a model sees the same minibatches inside a batch of K as alone.
* A model that reaches 100 % training accuracy (or its last step) is dropped from the batch at that
  evaluation: its weights are written to the result and the remaining models continue, compacted.
* A model whose training loss becomes non-finite stops there with ``diverged = True``; its best (finite)
  evaluation is still the one reported, as the reference's best checkpoint would be.
* The final model is also evaluated after its last step (the reference only evaluates every 500 steps);
  both the best-checkpoint metrics and the final model's metrics are returned.
* ``TrainConfig.attention`` picks the kernel: ``"fused"`` (default; :mod:`vitheory.train.fused_mha`: hand-written
  forward and backward of the query row, Adam on one flat parameter buffer -- far fewer tensor operations per
  step), ``"query_row"`` (autograd through the query row, :class:`BatchedAdam`) or ``"full"`` (autograd through
  the full (n+1) x (n+1) attention, the reference program's shape).  All three give the same numbers up to
  rounding (tests); the v1 comparison mask always runs through autograd.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from vitheory.data.memorization import MemorizationData, StackedData, stack_data
from vitheory.seeding import derive_seed
from vitheory.models.mha import BatchedMHA
from vitheory.train.fused_mha import FusedMHA


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 1e-3
    batch_size: int = 256
    train_epochs: int = 500           # train_steps = max(train_epochs * T // batch_size, min_train_steps)
    min_train_steps: int = 50_000
    max_train_steps: int | None = None  # optional cap (project choice for CPU presets); None = no cap
    warmup_div: int = 20              # warm-up steps = train_steps // warmup_div
    warmup_start: float = 0.01        # warm-up starts at warmup_start * lr
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    eval_every: int = 500
    early_stop: bool = True           # classification only
    eval_chunk: int = 4096            # examples per model per evaluation forward pass
    attention: str = "fused"          # "fused" (hand-fused query row, default), "query_row" (autograd through the
                                      # query row) or "full" ((n+1)x(n+1) attention, autograd; benchmarks, tests)


def train_steps(T: int, cfg: TrainConfig) -> int:
    steps = max(cfg.train_epochs * T // cfg.batch_size, cfg.min_train_steps)
    return min(steps, cfg.max_train_steps) if cfg.max_train_steps is not None else steps


def lr_at(step: torch.Tensor | int, total: torch.Tensor | int, cfg: TrainConfig) -> torch.Tensor:
    """Learning rate of update number ``step`` (0-based) of a run of ``total`` steps (vectorised over models).

    Linear warm-up from warmup_start * lr to lr over w = total // warmup_div steps, then
    lr * (1 + cos(pi * (step - w) / (total - w))) / 2  (PyTorch's LinearLR followed by CosineAnnealingLR).
    """
    step = torch.as_tensor(step, dtype=torch.float64)
    total = torch.as_tensor(total, dtype=torch.float64)
    warm = torch.div(total, cfg.warmup_div, rounding_mode="floor")
    frac_w = torch.where(warm > 0, step / warm.clamp(min=1), torch.ones_like(step))
    warm_lr = cfg.lr * (cfg.warmup_start + (1 - cfg.warmup_start) * frac_w)
    cos_lr = cfg.lr * 0.5 * (1 + torch.cos(math.pi * (step - warm) / (total - warm).clamp(min=1)))
    return torch.where(step < warm, warm_lr, cos_lr)


# ------------------------------------------------------------------------------------------------------------
# Adam with one learning rate per model
# ------------------------------------------------------------------------------------------------------------
class BatchedAdam:
    """torch.optim.Adam's update (no weight decay, no amsgrad) for parameters with a leading model axis K.

    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
    p <- p - lr_k / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    def __init__(self, params: dict[str, torch.nn.Parameter], betas=(0.9, 0.999), eps=1e-8):
        self.params = params
        self.betas, self.eps, self.t = betas, eps, 0
        self.m = {k: torch.zeros_like(p) for k, p in params.items()}
        self.v = {k: torch.zeros_like(p) for k, p in params.items()}

    @torch.no_grad()
    def step(self, lr: torch.Tensor) -> None:
        """One update; ``lr`` has shape [K]."""
        b1, b2 = self.betas
        self.t += 1
        bc1, bc2_sqrt = 1 - b1 ** self.t, math.sqrt(1 - b2 ** self.t)
        for k, p in self.params.items():
            g = p.grad
            if g is None:
                continue
            m, v = self.m[k], self.v[k]
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
            step_size = (lr / bc1).to(p.dtype).reshape((-1,) + (1,) * (p.dim() - 1))
            p.sub_(step_size * m / denom)

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    def take(self, idx: torch.Tensor, params: dict[str, torch.nn.Parameter]) -> "BatchedAdam":
        new = BatchedAdam(params, self.betas, self.eps)
        new.t = self.t
        new.m = {k: v[idx].clone() for k, v in self.m.items()}
        new.v = {k: v[idx].clone() for k, v in self.v.items()}
        return new


# ------------------------------------------------------------------------------------------------------------
# per-model minibatch order
# ------------------------------------------------------------------------------------------------------------
class IndexStream:
    """The example order of one model: concatenated random permutations of range(T), from its own generator."""

    def __init__(self, T: int, seed: int):
        self.T = T
        self.g = torch.Generator().manual_seed(derive_seed(seed, "minibatch-order", T))
        self.buf = torch.empty(0, dtype=torch.long)

    def next_batches(self, steps: int, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """([steps, batch] row indices, [steps, batch] weights or None when every row is real)."""
        if self.T >= batch:
            need = steps * batch
            while self.buf.numel() < need:
                self.buf = torch.cat([self.buf, torch.randperm(self.T, generator=self.g)])
            out, self.buf = self.buf[:need], self.buf[need:]
            return out.view(steps, batch), None
        rows = torch.zeros(steps, batch, dtype=torch.long)
        for s in range(steps):                      # T < batch: each step is one permutation of the whole set
            rows[s, : self.T] = torch.randperm(self.T, generator=self.g)
        w = torch.zeros(steps, batch)
        w[:, : self.T] = 1.0
        return rows, w


# ------------------------------------------------------------------------------------------------------------
# loss and evaluation
# ------------------------------------------------------------------------------------------------------------
def per_example_loss(logits: torch.Tensor, labels: torch.Tensor, label_kind: str) -> torch.Tensor:
    """logits [K, B, n_out], labels [K, B] -> loss [K, B] (cross-entropy, or squared error for regression)."""
    if label_kind == "classification":
        K, B, C = logits.shape
        return F.cross_entropy(logits.reshape(K * B, C), labels.reshape(K * B), reduction="none").view(K, B)
    return (logits[..., 0] - labels) ** 2


def forward_fn(model, attention: str):
    if isinstance(model, FusedMHA):
        return model.forward
    if attention in ("query_row", "fused"):
        return model.forward_query_row
    if attention == "full":
        return model.forward_full
    raise ValueError(f"attention={attention!r}; choose one of fused, query_row, full")


@torch.no_grad()
def evaluate(model, data: StackedData, chunk: int = 4096,
             attention: str = "query_row") -> tuple[torch.Tensor, torch.Tensor]:
    """Training-set loss and accuracy of every model: ([K], [K]) (accuracy NaN for regression)."""
    K, T_max = data.queries.shape[:2]
    loss_sum = torch.zeros(K, dtype=torch.float64, device=data.queries.device)
    correct = torch.zeros(K, dtype=torch.float64, device=data.queries.device)
    ar = torch.arange(T_max, device=data.queries.device)
    for lo in range(0, T_max, chunk):
        rows = ar[lo: lo + chunk].expand(K, -1)
        valid = (rows < data.sizes[:, None]).to(torch.float64)              # [K, C]
        q, ctx, y = data.gather(rows)
        logits = forward_fn(model, attention)(q, ctx)
        loss_sum += (per_example_loss(logits, y, data.label_kind).double() * valid).sum(1)
        if data.label_kind == "classification":
            correct += ((logits.argmax(-1) == y).double() * valid).sum(1)
    T = data.sizes.double()
    acc = correct / T if data.label_kind == "classification" else torch.full_like(T, float("nan"))
    return loss_sum / T, acc


# ------------------------------------------------------------------------------------------------------------
# the training loop
# ------------------------------------------------------------------------------------------------------------
@dataclass
class MemorizeResult:
    """Per model (in input order): metrics, the evaluation history, and the final (and best) weights."""
    metrics: list[dict]
    final_model: BatchedMHA
    best_model: BatchedMHA | None = None
    seconds: float = 0.0
    model_steps: int = 0              # sum over models of the steps trained (for throughput figures)
    history: list[list[tuple[int, float, float]]] = field(default_factory=list)


def memorize(model: BatchedMHA, datasets: Sequence[MemorizationData], seeds: Sequence[int], cfg: TrainConfig,
             *, keep_best: bool = False, log: Callable[[str], None] | None = None) -> MemorizeResult:
    """Train the K models of ``model`` on ``datasets`` (one per model) until each stops; see the module doc.

    ``seeds[k]`` seeds model k's minibatch order.  With ``keep_best`` the weights of each model's
    lowest-training-loss evaluation are also returned (the reference's reloaded "best checkpoint").
    """
    K = model.K
    if not (len(datasets) == len(seeds) == K):
        raise ValueError(f"memorize: {K} models but {len(datasets)} data sets and {len(seeds)} seeds")
    label_kind = datasets[0].label_kind
    device = model.W_E.device
    t0 = time.perf_counter()
    data = stack_data([ds.to(device, model.W_E.dtype) for ds in datasets])
    totals = torch.tensor([train_steps(ds.T, cfg) for ds in datasets], dtype=torch.long)
    streams = [IndexStream(ds.T, s) for ds, s in zip(datasets, seeds)]
    early = cfg.early_stop and label_kind == "classification"

    final = model.take(range(K))                      # result stores, written row by row as models finish
    best = model.take(range(K)) if keep_best else None
    metrics: list[dict] = [dict(T=ds.T, steps_planned=int(totals[k])) for k, ds in enumerate(datasets)]
    best_loss = torch.full((K,), float("inf"), dtype=torch.float64)
    history: list[list[tuple[int, float, float]]] = [[] for _ in range(K)]

    active = torch.arange(K)                           # original index of each row of the working model
    fused = cfg.attention == "fused" and model.mask == "v2"     # the v1 comparison mask runs through autograd
    if fused:
        work = FusedMHA(model, betas=cfg.betas, eps=cfg.eps)   # parameters and Adam state in one buffer
        opt = None
    else:
        work = model.take(range(K))
        opt = BatchedAdam(dict(work.named_parameters()), cfg.betas, cfg.eps)
    step, model_steps = 0, 0
    total_max = int(totals.max())
    while True:
        # ---- evaluation (step 0, every eval_every steps, and each model's last step) ----------------------
        if step % cfg.eval_every == 0 or bool((totals[active] == step).any()):
            loss, acc = evaluate(work, data, cfg.eval_chunk, cfg.attention)
            loss, acc = loss.cpu(), acc.cpu()
            done = torch.zeros(len(active), dtype=torch.bool)
            for r, k in enumerate(active.tolist()):
                history[k].append((step, float(loss[r]), float(acc[r])))
                if loss[r] < best_loss[k]:
                    best_loss[k] = loss[r]
                    metrics[k].update(loss_best=float(loss[r]), acc_best=_num(acc[r]), step_best=step)
                    if best is not None:
                        _write_rows(best, work, [r], [k])
                stop_early = early and float(acc[r]) == 1.0
                diverged = not math.isfinite(float(loss[r]))    # a diverged model stops; its best evaluation stays
                if stop_early or diverged or step >= int(totals[k]):
                    done[r] = True
                    metrics[k].update(loss_final=float(loss[r]), acc_final=_num(acc[r]), steps_trained=step,
                                      early_stopped=bool(stop_early), diverged=diverged)
            if done.any():
                rows = torch.nonzero(done).flatten()
                _write_rows(final, work, rows.tolist(), active[rows].tolist())
                keep = torch.nonzero(~done).flatten()
                if len(keep) == 0:
                    break
                if log is not None:
                    log(f"step {step}: {int(done.sum())} model(s) finished, {len(keep)} left")
                active = active[keep]
                keep_d = keep.to(device)
                data = data.take(keep_d)
                work = work.take(keep_d)
                if opt is not None:
                    opt = opt.take(keep_d, dict(work.named_parameters()))
                streams = [streams[i] for i in keep.tolist()]
        # ---- one chunk of steps, up to the next evaluation point ------------------------------------------
        next_eval = min((step // cfg.eval_every + 1) * cfg.eval_every,
                        int(totals[active][totals[active] > step].min()) if bool((totals[active] > step).any())
                        else total_max)
        n_steps = next_eval - step
        rows, weights = _draw(streams, n_steps, cfg.batch_size, device)
        lr_k = lr_at(torch.arange(step, next_eval)[:, None], totals[active][None, :], cfg)   # [n_steps, K_act]
        lr_k = lr_k.to(device)
        forward = forward_fn(work, cfg.attention)
        for i in range(n_steps):
            q, ctx, y = data.gather(rows[:, i])
            if fused:
                work.step(q, ctx, y, None if weights is None else weights[:, i], label_kind, lr_k[i])
                continue
            logits = forward(q, ctx)
            per_ex = per_example_loss(logits, y, label_kind)                    # [K_act, B]
            if weights is None:
                loss = per_ex.mean(1).sum()                                    # sum over models: own grads
            else:
                w = weights[:, i]
                loss = ((per_ex * w).sum(1) / w.sum(1)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step(lr_k[i])
        model_steps += n_steps * len(active)
        step = next_eval

    for k in range(K):
        metrics[k]["memorized"] = (metrics[k]["acc_best"] * metrics[k]["T"]
                                   if metrics[k].get("acc_best") is not None else None)
    seconds = time.perf_counter() - t0
    return MemorizeResult(metrics, final, best, seconds, model_steps, history)


def _num(x: torch.Tensor) -> float | None:
    v = float(x)
    return None if math.isnan(v) else v


@torch.no_grad()
def _write_rows(dst: BatchedMHA, src, src_rows: list[int], dst_rows: list[int]) -> None:
    if isinstance(src, FusedMHA):
        src.write_rows(dst, src_rows, dst_rows)
        return
    s = torch.as_tensor(src_rows, dtype=torch.long, device=src.W_E.device)
    d = torch.as_tensor(dst_rows, dtype=torch.long, device=dst.W_E.device)
    src_params = dict(src.named_parameters())
    for name, p in dst.named_parameters():
        p.data[d] = src_params[name].data[s]


def _draw(streams: list[IndexStream], steps: int, batch: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows [K, steps, batch] (and weights [K, steps, batch] or None) for the next ``steps`` steps."""
    parts = [s.next_batches(steps, batch) for s in streams]
    rows = torch.stack([p[0] for p in parts]).to(device)
    if all(p[1] is None for p in parts):
        return rows, None
    w = torch.stack([p[1] if p[1] is not None else torch.ones(steps, batch) for p in parts]).to(device)
    return rows, w

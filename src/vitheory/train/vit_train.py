"""Training the plain-torch ViT (models/vit.py) on images: SGD or AdamW, cosine schedule, deterministic.

    theta_{t+1} = theta_t - eta_t * step(grad L(theta_t)),  eta_t = eta_0 (1 + cos(pi t / T)) / 2

``L`` is the cross-entropy on mini-batches drawn by a seeded generator.  Project choices: a batch order from
``seeding.generator(seed, "vit-batches")``, no augmentation, gradient clipping at norm 1.  A non-finite loss
stops training with ``diverged = True`` (a failed trial, never a success).  ``device``: ``"auto"`` (cuda when
available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.  Weights are saved and loaded with safetensors (no pickle).
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vitheory.config import ConfigError
from vitheory.models.vit import ViT
from vitheory.seeding import generator


@dataclass(frozen=True)
class TrainResult:
    steps_run: int
    final_loss: float
    diverged: bool


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not (device == "cpu" or re.fullmatch(r"cuda(:\d{1,3})?", str(device))):
        raise ConfigError(f"device={device!r} is not one of auto, cpu, cuda, cuda:N")
    if device != "cpu" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but no CUDA device is available; allowed: auto, cpu, cuda, cuda:N")
    return torch.device(device)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W[, C])`` -> float ``[N, C, H, W]`` in [-1, 1]."""
    a = images if images.ndim == 4 else images[..., None]
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def train_vit(model: ViT, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, lr: float, seed: int,
              optimizer: str = "adamw", weight_decay: float = 0.05, device: str = "cpu",
              keep: torch.Tensor | None = None) -> TrainResult:
    """Train ``model`` in place on ``x [N, C, H, W]``, ``y [N]`` (``keep [N, K]``: kept patch tokens)."""
    if optimizer not in ("sgd", "adamw"):
        raise ConfigError(f"optimizer={optimizer!r} is not one of sgd, adamw")
    if not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"lr={lr} is out of range; allowed range: (0, inf)")
    dev = resolve_device(device)
    model.to(dev).train()
    params = model.parameters()
    opt = (torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay) if optimizer == "sgd"
           else torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / max(1, steps))))
    g = generator(seed, "vit-batches")
    loss_v = float("nan")
    for step in range(steps):
        idx = torch.randint(0, len(x), (min(batch, len(x)),), generator=g)
        xb, yb = x[idx].to(dev), y[idx].to(dev)
        kb = keep[idx].to(dev) if keep is not None else None
        loss = F.cross_entropy(model(xb, kb), yb)
        loss_v = float(loss.detach())
        if not math.isfinite(loss_v):
            return TrainResult(step, loss_v, True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return TrainResult(steps, loss_v, False)


@torch.no_grad()
def accuracy(model: ViT, x: torch.Tensor, y: torch.Tensor, keep: torch.Tensor | None = None,
             batch: int = 256) -> float:
    """Test accuracy; a non-finite logit counts as an error."""
    model.eval()
    dev = next(model.parameters()).device
    right = 0
    for i in range(0, len(x), batch):
        kb = keep[i:i + batch].to(dev) if keep is not None else None
        z = model(x[i:i + batch].to(dev), kb)
        ok = (z.argmax(1).cpu() == y[i:i + batch]) & torch.isfinite(z).all(1).cpu()
        right += int(ok.sum())
    return right / len(x)


def save_weights(model: ViT, path: str | os.PathLike) -> None:
    from safetensors.torch import save_file
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, os.fspath(path))


def load_weights(model: ViT, path: str | os.PathLike, skip_head: bool = False) -> ViT:
    """Load safetensors weights (shapes must match; ``skip_head`` keeps the model's own head)."""
    from safetensors.torch import load_file
    try:
        s = load_file(os.fspath(path))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ConfigError(f"weights {os.fspath(path)}: unreadable safetensors file ({e})") from None
    if skip_head:
        s = {k: v for k, v in s.items() if not k.startswith("head.")}
    own = model.state_dict()
    bad = [k for k, v in s.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise ConfigError(f"weights {os.fspath(path)}: parameters not matching the model: {', '.join(bad[:5])}")
    model.load_state_dict(s, strict=not skip_head)
    return model

"""What the two real-image experiments of paper 1 share (``spurious-tokens``: S10, ``sparsification-images``: S9
on images; shallow_vit.md sections 7 and 10.7): the config knobs of the data source, the mosaics, the ViT and its
training, the tile pools, and the tables of mean and band over seeds.

Data (project construction, :mod:`vitheory.data.spurious`): a sample is a 3 x 3 mosaic of tiles of side ``t``;
``k`` tiles are distinct images of the sample's class (alpha_* = k / 9), the other ``9 - k`` are crops of one of
10 grey scikit-image pictures.  In training a spurious tile's picture is ``y mod 10`` with probability
``spurious_strength`` (else uniform), at test it is uniform: the spurious tokens are correlated with the label
in training only.

Tile pools (project choice): the tiles are split once, by a permutation seeded with ``split_seed``, into three
disjoint pools (pixel-identical repeats dropped first) -- *pretrain* (the clean source of the pre-trained initial model), *train* (the tiles of the
training mosaics) and *test* (the tiles of the test mosaics).  animal-mnist and an image folder: 30 % / 50 % /
20 %; CIFAR-10: the test split is the test pool, its train split is cut 3 : 5 into pretrain and train.

Sources (``source``): ``animal-mnist`` (the offline default: 10,000 28 x 28 silhouettes of the installed
``animal-mnist`` wheel), ``cifar10`` (a local CIFAR-10 copy at ``cifar10_dir``, python or binary layout, md5
checked; the default of ``cifar10_dir`` is the environment variable ``VITHEORY_CIFAR10_DIR``, so that
``vitheory reproduce --scale paper`` can find it) or ``image_dir`` (a folder with one sub-folder per class, tiles resized to ``tile_size``).  The files
are read and checked by :func:`check_inputs`, before the run folder exists.
"""
from __future__ import annotations

import functools
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from vitheory.config import ConfigError, check_choice, check_range, knob
from vitheory.data.spurious import SLOTS, Mosaics, make_mosaics, spurious_sources, token_mask
from vitheory.seeding import derive_seed

PAPER1 = "Li, Wang, Liu, Chen · ICLR 2023 (shallow ViT)"
SOURCES = ("animal-mnist", "cifar10", "image_dir")
TILE = {"animal-mnist": 28, "cifar10": 32}
CIFAR10_ENV = "VITHEORY_CIFAR10_DIR"
#: smoke scale of both experiments: seconds
SMOKE = {"n_train": 200, "n_test": 100, "steps": 20, "dim": 16, "heads": 2, "seeds": 2, "batch_size": 32}


def k_of(name: str, alpha: float) -> int:
    """The number k of label-relevant tiles of alpha_* = k / 9 (alpha_* given to about 2 decimals)."""
    check_range(name, alpha, 0.0, 1.0, lo_open=True)
    k = round(alpha * SLOTS)
    if k < 1 or abs(alpha * SLOTS - k) > 0.05:
        raise ConfigError(f"{name}={alpha!r} is not allowed; the 3 x 3 mosaic gives alpha_* = k/9 for k = 1..9 "
                          f"(0.111, 0.222, 0.333, 0.444, 0.556, 0.667, 0.778, 0.889, 1), each in (0, 1]")
    return k


@dataclass(frozen=True)
class ImageConfig:
    source: str = knob("animal-mnist", "tile source: animal-mnist (offline, default), cifar10 (cifar10_dir) or "
                       "image_dir (a folder of class sub-folders)")
    cifar10_dir: str = knob(os.environ.get(CIFAR10_ENV, ""), "local CIFAR-10 copy (source=cifar10, the paper "
                            "scale): python or binary layout folder, its parent, or the .tar.gz; never downloaded; "
                            f"default: the environment variable {CIFAR10_ENV} when set (so that `vitheory reproduce "
                            "--scale paper` finds it), else empty")
    image_dir: str = knob("", "image folder with one sub-folder per class (source=image_dir)")
    tile_size: int = knob(32, "tile side for source=image_dir (animal-mnist: 28, CIFAR-10: 32)", project_choice=True)
    split_seed: int = knob(0, "seed of the permutation that splits the tiles into pretrain/train/test pools",
                           project_choice=True)
    spurious_strength: float = knob(0.9, "P(a spurious tile's picture is y mod 10) in training (test: uniform)",
                                    project_choice=True)
    n_train: int = knob(2000, "training mosaics per trial", project_choice=True)
    n_test: int = knob(1000, "test mosaics per trial (fresh, spurious tiles independent of the label)",
                       project_choice=True)
    steps: int = knob(300, "training steps (cosine schedule)", project_choice=True)
    batch_size: int = knob(64, "mini-batch size", project_choice=True)
    lr: float = knob(2e-3, "peak learning rate", project_choice=True)
    weight_decay: float = knob(0.05, "weight decay", project_choice=True)
    optimizer: str = knob("adamw", "adamw or sgd (momentum 0.9)", project_choice=True)
    dim: int = knob(32, "ViT width D", project_choice=True)
    depth: int = knob(1, "ViT depth (encoder blocks)", project_choice=True)
    heads: int = knob(2, "attention heads (must divide dim)", project_choice=True)
    mlp_ratio: float = knob(2.0, "MLP width / D", project_choice=True)
    patch_size: int = knob(0, "patch side; must divide the tile side (animal-mnist 28: 1, 2, 4, 7, 14, 28; "
                           "CIFAR-10 32: 1, 2, 4, 8, 16, 32) so that alpha_* stays k/9 of the tokens; 0 = half the "
                           "tile side (36 tokens)", project_choice=True)
    seeds: int = knob(2, "trials per point")

    @property
    def tile(self) -> int:
        return TILE.get(self.source, self.tile_size)

    @property
    def patch(self) -> int:
        """The patch side used: ``patch_size``, or half the tile side when it is 0."""
        return self.patch_size or self.tile // 2

    @property
    def n_patches(self) -> int:
        return (3 * self.tile // self.patch) ** 2

    def validate(self) -> None:
        check_choice("source", self.source, SOURCES)
        check_range("tile_size", self.tile_size, 8, 1024)
        check_range("split_seed", self.split_seed, 0, 2 ** 31 - 1)
        check_range("spurious_strength", self.spurious_strength, 0.0, 1.0)
        check_range("n_train", self.n_train, 1, 10_000_000)
        check_range("n_test", self.n_test, 1, 10_000_000)
        check_range("steps", self.steps, 1, 10_000_000)
        check_range("batch_size", self.batch_size, 1, 1_000_000)
        check_range("lr", self.lr, 0.0, 10.0, lo_open=True)
        check_range("weight_decay", self.weight_decay, 0.0, 10.0)
        check_choice("optimizer", self.optimizer, ("adamw", "sgd"))
        check_range("dim", self.dim, 1, 8192)
        check_range("depth", self.depth, 1, 64)
        check_range("heads", self.heads, 1, 256)
        if self.dim % self.heads:
            raise ConfigError(f"heads={self.heads} must divide dim={self.dim}; allowed: a divisor of {self.dim}")
        check_range("mlp_ratio", self.mlp_ratio, 0.0, 64.0, lo_open=True)
        check_range("patch_size", self.patch_size, 0, self.tile)
        if self.tile % self.patch:
            divs = [d for d in range(1, self.tile + 1) if self.tile % d == 0]
            raise ConfigError(f"patch_size={self.patch_size} does not divide the tile side {self.tile} "
                              f"(source={self.source}); allowed: {', '.join(map(str, divs))}")
        check_range("seeds", self.seeds, 1, 10_000)


# --------------------------------------------------------------------------------------------------------
# tile pools
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pools:
    """Disjoint tile pools ``(x (M, t, t[, C]) uint8, y (M,) int64)``: pretrain, train, test."""
    pretrain: tuple[np.ndarray, np.ndarray]
    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    n_classes: int
    channels: int
    description: str


def _unique(x: np.ndarray, y: np.ndarray, seen: set | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The images of ``x`` whose pixels occur for the first time (and not in ``seen``): animal-mnist holds 284
    pixel-identical repeats, which would otherwise fall into two pools."""
    seen = set() if seen is None else seen
    keep = []
    for i, row in enumerate(x.reshape(len(x), -1)):
        b = row.tobytes()
        if b not in seen:
            seen.add(b)
            keep.append(i)
    return x[keep], y[keep]


def _cut(x: np.ndarray, y: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    perm = np.random.default_rng(seed).permutation(len(x))     # the files are sorted by class
    ends = np.cumsum([0] + [round(f * len(x)) for f in fractions[:-1]] + [len(x)])
    ends[-1] = len(x)
    return [(x[perm[a:b]], y[perm[a:b]]) for a, b in zip(ends[:-1], ends[1:])]


@functools.lru_cache(maxsize=4)
def _pools(source: str, cifar10_dir: str, image_dir: str, tile_size: int, split_seed: int) -> Pools:
    if source == "animal-mnist":
        from vitheory.data.packaged import animal_mnist
        x, y = _unique(*animal_mnist())
        (pre, tr, te), what = _cut(x, y, (0.3, 0.5, 0.2), split_seed), f"animal-mnist ({len(x)} distinct 28x28 silhouettes of 10,000)"
    elif source == "cifar10":
        if not cifar10_dir.strip():
            raise ConfigError(f"cifar10_dir is empty; source=cifar10 (the paper scale) needs --set cifar10_dir=PATH "
                              f"or the environment variable {CIFAR10_ENV}=PATH: a local CIFAR-10 copy (python or "
                              "binary layout folder, its parent, or the .tar.gz; never downloaded)")
        from vitheory.data.cifar import read_cifar10
        a, b = read_cifar10(cifar10_dir, "train"), read_cifar10(cifar10_dir, "test")
        seen: set = set()
        pre, tr = _cut(*_unique(a.images, a.labels, seen), (0.375, 0.625), split_seed)
        te, what = _unique(b.images, b.labels, seen), a.source.replace(" train", "")
    else:
        if not image_dir.strip():
            raise ConfigError("image_dir is empty; source=image_dir needs image_dir=PATH, a folder with one "
                              "sub-folder per class")
        from vitheory.data.imageset import read_image_classes
        c = read_image_classes(image_dir, size=tile_size)
        (pre, tr, te), what = _cut(*_unique(c.images, c.labels), (0.3, 0.5, 0.2), split_seed), c.source
    ys = np.concatenate([pre[1], tr[1], te[1]])
    ch = 1 if pre[0].ndim == 3 else pre[0].shape[-1]
    return Pools(pre, tr, te, int(ys.max()) + 1, int(ch), what)


def pools(cfg: ImageConfig) -> Pools:
    return _pools(cfg.source, cfg.cifar10_dir, cfg.image_dir, cfg.tile_size, cfg.split_seed)


def check_inputs(cfg: ImageConfig) -> None:
    """Read the tiles (cached for ``run_trials``) and check every pool can build mosaics of 9 relevant tiles for
    at least 2 classes; missing or corrupt files, wrong checksums: one ConfigError, before the run folder."""
    p = pools(cfg)
    for name, (x, y) in (("pretrain", p.pretrain), ("train", p.train), ("test", p.test)):
        if x.shape[1:3] != (cfg.tile, cfg.tile):
            raise ConfigError(f"source={cfg.source}: tiles are {x.shape[1]}x{x.shape[2]}, expected {cfg.tile}x{cfg.tile}")
        counts = np.bincount(y, minlength=p.n_classes)
        if int((counts >= SLOTS).sum()) < 2:
            raise ConfigError(f"source={cfg.source}: the {name} pool ({len(x)} of the images) has fewer than 2 classes "
                              f"with {SLOTS} images; a mosaic needs up to {SLOTS} distinct images of its class "
                              f"(give more images per class)")
    _sources()


@functools.lru_cache(maxsize=1)
def _sources() -> tuple[np.ndarray, ...]:
    return tuple(spurious_sources())


# --------------------------------------------------------------------------------------------------------
# mosaics, model, training
# --------------------------------------------------------------------------------------------------------
def mosaics(cfg: ImageConfig, pool: tuple[np.ndarray, np.ndarray], n: int, k: int, train: bool, seed: int,
            tag: str) -> Mosaics:
    """``n`` mosaics with ``k`` relevant tiles; spurious tiles correlated with y when ``train``."""
    x, y = pool
    return make_mosaics(x, y, n, k, list(_sources()), cfg.spurious_strength, train, derive_seed(seed, tag, k))


def new_model(cfg: ImageConfig, p: Pools, seed: int, tag: str = "init"):
    """A fresh ViT whose weights depend only on ``(seed, tag)``."""
    import torch
    from vitheory.models.vit import ViT
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, tag) % (2 ** 63))
        return ViT(image_size=3 * cfg.tile, patch_size=cfg.patch, in_chans=p.channels, num_classes=p.n_classes,
                   dim=cfg.dim, depth=cfg.depth, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio)


def fit(cfg: ImageConfig, model, m: Mosaics, seed: int, device: str, keep=None, steps: int | None = None):
    """Train ``model`` in place on the mosaics ``m`` (``keep [N, K]``: kept patch tokens)."""
    import torch
    from vitheory.train.vit_train import to_tensor, train_vit
    return train_vit(model, to_tensor(m.images), torch.from_numpy(m.labels), cfg.steps if steps is None else steps,
                     cfg.batch_size, cfg.lr, seed, cfg.optimizer, cfg.weight_decay, device, keep)


def accuracy(model, m: Mosaics, keep=None) -> float:
    import torch
    from vitheory.train.vit_train import accuracy as acc, to_tensor
    return acc(model, to_tensor(m.images), torch.from_numpy(m.labels), keep)


def relevant_tokens(cfg: ImageConfig, m: Mosaics) -> np.ndarray:
    """``[N, n_patches]`` bool: patch tokens inside a label-relevant tile."""
    return token_mask(m.relevant, cfg.tile, cfg.patch).astype(bool)


def failed(t0: float, steps_run: int = 0, loss: float = math.nan) -> dict:
    return {"test_accuracy": math.nan, "train_accuracy": math.nan, "final_loss": float(loss),
            "steps_run": int(steps_run), "diverged": True, "seconds": time.perf_counter() - t0}


def weights_path(folder: str, seed: int) -> str:
    return os.path.join(folder, f"pretrained-seed{seed}.safetensors")


# --------------------------------------------------------------------------------------------------------
# analysis helpers
# --------------------------------------------------------------------------------------------------------
def band(df: pd.DataFrame, by: list[str], value: str = "test_accuracy") -> pd.DataFrame:
    """Mean, min and max of ``value`` over seeds (finite values only) and the count of failed trials."""
    g = df.assign(_ok=np.isfinite(df[value].astype(float))).groupby(by, sort=True)
    rows = []
    for key, sub in g:
        v = sub.loc[sub["_ok"], value].astype(float)
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), "mean": float(v.mean()) if len(v) else math.nan,
                     "min": float(v.min()) if len(v) else math.nan, "max": float(v.max()) if len(v) else math.nan,
                     "seeds": int(len(v)), "failed": int((~sub["_ok"]).sum())})
    return pd.DataFrame(rows)


def experiment_kwargs() -> dict:
    """What both experiments pass to :class:`~vitheory.experiments.base.Experiment` beyond their own parts:
    one batch per seed (shared work -- a pre-trained or full-token reference model -- is trained once a batch)."""
    return {"group_key": lambda t: t["seed"], "max_batch": lambda cfg: 10_000, "check_inputs": check_inputs}

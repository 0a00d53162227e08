"""Spurious-token mosaics for the real-data experiment S10 (project construction, shallow_vit.md section 10.7).

The paper's construction is not stated; the project's:

* every sample is a 3 x 3 mosaic of 9 tiles of side ``t`` (input ``3t x 3t``);
* ``k`` tiles (k in 1..9) are label-relevant: ``k`` distinct images of the sample's class at random slots, so the
  share of label-relevant tokens is alpha_* = k / 9 for any patch size dividing ``t``;
* the other ``9 - k`` tiles are spurious: random ``t x t`` crops of one of ``S`` texture/photograph sources.
  In training the source of each spurious tile is ``label mod S`` with probability ``strength`` and uniform
  otherwise (so the spurious tokens are correlated with the label); at test the source is uniform, independent
  of the label.  A model that relied on the spurious tokens loses accuracy at test; the fewer such tokens
  (larger alpha_*), the smaller the loss -- the paper's S10 trend.

Every slot's category is stored with the sample: ``relevant[n, s]`` (True = label-relevant) and
``source[n, s]`` (spurious source index, -1 for relevant slots); :func:`token_mask` expands them to patch
tokens.  The default spurious sources are the grey images of scikit-image's wheel (textures grass, gravel, brick
plus seven photographs): offline, and ten of them so each of ten classes has its own correlated source.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vitheory.config import ConfigError

SLOTS = 9  # 3 x 3 mosaic
GRID = 3
SPURIOUS_SOURCES = ("grass", "gravel", "brick", "moon", "camera", "coins", "text", "cell", "page", "coffee")


@dataclass(frozen=True)
class Mosaics:
    """``images (N, 3t, 3t, C) uint8``, ``labels (N,)``, per-slot ``relevant (N, 9) bool`` and
    ``source (N, 9) int64`` (-1 where relevant); ``k`` relevant slots per sample (alpha_* = k/9)."""
    images: np.ndarray
    labels: np.ndarray
    relevant: np.ndarray
    source: np.ndarray
    k: int

    @property
    def alpha_star(self) -> float:
        return self.k / SLOTS


def spurious_sources(names: tuple[str, ...] = SPURIOUS_SOURCES) -> list[np.ndarray]:
    """The named scikit-image images as grey ``(H, W) uint8`` arrays (shipped in the wheel, no download)."""
    import skimage.data
    out = []
    for n in names:
        a = np.asarray(getattr(skimage.data, n)())
        if a.ndim == 3:
            a = (a[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])).round().astype(np.uint8)
        out.append(a.astype(np.uint8))
    return out


def _crop(src: np.ndarray, t: int, rng: np.random.Generator) -> np.ndarray:
    H, W = src.shape[:2]
    y, x = rng.integers(0, H - t + 1), rng.integers(0, W - t + 1)
    return src[y:y + t, x:x + t]


def make_mosaics(images: np.ndarray, labels: np.ndarray, n: int, k: int, sources: list[np.ndarray],
                 strength: float, train: bool, seed: int) -> Mosaics:
    """``n`` mosaics with ``k`` label-relevant tiles from ``images (M, t, t[, C]) uint8`` with ``labels (M,)``.

    The label of a mosaic is uniform over the classes having at least ``k`` images; its ``k`` tiles are
    distinct images of that class.  Spurious tiles: source ``label mod S`` with probability ``strength`` when
    ``train`` else uniform; greyscale sources are repeated over the colour channels of ``images``."""
    if not 1 <= k <= SLOTS:
        raise ConfigError(f"k={k} is out of range; allowed range: 1..9 (alpha_* = k/9 in (0, 1])")
    if not 0.0 <= strength <= 1.0:
        raise ConfigError(f"spurious_strength={strength} is out of range; allowed range: [0, 1]")
    imgs = images if images.ndim == 4 else images[..., None]  # (M, t, t, C)
    M, t, t2, C = imgs.shape
    if t != t2:
        raise ConfigError(f"tiles must be square, found {t}x{t2}")
    S = len(sources)
    if S == 0 and k < SLOTS:
        raise ConfigError("spurious sources: none given, but k < 9 needs spurious tiles")
    for i, s in enumerate(sources):
        if min(s.shape[:2]) < t:
            raise ConfigError(f"spurious source {i} is {s.shape[:2]}, smaller than the tile side {t}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, dtype=np.int64)
    by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    classes = np.array(sorted(c for c, ix in by_class.items() if len(ix) >= k))
    if len(classes) == 0:
        raise ConfigError(f"no class has k={k} images")
    y = classes[rng.integers(0, len(classes), n)]  # (n,)
    relevant = np.zeros((n, SLOTS), dtype=bool)
    source = np.full((n, SLOTS), -1, dtype=np.int64)
    out = np.empty((n, GRID * t, GRID * t, C), dtype=np.uint8)
    for i in range(n):
        slots = rng.permutation(SLOTS)
        relevant[i, slots[:k]] = True
        picks = rng.choice(by_class[int(y[i])], size=k, replace=False)
        for s, j in zip(slots[:k], picks):
            r, c = divmod(int(s), GRID)
            out[i, r * t:(r + 1) * t, c * t:(c + 1) * t] = imgs[j]
        for s in slots[k:]:
            src = int(y[i]) % S if (train and rng.random() < strength) else int(rng.integers(0, S))
            source[i, s] = src
            r, c = divmod(int(s), GRID)
            out[i, r * t:(r + 1) * t, c * t:(c + 1) * t] = _crop(sources[src], t, rng)[..., None]
    return Mosaics(out, y, relevant, source, k)


def token_mask(slot_values: np.ndarray, tile: int, patch: int) -> np.ndarray:
    """Per-slot values ``(N, 9)`` expanded to patch tokens ``(N, (3 tile/patch)^2)`` in row-major patch order
    (the order of a ViT's patch embedding)."""
    if patch < 1 or tile % patch:
        raise ConfigError(f"patch_size={patch} does not divide the tile side {tile}")
    q = tile // patch
    g = slot_values.reshape(-1, GRID, GRID)
    g = np.repeat(np.repeat(g, q, axis=1), q, axis=2)  # (N, 3q, 3q)
    return g.reshape(len(slot_values), -1)

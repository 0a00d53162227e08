"""A labelled image folder: one sub-folder per class, every image centre-cropped square and resized.

Layout::

    ROOT/
      cat/   a.png b.jpg ...
      dog/   c.jpeg ...

Classes are the sub-folder names in sorted order (label ``k`` is the ``k``-th name); images within a class in
sorted file-name order.  Files are decoded with Pillow (matplotlib's image backend), converted to RGB,
centre-cropped to a square of the shorter side and resized bicubically to ``size x size``.  Names starting with
``.`` (``.DS_Store``, ``.ipynb_checkpoints``) are skipped.  A missing root, fewer than two classes, an empty class
folder, a loose file in the root, a file that is not an image, or one that does not decode: a ConfigError naming
the path.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from vitheory.config import ConfigError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class ClassImages:
    """uint8 images ``(N, size, size, 3)``, int64 labels ``(N,)``, class names (label order), file paths."""
    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    files: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.images)


def read_rgb(fp: str) -> np.ndarray:
    """One image file as uint8 RGB ``(H, W, 3)``; an unreadable file is one ConfigError naming it."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(fp) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ConfigError(f"{fp}: not a readable image ({e.__class__.__name__})") from None


def center_square(a: np.ndarray, size: int) -> np.ndarray:
    """The centred largest square of ``a``, resized (bicubic) to ``size x size``."""
    from PIL import Image
    H, W = a.shape[:2]
    m = min(H, W)
    y, x = (H - m) // 2, (W - m) // 2
    im = Image.fromarray(np.ascontiguousarray(a[y:y + m, x:x + m]))
    if im.size != (size, size):
        im = im.resize((size, size), Image.BICUBIC, reducing_gap=None)
    return np.asarray(im, dtype=np.uint8)


def _visible(names) -> list[str]:
    return sorted(f for f in names if not f.startswith("."))


def read_image_classes(root: str | os.PathLike, size: int = 32, max_per_class: int | None = None) -> ClassImages:
    """Every image under ``root/<class>/`` (see the module doc); at most ``max_per_class`` per class when given."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 8 <= size <= 4096:
        raise ConfigError(f"image_size={size!r} is out of range; allowed range: [8, 4096] (an integer)")
    if max_per_class is not None and (isinstance(max_per_class, bool) or not isinstance(max_per_class, (int, np.integer))
                                      or max_per_class < 1):
        raise ConfigError(f"max_per_class={max_per_class!r} is out of range; allowed range: [1, inf) (an integer)")
    p = os.fspath(root)
    if not os.path.isdir(p):
        raise ConfigError(f"image_dir={p}: no such folder")
    entries = _visible(os.listdir(p))
    loose = [f for f in entries if not os.path.isdir(os.path.join(p, f))]
    if loose:
        raise ConfigError(f"image_dir={p}: {os.path.join(p, loose[0])} is a file in the root; put images in one "
                          "sub-folder per class")
    classes = tuple(entries)
    if len(classes) < 2:
        raise ConfigError(f"image_dir={p}: {len(classes)} class folder(s) ({', '.join(classes) or 'none'}); "
                          "a classification set needs at least 2 (one sub-folder per class)")
    files: list[tuple[int, str]] = []
    for k, c in enumerate(classes):
        d = os.path.join(p, c)
        names = [f for f in _visible(os.listdir(d)) if os.path.isfile(os.path.join(d, f))]
        if not names:
            raise ConfigError(f"image_dir={p}: class folder {d} holds no images")
        for f in names:
            if not f.lower().endswith(IMAGE_EXTENSIONS):
                raise ConfigError(f"{os.path.join(d, f)}: not an image file (allowed: {', '.join(IMAGE_EXTENSIONS)})")
        files += [(k, os.path.join(d, f)) for f in (names if max_per_class is None else names[:max_per_class])]
    out = np.empty((len(files), size, size, 3), np.uint8)   # (N, size, size, RGB)
    for i, (_, fp) in enumerate(files):
        out[i] = center_square(read_rgb(fp), size)
    labels = np.array([k for k, _ in files], dtype=np.int64)
    return ClassImages(out, labels, classes, tuple(fp for _, fp in files), f"image folder {p} ({len(classes)} classes)")

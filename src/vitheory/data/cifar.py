"""CIFAR-10 from a local copy, and the 20 real CIFAR-10 test images shipped in the foolbox wheel.  No downloads.

:func:`read_cifar10` reads the two official layouts:

* *python* (``cifar-10-batches-py/``: ``data_batch_1`` .. ``data_batch_5``, ``test_batch``, ``batches.meta``):
  each batch a pickled dict with ``data`` (N x 3072 uint8: 1024 red, 1024 green, 1024 blue values, each plane
  32 x 32 row-major) and ``labels`` (N ints in 0..9); keys may be ``bytes`` (``b'data'``) or ``str``.  Read with
  :mod:`vitheory.data.safe_pickle`'s restricted unpickler, so a pickle naming any global beyond numpy's array
  reconstruction (``os.system``, ``builtins.exec``, ...) is refused before anything in it runs;
* *binary* (``cifar-10-batches-bin/``: ``data_batch_1.bin`` .. ``data_batch_5.bin``, ``test_batch.bin``): records
  of 1 label byte + 3072 pixel bytes in the same channel order;

given the layout folder itself, its parent, or the original ``.tar.gz`` (read without extracting).  Images come
back as uint8 ``(N, 32, 32, 3)``, labels as int64 ``(N,)``.

**Checksum rule** (``verify``): the published md5 of each python batch (torchvision's table, below) is checked

* ``verify="auto"`` (default): when the file has the official size of that batch (:data:`CIFAR_PY_SIZE`,
  e.g. 31035704 bytes for ``data_batch_1``), i.e. when it claims to be the official file; a file of another size
  (a subset or a test fixture) is read without an md5 check, still through the restricted unpickler and the
  shape/label checks;
* ``verify=True``: always (any other size is then a mismatch); ``verify=False``: never.

The binary layout has no per-file md5 in the sources we could check, so its files are checked by structure only
(a whole number of 3073-byte records, labels in 0..9).  Every problem -- missing folder, missing batch, wrong
checksum, truncated or corrupt batch, foreign globals -- is one :class:`~vitheory.config.ConfigError` naming the
file and the problem.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import re
import struct
import tarfile
from dataclasses import dataclass
from typing import Callable

import numpy as np

from vitheory.config import ConfigError
from vitheory.data.imageset import read_rgb
from vitheory.data.safe_pickle import UnsafePickleError, safe_load

#: published md5 of the python-layout files (as in torchvision.datasets.CIFAR10)
CIFAR_PY_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
#: sizes in bytes of the official python-layout files (directory listings of cifar-10-batches-py); they differ
#: per batch because the pickled file names differ in length
CIFAR_PY_SIZE = {
    "data_batch_1": 31035704, "data_batch_2": 31035320, "data_batch_3": 31035999, "data_batch_4": 31035696,
    "data_batch_5": 31035623, "test_batch": 31035526, "batches.meta": 158,
}
CIFAR_TRAIN = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")
CIFAR_TEST = ("test_batch",)
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
RECORD = 1 + 3072   # binary layout: label byte + 3 x 32 x 32 pixel bytes


@dataclass(frozen=True)
class LabelledImages:
    """uint8 images ``(N, 32, 32, 3)``, int64 labels ``(N,)``, and where they came from."""
    images: np.ndarray
    labels: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.images)


# --------------------------------------------------------------------------------------------------
# one batch
# --------------------------------------------------------------------------------------------------
def restricted_unpickle(data: bytes, where: str):
    """:func:`safe_load` of ``data``, every failure turned into one ConfigError naming ``where``."""
    try:
        return safe_load(data)
    except UnsafePickleError as e:
        raise ConfigError(f"{where}: refused: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            struct.error, OverflowError, MemoryError) as e:
        raise ConfigError(f"{where}: truncated or corrupt pickle ({e.__class__.__name__}: {e})") from None


def _check_md5(data: bytes, where: str, member: str, verify) -> None:
    if member not in CIFAR_PY_MD5 or verify is False:
        return
    if verify == "auto" and len(data) != CIFAR_PY_SIZE[member]:
        return
    h = hashlib.md5(data).hexdigest()
    if h != CIFAR_PY_MD5[member]:
        raise ConfigError(f"{where}: md5 {h} differs from the published {CIFAR_PY_MD5[member]} "
                          f"({len(data)} bytes; the official file has {CIFAR_PY_SIZE[member]}): a damaged or "
                          "modified copy; pass verify=False to read it anyway (still with the restricted unpickler)")


def python_batch(data: bytes, where: str, member: str = "", verify="auto") -> tuple[np.ndarray, np.ndarray]:
    """One python-layout batch (the file's bytes) -> images (N, 32, 32, 3) uint8, labels (N,) int64."""
    _check_md5(data, where, member, verify)
    obj = restricted_unpickle(data, where)
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: not a CIFAR-10 batch (a {type(obj).__name__}, not a dict)")
    obj = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    if "data" not in obj or "labels" not in obj:
        raise ConfigError(f"{where}: not a CIFAR-10 batch (keys {sorted(map(str, obj))}; need 'data' and 'labels')")
    try:
        y = np.asarray(obj["labels"])
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: CIFAR-10 labels are not a list of integers ({e})") from None
    return _validate(obj["data"], y, where)


def binary_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One binary-layout batch: records of 1 label byte + 3072 pixel bytes."""
    if len(data) == 0 or len(data) % RECORD:
        raise ConfigError(f"{where}: {len(data)} bytes is not a whole number of {RECORD}-byte CIFAR-10 records "
                          "(truncated or not a CIFAR-10 binary batch)")
    raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD)
    return _validate(raw[:, 1:], raw[:, 0], where)


def _validate(x, y, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        raise ConfigError(f"{where}: CIFAR-10 data must be uint8 of shape (N, 3072); got "
                          f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', None)}")
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer) or (y.size and (y.min() < 0 or y.max() > 9)):
        raise ConfigError(f"{where}: CIFAR-10 labels must be {x.shape[0]} integers in 0..9")
    imgs = x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)   # (N, C, H, W) planes -> (N, H, W, C)
    return np.ascontiguousarray(imgs), y.astype(np.int64)


# --------------------------------------------------------------------------------------------------
# a local copy
# --------------------------------------------------------------------------------------------------
def _check_verify(verify) -> None:
    if verify not in ("auto", True, False):
        raise ConfigError(f"verify={verify!r} is not allowed; choose one of 'auto', True, False")


def _tar_readers(p: str, members_py, members_bin, split: str):
    try:
        tf = tarfile.open(p, "r:*")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ConfigError(f"CIFAR-10 path {p}: not a readable tar archive ({e})") from None
    try:
        with tf:
            names = {os.path.basename(m.name): m for m in tf.getmembers() if m.isfile()}
            if all(m in names for m in members_py):
                layout, wanted = "python", members_py
            elif all(m in names for m in members_bin):
                layout, wanted = "binary", members_bin
            else:
                raise ConfigError(f"CIFAR-10 archive {p}: holds neither the python nor the binary {split} batches")
            blobs = {}
            for m in wanted:
                f = tf.extractfile(names[m])
                blobs[m] = f.read() if f is not None else b""
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ConfigError(f"CIFAR-10 archive {p}: truncated or corrupt ({e})") from None
    return layout, [(f"{p}:{m}", (lambda b=blobs[m]: b), m) for m in wanted]


def _folder_readers(p: str, members_py, members_bin, split: str):
    for c in (p, os.path.join(p, "cifar-10-batches-py"), os.path.join(p, "cifar-10-batches-bin")):
        if not os.path.isdir(c):
            continue
        for layout, wanted in (("python", members_py), ("binary", members_bin)):
            if all(os.path.isfile(os.path.join(c, m)) for m in wanted):
                def reader(fp):
                    def read():
                        try:
                            with open(fp, "rb") as fh:
                                return fh.read()
                        except OSError as e:
                            raise ConfigError(f"{fp}: cannot read ({e})") from None
                    return read
                return layout, [(os.path.join(c, m), reader(os.path.join(c, m)), m) for m in wanted]
    raise ConfigError(f"CIFAR-10 path {p}: no {split} batches found ({', '.join(members_py)} for the python layout, "
                      f"or {', '.join(members_bin)} for the binary layout, in the folder or in "
                      "cifar-10-batches-py/ or cifar-10-batches-bin/ under it)")


def read_cifar10(path: str | os.PathLike, split: str = "train", n: int | None = None,
                 verify="auto") -> LabelledImages:
    """CIFAR-10 ``split`` ("train": 5 data batches, "test": test_batch) from a local copy (see the module doc).

    ``n``: keep the first ``n`` images (reads only the batches needed).  ``verify``: the checksum rule of the module
    doc ("auto": md5 checked when a file has its official size).  Raises ConfigError naming the file and problem.
    """
    if split not in ("train", "test"):
        raise ConfigError(f"split={split!r} is not allowed; choose one of train, test")
    _check_verify(verify)
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise ConfigError(f"n_images={n!r} is out of range; allowed range: [1, inf) (an integer)")
    p = os.fspath(path)
    if not os.path.exists(p):
        raise ConfigError(f"CIFAR-10 path {p}: no such file or folder")
    members_py = CIFAR_TRAIN if split == "train" else CIFAR_TEST
    members_bin = tuple(m + ".bin" for m in members_py)
    readers: list[tuple[str, Callable[[], bytes], str]]
    if os.path.isfile(p):
        layout, readers = _tar_readers(p, members_py, members_bin, split)
    else:
        layout, readers = _folder_readers(p, members_py, members_bin, split)
    xs, ys, total = [], [], 0
    for where, read, member in readers:
        data = read()
        x, y = python_batch(data, where, member, verify) if layout == "python" else binary_batch(data, where)
        xs.append(x)
        ys.append(y)
        total += len(x)
        if n is not None and total >= n:
            break
    imgs, labels = np.concatenate(xs), np.concatenate(ys)
    if n is not None:
        if n > len(imgs):
            raise ConfigError(f"n_images={n} is out of range; the CIFAR-10 {split} split at {p} has {len(imgs)} images")
        imgs, labels = imgs[:n], labels[:n]
    return LabelledImages(imgs, labels, f"CIFAR-10 {layout} {split} at {p}")


# --------------------------------------------------------------------------------------------------
# the 20 CIFAR-10 test images in the foolbox wheel
# --------------------------------------------------------------------------------------------------
FOOLBOX_PIN = "foolbox==3.3.4"
_FOOLBOX_NAME = re.compile(r"^cifar10_(\d+)_(\d)\.png$")   # cifar10_<index>_<label>.png


def foolbox_data_dir() -> str:
    """The ``foolbox/data`` folder of the installed foolbox wheel, found with ``importlib.util.find_spec`` (which
    locates a top-level package without importing it: foolbox's own dependencies need not be installed)."""
    try:
        spec = importlib.util.find_spec("foolbox")
    except (ImportError, ValueError):
        spec = None
    locs = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locs:
        d = os.path.join(loc, "data")
        if os.path.isdir(d):
            return d
    raise ConfigError(f"foolbox's sample images are not installed: pip install --no-deps '{FOOLBOX_PIN}' "
                      "(its 20 CIFAR-10 test images are read from the wheel's data folder; foolbox is never imported)")


def foolbox_cifar10() -> LabelledImages:
    """The 20 real CIFAR-10 test images of foolbox 3.3.4 (``foolbox/data/cifar10_<i>_<label>.png``), in index
    order: uint8 ``(20, 32, 32, 3)`` and int64 labels taken from the file names.  Too few to train on; real pixels
    for reader and model checks."""
    d = foolbox_data_dir()
    found = sorted((int(m.group(1)), int(m.group(2)), f) for f in os.listdir(d) if (m := _FOOLBOX_NAME.match(f)))
    if not found:
        raise ConfigError(f"{d}: no cifar10_<index>_<label>.png files (is this foolbox 3.3.4? pip install --no-deps "
                          f"'{FOOLBOX_PIN}')")
    imgs = np.empty((len(found), 32, 32, 3), np.uint8)
    for i, (_, _, f) in enumerate(found):
        fp = os.path.join(d, f)
        a = read_rgb(fp)
        if a.shape != (32, 32, 3):
            raise ConfigError(f"{fp}: a CIFAR-10 image must be 32 x 32 RGB; got shape {a.shape}")
        imgs[i] = a
    labels = np.array([lab for _, lab, _ in found], dtype=np.int64)
    return LabelledImages(imgs, labels, f"foolbox CIFAR-10 test images at {d}")

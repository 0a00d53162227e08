"""Offline image sources for the ViT checks: package photographs, an image folder, or CIFAR-10 on disk.

Nothing here downloads anything.

* :func:`package_crops` (the default source): distinct random crops of the real photographs shipped inside
  installed packages -- scikit-image's ``skimage.data`` photographs, scikit-learn's two sample images and
  matplotlib's ``grace_hopper.jpg`` (synthetic images such as ``checkerboard`` or ``logo`` are excluded).
  Crop sides are uniform in ``[min_frac, 1]`` of the photograph's shorter side (project choice:
  ``min_frac = 0.2``), positions uniform, a horizontal flip with probability 1/2, then a resize to
  ``size x size``; every (photograph, box, flip) is distinct.  About 22 photographs, so thousands of crops are
  distinct but not independent images: representations of crops of one photograph are correlated.
* :func:`folder_images`: every ``.jpg/.jpeg/.png/.bmp/.gif/.tif/.tiff/.webp`` file in a folder (sorted by name),
  centre-cropped to a square and resized.
* :func:`noise_images`: i.i.d. uniform pixels, a diagnostic (not real images).
* :func:`load_cifar10`: CIFAR-10 from a local copy in the standard *python* layout (``cifar-10-batches-py``,
  pickles read by a restricted unpickler that only admits numpy's array-reconstruction globals, after an md5
  check) or *binary* layout (``cifar-10-batches-bin``, plain bytes), as a folder or the original ``.tar.gz``.

Images are returned as ``uint8`` arrays of shape ``(N, H, W, 3)``.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from vitheory.config import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

#: skimage.data photographs available offline in scikit-image's wheel (real photographs only)
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                  "retina", "camera", "coins", "moon", "brick", "grass", "gravel", "cell", "clock", "page", "text",
                  "microaneurysms")

CIFAR_PY_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
CIFAR_TRAIN = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")
CIFAR_TEST = ("test_batch",)
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class ImageSet:
    """Images ``(N, H, W, 3)`` uint8 with one provenance string per image (e.g. ``"coffee[12:301,40:329]"``)."""
    images: np.ndarray
    names: tuple[str, ...]
    source: str
    labels: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.images)


# --------------------------------------------------------------------------------------------------
# package photographs
# --------------------------------------------------------------------------------------------------
def _rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.uint8:
        a = np.clip(a * (255.0 if a.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.shape[2] == 4:
        a = a[:, :, :3]
    return np.ascontiguousarray(a)


def package_photographs() -> list[tuple[str, np.ndarray]]:
    """The real photographs shipped inside installed packages, as (name, RGB uint8 array) pairs.

    Needs scikit-image (the ``vit`` extra) for most of them; scikit-learn and matplotlib add three more.
    Raises ConfigError if none can be loaded.
    """
    import warnings
    out: list[tuple[str, np.ndarray]] = []
    try:
        import skimage.data as skd
        for name in SKIMAGE_PHOTOS:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out.append((name, _rgb(getattr(skd, name)())))
            except Exception:  # a photograph missing from this scikit-image version (or needing a download)
                continue
        try:
            left, right, _ = skd.stereo_motorcycle()
            out += [("motorcycle_left", _rgb(left)), ("motorcycle_right", _rgb(right))]
        except Exception:
            pass
    except ImportError:
        pass
    try:
        from sklearn.datasets import load_sample_images
        ds = load_sample_images()
        for fname, img in zip(ds.filenames, ds.images):
            out.append((os.path.splitext(os.path.basename(fname))[0], _rgb(img)))
    except ImportError:
        pass
    try:
        import matplotlib
        p = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
        if os.path.isfile(p):
            from PIL import Image
            with Image.open(p) as im:
                out.append(("grace_hopper", _rgb(np.asarray(im.convert("RGB")))))
    except ImportError:
        pass
    if not out:
        raise ConfigError("no package photographs found: install the vit extra (pip install 'vitheory[vit]') "
                          "for scikit-image and scikit-learn, or use an image folder")
    return out


def _resize(a: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image
    im = Image.fromarray(a)
    if im.size != (size, size):
        im = im.resize((size, size), Image.BICUBIC, reducing_gap=None)
    return np.asarray(im, dtype=np.uint8)


def package_crops(n: int, size: int = 224, seed: int = 0, min_frac: float = 0.2,
                  photos: list[tuple[str, np.ndarray]] | None = None) -> ImageSet:
    """``n`` distinct random crops of the package photographs, resized to ``size x size`` (see module doc)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"n_images={n!r} is out of range; allowed range: [1, inf) (an integer)")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 8 <= size <= 4096:
        raise ConfigError(f"image_size={size!r} is out of range; allowed range: [8, 4096]")
    if not 0.0 < min_frac <= 1.0:
        raise ConfigError(f"min_frac={min_frac!r} is out of range; allowed range: (0, 1]")
    photos = photos if photos is not None else package_photographs()
    rng = np.random.default_rng(seed)
    seen: set = set()
    imgs = np.empty((n, size, size, 3), dtype=np.uint8)
    names: list[str] = []
    attempts = 0
    i = 0
    while i < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ConfigError(f"cannot make {n} distinct crops from {len(photos)} photographs; ask for fewer")
        p = i % len(photos) if attempts <= n else int(rng.integers(len(photos)))
        name, img = photos[p]
        H, W = img.shape[:2]
        m = min(H, W)
        side = int(rng.integers(max(8, int(round(min_frac * m))), m + 1))
        y = int(rng.integers(0, H - side + 1))
        x = int(rng.integers(0, W - side + 1))
        flip = bool(rng.integers(2))
        key = (p, y, x, side, flip)
        if key in seen:
            continue
        seen.add(key)
        crop = img[y:y + side, x:x + side]
        if flip:
            crop = crop[:, ::-1]
        imgs[i] = _resize(np.ascontiguousarray(crop), size)
        names.append(f"{name}[{y}:{y + side},{x}:{x + side}]{'f' if flip else ''}")
        i += 1
    return ImageSet(imgs, tuple(names), f"package photographs ({len(photos)} sources), seed {seed}")


# --------------------------------------------------------------------------------------------------
# image folder
# --------------------------------------------------------------------------------------------------
def folder_images(path: str | os.PathLike, n: int | None = None, size: int = 224) -> ImageSet:
    """The first ``n`` (all when None) images of a folder by sorted file name, centre-cropped square, resized."""
    from PIL import Image, UnidentifiedImageError
    p = os.fspath(path)
    if not os.path.isdir(p):
        raise ConfigError(f"image folder {p}: no such folder")
    files = sorted(f for f in os.listdir(p) if f.lower().endswith(IMAGE_EXTENSIONS)
                   and os.path.isfile(os.path.join(p, f)))
    if not files:
        raise ConfigError(f"image folder {p}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ConfigError(f"n_images={n!r} is out of range; allowed range: [1, inf) (an integer)")
        if n > len(files):
            raise ConfigError(f"n_images={n} is out of range; image folder {p} has {len(files)} images")
        files = files[:n]
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, f in enumerate(files):
        fp = os.path.join(p, f)
        try:
            with Image.open(fp) as im:
                a = np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise ConfigError(f"{fp}: not a readable image ({e.__class__.__name__})") from None
        H, W = a.shape[:2]
        m = min(H, W)
        y, x = (H - m) // 2, (W - m) // 2
        out[i] = _resize(np.ascontiguousarray(a[y:y + m, x:x + m]), size)
    return ImageSet(out, tuple(files), f"folder {p}")



def class_folder_images(path: str | os.PathLike, size: int = 32) -> tuple[ImageSet, tuple[str, ...]]:
    """A labelled image folder: one sub-folder per class (classes sorted by name, label = index), every image
    file in it read by :func:`folder_images`.  Returns ``(images with labels (N,) int64, class names)``."""
    p = os.fspath(path)
    if not os.path.isdir(p):
        raise ConfigError(f"image_dir {p}: no such folder (expected one sub-folder per class)")
    classes = tuple(sorted(c for c in os.listdir(p) if os.path.isdir(os.path.join(p, c))))
    if len(classes) < 2:
        raise ConfigError(f"image_dir {p}: found {len(classes)} class sub-folders; at least 2 are needed")
    parts, labels, names = [], [], []
    for k, c in enumerate(classes):
        s = folder_images(os.path.join(p, c), size=size)  # raises ConfigError on an empty class folder
        parts.append(s.images)
        labels.append(np.full(len(s.images), k, dtype=np.int64))
        names.extend(os.path.join(c, f) for f in s.names)
    return (ImageSet(np.concatenate(parts), tuple(names), f"class folder {p}", labels=np.concatenate(labels)),
            classes)

# --------------------------------------------------------------------------------------------------
# CIFAR-10 from a local copy
# --------------------------------------------------------------------------------------------------
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler whose class lookup admits only numpy's array-reconstruction globals (project choice, see
    dependencies.md 5.3): ``ndarray``, ``dtype`` and ``multiarray._reconstruct`` under both the numpy 1.x
    ``numpy.core`` and the numpy 2.x ``numpy._core`` paths.  Everything else is refused, so a pickle cannot
    run code chosen by its author."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR-10 batch")
        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy 1.x
                from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
            return _reconstruct
        return getattr(np, name)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed in a CIFAR-10 batch")


def restricted_unpickle(data: bytes, where: str):
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise ConfigError(f"{where}: refused or corrupt CIFAR-10 python batch ({e})") from None


def _python_batch(data: bytes, where: str, verify_md5: bool, member: str) -> tuple[np.ndarray, np.ndarray]:
    if verify_md5 and member in CIFAR_PY_MD5:
        h = hashlib.md5(data).hexdigest()
        if h != CIFAR_PY_MD5[member]:
            raise ConfigError(f"{where}: md5 {h} differs from the published {CIFAR_PY_MD5[member]}; "
                              "pass verify_md5=False to read a modified copy (still with the restricted unpickler)")
    obj = restricted_unpickle(data, where)
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: not a CIFAR-10 batch (a {type(obj).__name__}, not a dict)")
    obj = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    if "data" not in obj or "labels" not in obj:
        raise ConfigError(f"{where}: not a CIFAR-10 batch (keys {sorted(obj)}; need 'data' and 'labels')")
    x, y = obj["data"], np.asarray(obj["labels"])
    return _validate_cifar(x, y, where)


def _binary_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    if len(data) == 0 or len(data) % 3073:
        raise ConfigError(f"{where}: {len(data)} bytes is not a whole number of 3073-byte CIFAR-10 records")
    raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3073)
    return _validate_cifar(raw[:, 1:], raw[:, 0], where)


def _validate_cifar(x, y, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        shape = getattr(x, "shape", None)
        raise ConfigError(f"{where}: CIFAR-10 data must be uint8 of shape (N, 3072); got "
                          f"{getattr(x, 'dtype', type(x).__name__)} {shape}")
    y = np.asarray(y)
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer) or (y.size and (y.min() < 0 or y.max() > 9)):
        raise ConfigError(f"{where}: CIFAR-10 labels must be {x.shape[0]} integers in 0..9")
    imgs = x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(imgs), y.astype(np.int64)


def load_cifar10(path: str | os.PathLike, split: str = "train", n: int | None = None,
                 verify_md5: bool = True) -> ImageSet:
    """CIFAR-10 images (N, 32, 32, 3) uint8 and labels from a local copy; never downloads.

    ``path``: a ``cifar-10-batches-py`` or ``cifar-10-batches-bin`` folder, a folder containing one, or the
    original ``cifar-10-python.tar.gz`` / ``cifar-10-binary.tar.gz`` (read without extracting).
    """
    if split not in ("train", "test"):
        raise ConfigError(f"split={split!r} is not allowed; choose one of train, test")
    p = os.fspath(path)
    if not os.path.exists(p):
        raise ConfigError(f"CIFAR-10 path {p}: no such file or folder")
    members_py = CIFAR_TRAIN if split == "train" else CIFAR_TEST
    members_bin = tuple(m + ".bin" for m in members_py)
    readers: list[tuple[str, Callable[[], bytes], str]] = []   # (where, read, member)
    layout = None
    if os.path.isfile(p):
        try:
            tf = tarfile.open(p, "r:*")
        except (tarfile.TarError, OSError) as e:
            raise ConfigError(f"CIFAR-10 path {p}: not a readable tar archive ({e})") from None
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
        readers = [(f"{p}:{m}", (lambda b=blobs[m]: b), m) for m in wanted]
    else:
        cands = [p, os.path.join(p, "cifar-10-batches-py"), os.path.join(p, "cifar-10-batches-bin")]
        for c in cands:
            if os.path.isdir(c) and all(os.path.isfile(os.path.join(c, m)) for m in members_py):
                layout, folder, wanted = "python", c, members_py
                break
            if os.path.isdir(c) and all(os.path.isfile(os.path.join(c, m)) for m in members_bin):
                layout, folder, wanted = "binary", c, members_bin
                break
        if layout is None:
            raise ConfigError(f"CIFAR-10 path {p}: no {split} batches found ({', '.join(members_py)} for the python "
                              f"layout, or {', '.join(members_bin)} for the binary layout)")

        def _reader(fp):
            def read():
                try:
                    with open(fp, "rb") as fh:
                        return fh.read()
                except OSError as e:
                    raise ConfigError(f"{fp}: cannot read ({e})") from None
            return read
        readers = [(os.path.join(folder, m), _reader(os.path.join(folder, m)), m) for m in wanted]
    xs, ys = [], []
    total = 0
    for where, read, member in readers:
        data = read()
        x, y = (_python_batch(data, where, verify_md5, member) if layout == "python" else _binary_batch(data, where))
        xs.append(x)
        ys.append(y)
        total += len(x)
        if n is not None and total >= n:
            break
    imgs, labels = np.concatenate(xs), np.concatenate(ys)
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ConfigError(f"n_images={n!r} is out of range; allowed range: [1, inf) (an integer)")
        if n > len(imgs):
            raise ConfigError(f"n_images={n} is out of range; the CIFAR-10 {split} split at {p} has {len(imgs)} images")
        imgs, labels = imgs[:n], labels[:n]
    return ImageSet(imgs, tuple(f"cifar10-{split}[{i}]" for i in range(len(imgs))), f"CIFAR-10 {layout} {split} at {p}",
                    labels)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 (N, H, W, 3) batch to (N, size, size, 3) (bicubic)."""
    if images.shape[1:3] == (size, size):
        return images
    return np.stack([_resize(np.ascontiguousarray(a), size) for a in images])


def noise_images(n: int, size: int = 224, seed: int = 0) -> ImageSet:
    """``n`` images of i.i.d. uniform pixels: a diagnostic input, not real images (maximally diverse inputs show
    whether a representation itself limits the ranks, or the image set does)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"n_images={n!r} is out of range; allowed range: [1, inf) (an integer)")
    rng = np.random.default_rng(seed)
    return ImageSet(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                    tuple(f"noise[{i}]" for i in range(n)), f"i.i.d. uniform noise images (diagnostic), seed {seed}")


def load_images(source: str, n: int, size: int = 224, seed: int = 0) -> ImageSet:
    """Dispatch on ``source``: ``"package"`` (crops of package photographs), ``"folder:PATH"``,
    ``"cifar10:PATH"`` (train split, upsampled to ``size``) or ``"noise"`` (a diagnostic)."""
    if source == "package":
        return package_crops(n, size, seed)
    if source == "noise":
        return noise_images(n, size, seed)
    if source.startswith("folder:"):
        return folder_images(source[len("folder:"):], n, size)
    if source.startswith("cifar10:"):
        s = load_cifar10(source[len("cifar10:"):], "train", n)
        return ImageSet(resize_images(s.images, size), s.names, s.source, s.labels)
    raise ConfigError(f"image_source={source!r} is not allowed; use package, folder:PATH, cifar10:PATH or noise")

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
  pickles read by a restricted unpickler that only admits numpy's array-reconstruction globals, md5 checked when
  a batch has its official size) or *binary* layout (``cifar-10-batches-bin``, plain bytes), as a folder or the
  original ``.tar.gz``; the reader is :mod:`vitheory.data.cifar`.

Images are returned as ``uint8`` arrays of shape ``(N, H, W, 3)``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from vitheory.config import ConfigError
from vitheory.data.cifar import read_cifar10
from vitheory.data.imageset import center_square, read_rgb

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

#: skimage.data photographs available offline in scikit-image's wheel (real photographs only)
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                  "retina", "camera", "coins", "moon", "brick", "grass", "gravel", "cell", "clock", "page", "text",
                  "microaneurysms")



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
    out += foolbox_photographs()
    if not out:
        raise ConfigError("no package photographs found: install the vit extra (pip install 'vitheory[vit]') "
                          "for scikit-image and scikit-learn, or use an image folder")
    return out


FOOLBOX_PREFIXES = ("imagenet_", "cifar10_", "cifar100_")


def foolbox_photographs() -> list[tuple[str, np.ndarray]]:
    """The 20 ImageNet, 20 CIFAR-10 and 20 CIFAR-100 sample images shipped in the foolbox 3.3.4 wheel.

    The files are read from the installed package's folder (found with importlib.util.find_spec, which does not
    import foolbox); the label is the last field of each file name, e.g. ``imagenet_03_990.jpg``.  Returns [] when
    foolbox is not installed (``pip install --no-deps foolbox==3.3.4`` adds them).
    """
    import importlib.util
    try:
        spec = importlib.util.find_spec("foolbox")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return []
    from PIL import Image
    out = []
    for root in spec.submodule_search_locations:
        folder = os.path.join(root, "data")
        if not os.path.isdir(folder):
            continue
        for fname in sorted(os.listdir(folder)):
            stem, ext = os.path.splitext(fname)
            if not fname.startswith(FOOLBOX_PREFIXES) or ext.lower() not in (".png", ".jpg", ".jpeg"):
                continue
            try:
                with Image.open(os.path.join(folder, fname)) as im:
                    out.append((f"foolbox_{stem}", _rgb(np.asarray(im.convert("RGB")))))
            except OSError:   # an unreadable file: skip it, the others still count
                continue
    return out


def distinct_sources(names) -> int:
    """Number of distinct source images behind image names: crops ``photo[y0:y1,x0:x1]`` (and flips) of one
    photograph count once; every other name (a folder file, ``cifar10-train#12``, ``noise#3``) is its own source."""
    return len({str(nm).split("[", 1)[0] for nm in names})


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
        out[i] = center_square(read_rgb(os.path.join(p, f)), size)
    return ImageSet(out, tuple(files), f"folder {p}")


def load_cifar10(path: str | os.PathLike, split: str = "train", n: int | None = None,
                 verify_md5="auto") -> ImageSet:
    """CIFAR-10 images (N, 32, 32, 3) uint8 and labels from a local copy as an :class:`ImageSet`; never downloads.

    See :func:`vitheory.data.cifar.read_cifar10` for the layouts and the checksum rule (``verify_md5``: "auto",
    the default, checks the md5 of a python batch that has its official size; True always; False never).
    """
    s = read_cifar10(path, split, n, verify_md5)
    return ImageSet(s.images, tuple(f"cifar10-{split}#{i}" for i in range(len(s))), s.source, s.labels)


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
                    tuple(f"noise#{i}" for i in range(n)), f"i.i.d. uniform noise images (diagnostic), seed {seed}")


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

"""Offline image sources: package photographs, image folders, CIFAR-10 (python and binary layouts)."""
import importlib.util
import os
import pickle
import tarfile

import numpy as np
import pytest

from vitheory.config import ConfigError
from vitheory.data.cifar import restricted_unpickle
from vitheory.data.images import folder_images, load_cifar10, load_images, package_crops, package_photographs

HAS_SKIMAGE = importlib.util.find_spec("skimage") is not None


@pytest.fixture(scope="module")
def photos():
    if not HAS_SKIMAGE and importlib.util.find_spec("sklearn") is None:
        pytest.skip("needs scikit-image or scikit-learn")
    return package_photographs()


def test_package_photographs_are_real_rgb(photos):
    names = [n for n, _ in photos]
    assert len(set(names)) == len(names)
    if HAS_SKIMAGE:
        assert {"astronaut", "coffee", "rocket"} <= set(names) and len(photos) >= 15
        assert not {"checkerboard", "logo", "binary_blobs", "colorwheel"} & set(names)
    for n, a in photos:   # foolbox's CIFAR samples are 32 x 32; every other source is a full photograph
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
        assert min(a.shape[:2]) >= (32 if n.startswith("foolbox_cifar") else 64)


def test_package_crops_distinct_and_seeded(photos):
    s = package_crops(120, 48, seed=3, photos=photos)
    assert s.images.shape == (120, 48, 48, 3) and s.images.dtype == np.uint8
    assert len(set(s.names)) == 120
    flat = s.images.reshape(120, -1)
    assert len({r.tobytes() for r in flat}) == 120                     # distinct pixels too
    again = package_crops(120, 48, seed=3, photos=photos)
    assert np.array_equal(again.images, s.images) and again.names == s.names
    other = package_crops(120, 48, seed=4, photos=photos)
    assert other.names != s.names
    with pytest.raises(ConfigError, match="n_images"):
        package_crops(0, 48, photos=photos)
    with pytest.raises(ConfigError, match="image_size"):
        package_crops(5, 2, photos=photos)
    with pytest.raises(ConfigError, match="distinct crops"):
        package_crops(200, 8, photos=[("tiny", np.zeros((8, 8, 3), np.uint8))], min_frac=1.0)


def test_folder_images(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    for i, shape in enumerate([(40, 60, 3), (50, 50, 3), (30, 20)]):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    s = folder_images(tmp_path, size=16)
    assert s.images.shape == (3, 16, 16, 3) and s.names == ("im0.png", "im1.png", "im2.png")
    assert folder_images(tmp_path, 2, 16).images.shape[0] == 2
    with pytest.raises(ConfigError, match="has 3 images"):
        folder_images(tmp_path, 5, 16)
    (tmp_path / "im9.jpg").write_bytes(b"not really a jpeg")
    with pytest.raises(ConfigError, match="im9.jpg"):
        folder_images(tmp_path, size=16)
    (tmp_path / "e").mkdir()
    with pytest.raises(ConfigError, match="no image files"):
        folder_images(tmp_path / "e")
    with pytest.raises(ConfigError, match="no such folder"):
        folder_images(tmp_path / "missing")


# --------------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------------
def cifar_arrays(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n)


def write_python_layout(root, n=7):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    data = {}
    for i, m in enumerate(["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]):
        x, y = cifar_arrays(n, i)
        # str keys, like the original Python 2 files read with encoding="latin1"; protocol 4 so that Python 3
        # writes the array bytes natively (at protocol 2 it would call _codecs.encode, which is refused)
        (d / m).write_bytes(pickle.dumps({"batch_label": m, "data": x, "labels": [int(v) for v in y],
                                          "filenames": [f"f{j}.png" for j in range(n)]}, protocol=4))
        data[m] = (x, y)
    return d, data


def write_binary_layout(root, n=5):
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    data = {}
    for i, m in enumerate(["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]):
        x, y = cifar_arrays(n, 10 + i)
        (d / f"{m}.bin").write_bytes(np.concatenate([y[:, None].astype(np.uint8), x], axis=1).tobytes())
        data[m] = (x, y)
    return d, data


def test_cifar_python_layout(tmp_path):
    d, data = write_python_layout(tmp_path)
    s = load_cifar10(tmp_path, "train", verify_md5=False)
    assert s.images.shape == (35, 32, 32, 3) and s.labels.shape == (35,)
    x, y = data["data_batch_1"]
    # channel planes: 1024 R, then 1024 G, then 1024 B, each 32 x 32 row-major
    assert s.images[0, 0, 0, 0] == x[0, 0] and s.images[0, 0, 1, 1] == x[0, 1025] and s.images[0, 1, 0, 2] == x[0, 2048 + 32]
    assert np.array_equal(s.labels[:7], y)
    t = load_cifar10(d, "test", verify_md5=False)
    assert np.array_equal(t.images.reshape(7, 32 * 32, 3).transpose(0, 2, 1).reshape(7, 3072), data["test_batch"][0])
    assert load_cifar10(tmp_path, n=10, verify_md5=False).images.shape[0] == 10
    assert load_cifar10(tmp_path).images.shape[0] == 35   # not of the official sizes: no md5 check ("auto")
    with pytest.raises(ConfigError, match="md5"):
        load_cifar10(tmp_path, verify_md5=True)   # not the published files: refused when the check is asked for


def test_cifar_refuses_code_in_pickles(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    d, _ = write_python_layout(tmp_path)
    (d / "data_batch_3").write_bytes(pickle.dumps({"data": Evil(), "labels": []}, protocol=2))
    with pytest.raises(ConfigError, match="not allowed"):
        load_cifar10(tmp_path, verify_md5=False)
    assert not marker.exists()
    with pytest.raises(ConfigError, match="not allowed"):
        restricted_unpickle(pickle.dumps(np.float64(1.0)), "scalar")    # numpy scalars are not array globals
    with pytest.raises(ConfigError, match="corrupt"):
        restricted_unpickle(b"\x80\x02}q", "truncated")
    with pytest.raises(ConfigError, match="_codecs.encode"):
        restricted_unpickle(pickle.dumps(np.zeros(3, np.uint8), protocol=2), "protocol 2 from Python 3")


def test_cifar_binary_layout_and_tarballs(tmp_path):
    d, data = write_binary_layout(tmp_path / "b")
    s = load_cifar10(tmp_path / "b", "train")
    assert s.images.shape == (25, 32, 32, 3) and "binary" in s.source
    assert np.array_equal(s.labels[:5], data["data_batch_1"][1])
    assert s.images[0, 0, 0, 1] == data["data_batch_1"][0][0, 1024]
    for layout, folder in (("bin", d), ("py", write_python_layout(tmp_path / "p")[0])):
        tar = tmp_path / f"cifar-10-{layout}.tar.gz"
        with tarfile.open(tar, "w:gz") as tf:
            tf.add(folder, arcname=folder.name)
        t = load_cifar10(tar, "test", verify_md5=False)
        assert t.images.shape[1:] == (32, 32, 3) and t.labels.max() <= 9
    # corrupt binary batches: wrong size, labels outside 0..9
    (d / "test_batch.bin").write_bytes(b"\x00" * 3000)
    with pytest.raises(ConfigError, match="3073-byte"):
        load_cifar10(tmp_path / "b", "test")
    bad = np.zeros((2, 3073), np.uint8)
    bad[1, 0] = 11
    (d / "test_batch.bin").write_bytes(bad.tobytes())
    with pytest.raises(ConfigError, match="labels"):
        load_cifar10(tmp_path / "b", "test")
    with pytest.raises(ConfigError, match="no such"):
        load_cifar10(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="no train batches"):
        load_cifar10(tmp_path)
    (tmp_path / "junk.tar.gz").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="tar"):
        load_cifar10(tmp_path / "junk.tar.gz")
    with pytest.raises(ConfigError, match="split"):
        load_cifar10(tmp_path / "b", "val")


def test_cifar_wrong_shapes_in_python_batch(tmp_path):
    d, _ = write_python_layout(tmp_path)
    (d / "data_batch_1").write_bytes(pickle.dumps({"data": np.zeros((3, 100), np.uint8), "labels": [0, 1, 2]}, protocol=4))
    with pytest.raises(ConfigError, match=r"\(N, 3072\)"):
        load_cifar10(tmp_path, verify_md5=False)
    (d / "data_batch_1").write_bytes(pickle.dumps([1, 2, 3], protocol=4))
    with pytest.raises(ConfigError, match="not a CIFAR-10 batch"):
        load_cifar10(tmp_path, verify_md5=False)


def test_load_images_dispatch(tmp_path):
    write_binary_layout(tmp_path)
    s = load_images(f"cifar10:{tmp_path}", 12, size=40)
    assert s.images.shape == (12, 40, 40, 3)
    with pytest.raises(ConfigError, match="image_source"):
        load_images("imagenet", 3)

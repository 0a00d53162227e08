"""Labelled images from installed packages (animal-mnist, foolbox) and labelled class folders."""
import gzip
import importlib.util
import pickle

import numpy as np
import pytest

from vitheory.config import ConfigError
from vitheory.data import packaged
from vitheory.data.cifar import foolbox_cifar10, restricted_unpickle
from vitheory.data.images import load_cifar10

HAS_FOOLBOX = importlib.util.find_spec("foolbox") is not None
HAS_ANIMAL = importlib.util.find_spec("animal_mnist") is not None


@pytest.mark.skipif(not HAS_ANIMAL, reason="animal-mnist's data files are not installed")
def test_animal_mnist_read_without_import():
    import sys
    x, y = packaged.animal_mnist()
    assert "animal_mnist" not in sys.modules  # found by find_spec, never imported
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [1000] * 10
    assert x.std() > 10  # real silhouettes, not a constant
    x5, y5 = packaged.animal_mnist(5)
    assert np.array_equal(x5, x[:5]) and np.array_equal(y5, y[:5])
    with pytest.raises(ConfigError, match="n_images"):
        packaged.animal_mnist(0)


@pytest.mark.skipif(not HAS_FOOLBOX, reason="foolbox's data files are not installed")
def test_foolbox_cifar10_real_images(tmp_path):
    s = foolbox_cifar10()
    x, y = s.images, s.labels
    assert x.shape == (20, 32, 32, 3) and x.dtype == np.uint8 and len(s) == 20
    assert y.tolist()[:3] == [3, 8, 8]  # cifar10_00_3, cifar10_01_8, cifar10_02_8
    # round trip through the CIFAR binary reader: the 20 real images written in the binary layout
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    rec = np.concatenate([y.astype(np.uint8)[:, None], x.transpose(0, 3, 1, 2).reshape(20, -1)], axis=1)
    (d / "test_batch.bin").write_bytes(rec.tobytes())
    s = load_cifar10(d, split="test")
    assert np.array_equal(s.images, x) and np.array_equal(s.labels, y)


def test_missing_package_is_a_clear_error():
    with pytest.raises(ConfigError, match="pip install --no-deps"):
        packaged.package_dir("vitheory_no_such_package_xyz")


def test_malicious_pickle_refused_without_running(tmp_path):
    target = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(target), "w"))

    data = pickle.dumps(Evil())
    with pytest.raises(ConfigError, match="refused"):
        restricted_unpickle(data, "evil.pkl")
    assert not target.exists()
    # and through the gzip path used for animal-mnist files
    p = tmp_path / "animal_data_version_3.gz"
    with gzip.open(p, "wb") as f:
        f.write(data)
    with pytest.raises(ConfigError):
        packaged._read_gz_array(str(p))
    assert not target.exists()

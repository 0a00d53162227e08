"""CIFAR-10 readers (python and binary layouts, checksum rule, corrupt files), the restricted unpickler against
malicious pickles, foolbox's 20 real CIFAR-10 images, and the class-folder image reader."""
import builtins
import os
import pickle

import numpy as np
import pytest

import vitheory.data.cifar as cifar
from vitheory.config import ConfigError
from vitheory.data.cifar import CIFAR_PY_SIZE, CIFAR_TEST, CIFAR_TRAIN, foolbox_cifar10, read_cifar10
from vitheory.data.imageset import read_image_classes
from vitheory.data.safe_pickle import UnsafePickleError, safe_load

N = 10   # images per batch in the files written here


def _arrays(seed, n=N):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n)


def write_py(root, bytes_keys=True):
    """cifar-10-batches-py/ with N images a batch; keys b'data'/b'labels' like the original files."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    out = {}
    for i, m in enumerate(CIFAR_TRAIN + CIFAR_TEST):
        x, y = _arrays(i)
        k = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
        (d / m).write_bytes(pickle.dumps({k("batch_label"): m.encode(), k("data"): x, k("labels"): [int(v) for v in y],
                                          k("filenames"): [f"img{j}.png".encode() for j in range(N)]}, protocol=4))
        out[m] = (x, y)
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in cifar.CIFAR_CLASSES]}, protocol=4))
    return d, out


def write_bin(root):
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    out = {}
    for i, m in enumerate(CIFAR_TRAIN + CIFAR_TEST):
        x, y = _arrays(20 + i)
        (d / f"{m}.bin").write_bytes(np.concatenate([y[:, None].astype(np.uint8), x], axis=1).tobytes())
        out[m] = (x, y)
    return d, out


def _planes(images):
    """(N, 32, 32, 3) -> the (N, 3072) channel-plane rows of the CIFAR files."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


# --------------------------------------------------------------------------------------------------
# the two layouts
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bytes_keys", [True, False])
def test_python_layout_folder_or_parent(tmp_path, bytes_keys):
    d, data = write_py(tmp_path, bytes_keys)
    for where in (tmp_path, d):
        s = read_cifar10(where, "train")
        assert s.images.shape == (5 * N, 32, 32, 3) and s.images.dtype == np.uint8
        assert s.labels.dtype == np.int64 and s.labels.shape == (5 * N,)
        assert np.array_equal(_planes(s.images), np.concatenate([data[m][0] for m in CIFAR_TRAIN]))
        assert np.array_equal(s.labels, np.concatenate([data[m][1] for m in CIFAR_TRAIN]))
        assert "python" in s.source
    t = read_cifar10(d, "test")
    assert np.array_equal(_planes(t.images), data["test_batch"][0]) and np.array_equal(t.labels, data["test_batch"][1])
    # red plane first: pixel (0, 1) of image 0 is byte 1 (R), 1025 (G), 2049 (B)
    x = data["test_batch"][0]
    assert tuple(t.images[0, 0, 1]) == (x[0, 1], x[0, 1025], x[0, 2049])
    assert len(read_cifar10(tmp_path, n=13)) == 13


def _py2_style(obj) -> bytes:
    """A protocol-2 pickle shaped like the original (Python 2, numpy 1.x) CIFAR files: arrays through the
    ``numpy.core.multiarray._reconstruct`` global, their bytes as a latin-1 string (what ``encoding="latin1"``
    hands numpy)."""
    import io
    from vitheory.data.safe_pickle import _reconstruct

    class P(pickle.Pickler):
        def reducer_override(self, o):
            if type(o) is np.ndarray:
                return (_reconstruct(), (np.ndarray, (0,), "b"),
                        (1, o.shape, o.dtype, False, o.tobytes().decode("latin1")))
            return NotImplemented
    buf = io.BytesIO()
    P(buf, protocol=2).dump(obj)
    b = buf.getvalue()
    return b.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")   # the numpy 1.x path


def test_python2_numpy1_style_batch(tmp_path):
    d, _ = write_py(tmp_path)
    x, y = _arrays(99)
    blob = _py2_style({"batch_label": "testing batch 1 of 1", "data": x, "labels": [int(v) for v in y]})
    assert b"cnumpy.core.multiarray\n_reconstruct" in blob
    (d / "test_batch").write_bytes(blob)
    t = read_cifar10(tmp_path, "test")
    assert np.array_equal(_planes(t.images), x) and np.array_equal(t.labels, y)


def test_binary_layout_folder_or_parent(tmp_path):
    d, data = write_bin(tmp_path)
    for where in (tmp_path, d):
        s = read_cifar10(where, "train")
        assert s.images.shape == (5 * N, 32, 32, 3) and "binary" in s.source
        assert np.array_equal(_planes(s.images), np.concatenate([data[m][0] for m in CIFAR_TRAIN]))
        assert np.array_equal(s.labels, np.concatenate([data[m][1] for m in CIFAR_TRAIN]))
    t = read_cifar10(d, "test")
    assert np.array_equal(t.labels, data["test_batch"][1]) and t.labels.dtype == np.int64


# --------------------------------------------------------------------------------------------------
# the checksum rule
# --------------------------------------------------------------------------------------------------
def test_checksum_rule_official_size(tmp_path):
    d, _ = write_py(tmp_path)
    fake = d / "test_batch"
    fake.write_bytes(b"\x00" * CIFAR_PY_SIZE["test_batch"])      # the official size, not the official bytes
    with pytest.raises(ConfigError, match=r"test_batch: md5 .* differs from the published 40351d58"):
        read_cifar10(tmp_path, "test")
    with pytest.raises(ConfigError, match="test_batch: truncated or corrupt pickle"):
        read_cifar10(tmp_path, "test", verify=False)              # no md5 check: the bytes still do not parse


def test_checksum_rule_small_files(tmp_path, monkeypatch):
    d, _ = write_py(tmp_path)
    assert len(read_cifar10(tmp_path, "test")) == N              # "auto": a small file is not checked
    with pytest.raises(ConfigError, match="md5"):
        read_cifar10(tmp_path, "test", verify=True)               # True: every known file is checked
    # the rule with the table pointed at our file: size matches -> checked, md5 matches -> read
    blob = (d / "test_batch").read_bytes()
    import hashlib
    monkeypatch.setitem(cifar.CIFAR_PY_SIZE, "test_batch", len(blob))
    monkeypatch.setitem(cifar.CIFAR_PY_MD5, "test_batch", hashlib.md5(blob).hexdigest())
    assert len(read_cifar10(tmp_path, "test", verify=True)) == N
    monkeypatch.setitem(cifar.CIFAR_PY_MD5, "test_batch", "0" * 32)
    with pytest.raises(ConfigError, match="test_batch: md5"):
        read_cifar10(tmp_path, "test")
    with pytest.raises(ConfigError, match="verify"):
        read_cifar10(tmp_path, "test", verify="yes")


# --------------------------------------------------------------------------------------------------
# missing, truncated, corrupt
# --------------------------------------------------------------------------------------------------
def test_missing_truncated_corrupt(tmp_path):
    with pytest.raises(ConfigError, match="no such file or folder"):
        read_cifar10(tmp_path / "nowhere")
    d, _ = write_py(tmp_path / "p")
    (d / "data_batch_3").unlink()
    with pytest.raises(ConfigError, match="no train batches"):
        read_cifar10(tmp_path / "p")
    blob = (d / "test_batch").read_bytes()
    (d / "test_batch").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ConfigError, match=r"test_batch: truncated or corrupt pickle"):
        read_cifar10(d, "test")
    for bad, msg in (({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, r"uint8 of shape \(N, 3072\)"),
                     ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, r"\(N, 3072\)"),
                     ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}, "labels must be 2 integers"),
                     ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "labels must be 2"),
                     ({b"pixels": 1}, "need 'data' and 'labels'"),
                     ([1, 2], "not a CIFAR-10 batch")):
        (d / "test_batch").write_bytes(pickle.dumps(bad, protocol=4))
        with pytest.raises(ConfigError, match="test_batch: .*" + msg):
            read_cifar10(d, "test")
    b, _ = write_bin(tmp_path / "b")
    blob = (b / "test_batch.bin").read_bytes()
    (b / "test_batch.bin").write_bytes(blob[:-100])
    with pytest.raises(ConfigError, match=r"test_batch.bin: .* not a whole number of 3073-byte"):
        read_cifar10(b, "test")
    bad = np.zeros((2, 3073), np.uint8)
    bad[1, 0] = 10
    (b / "test_batch.bin").write_bytes(bad.tobytes())
    with pytest.raises(ConfigError, match="test_batch.bin: CIFAR-10 labels"):
        read_cifar10(b, "test")
    with pytest.raises(ConfigError, match="split"):
        read_cifar10(b, "validation")
    with pytest.raises(ConfigError, match="n_images"):
        read_cifar10(b, "test", n=0)


# --------------------------------------------------------------------------------------------------
# malicious pickles
# --------------------------------------------------------------------------------------------------
class _System:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class _Exec:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.path)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("protocol", [0, 2, 4])
@pytest.mark.parametrize("payload,global_name", [(_System, "system"), (_Exec, r"(builtins|__builtin__)\.exec")])
def test_malicious_pickle_refused_without_running(tmp_path, payload, global_name, protocol):
    marker = tmp_path / "pwned"
    blob = pickle.dumps({"data": payload(marker), "labels": [0]}, protocol=protocol)
    assert not marker.exists()
    with pytest.raises(UnsafePickleError, match=global_name):
        safe_load(blob)
    (tmp_path / "evil.pkl").write_bytes(blob)
    with pytest.raises(UnsafePickleError, match=global_name):
        safe_load(tmp_path / "evil.pkl")
    d, _ = write_py(tmp_path / "c")
    (d / "data_batch_2").write_bytes(blob)
    with pytest.raises(ConfigError, match=f"data_batch_2: refused: global '.*{global_name}' is not allowed"):
        read_cifar10(tmp_path / "c")
    assert not marker.exists()                                     # nothing in the pickle ran


def test_safe_load_reads_plain_containers_and_arrays():
    obj = {b"a": np.arange(12, dtype=np.int16).reshape(3, 4), "b": [1, 2.5, None, True, "s", b"x"],
           "c": (np.zeros(2, np.float64),), "d": {1, 2}, "e": frozenset({3}), "f": np.array(["ab"], dtype="U2")}
    for protocol in (3, 4, 5):
        back = safe_load(pickle.dumps(obj, protocol=protocol))
        assert np.array_equal(back[b"a"], obj[b"a"]) and back[b"a"].dtype == np.int16
        assert back["b"] == obj["b"] and back["d"] == {1, 2} and back["e"] == frozenset({3})
        assert back["f"][0] == "ab"
    with pytest.raises(UnsafePickleError, match="collections.OrderedDict"):
        import collections
        safe_load(pickle.dumps(collections.OrderedDict(a=1), protocol=4))

    class P(pickle.Pickler):
        def persistent_id(self, o):
            return "x" if o == "ref" else None
    import io
    buf = io.BytesIO()
    P(buf, protocol=4).dump(["ref"])
    with pytest.raises(UnsafePickleError, match="persistent"):
        safe_load(buf.getvalue())


# --------------------------------------------------------------------------------------------------
# foolbox's 20 real CIFAR-10 test images
# --------------------------------------------------------------------------------------------------
def test_foolbox_cifar10_images():
    try:
        cifar.foolbox_data_dir()
    except ConfigError as e:
        pytest.skip(f"foolbox 3.3.4 data files absent ({e})")
    s = foolbox_cifar10()
    assert s.images.shape == (20, 32, 32, 3) and s.images.dtype == np.uint8 and s.labels.dtype == np.int64
    # labels from the file names cifar10_<i>_<label>.png; the first 20 labels of the CIFAR-10 test set
    assert s.labels.tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]
    assert s.images.std() > 20 and len({im.tobytes() for im in s.images}) == 20    # real, distinct photographs


def test_foolbox_absent_message(monkeypatch):
    monkeypatch.setattr(cifar.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install --no-deps 'foolbox==3.3.4'"):
        foolbox_cifar10()


# --------------------------------------------------------------------------------------------------
# class folders
# --------------------------------------------------------------------------------------------------
def _save(path, shape, seed, fmt):
    from PIL import Image
    a = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(a).save(path, format=fmt)
    return a


def test_image_classes(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    png = _save(tmp_path / "cat" / "a.png", (20, 20, 3), 0, "PNG")
    _save(tmp_path / "cat" / "b.jpg", (30, 40, 3), 1, "JPEG")
    _save(tmp_path / "dog" / "c.png", (16, 16), 2, "PNG")            # greyscale -> RGB
    (tmp_path / "dog" / ".DS_Store").write_bytes(b"junk")            # hidden: skipped
    s = read_image_classes(tmp_path, size=20)
    assert s.images.shape == (3, 20, 20, 3) and s.images.dtype == np.uint8
    assert s.classes == ("cat", "dog") and s.labels.tolist() == [0, 0, 1] and s.labels.dtype == np.int64
    assert np.array_equal(s.images[0], png)                           # PNG at its own size: lossless, unresized
    assert read_image_classes(tmp_path, size=8, max_per_class=1).labels.tolist() == [0, 1]
    # errors, each naming the path
    with pytest.raises(ConfigError, match="no such folder"):
        read_image_classes(tmp_path / "nowhere")
    (tmp_path / "bird").mkdir()
    with pytest.raises(ConfigError, match="bird holds no images"):
        read_image_classes(tmp_path)
    (tmp_path / "bird" / "notes.txt").write_text("hello")
    with pytest.raises(ConfigError, match="notes.txt: not an image file"):
        read_image_classes(tmp_path)
    (tmp_path / "bird" / "notes.txt").unlink()
    (tmp_path / "bird" / "x.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match="x.png: not a readable image"):
        read_image_classes(tmp_path)
    one = tmp_path / "one"
    (one / "only").mkdir(parents=True)
    _save(one / "only" / "a.png", (8, 8, 3), 3, "PNG")
    with pytest.raises(ConfigError, match="at least 2"):
        read_image_classes(one)
    (one / "loose.png").write_bytes(b"")
    with pytest.raises(ConfigError, match="loose.png is a file in the root"):
        read_image_classes(one)
    with pytest.raises(ConfigError, match="image_size"):
        read_image_classes(tmp_path, size=4)

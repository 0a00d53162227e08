"""The package photographs include foolbox's 60 sample images (read as files), and crops count distinct sources."""
import importlib.util

import numpy as np
import pytest

from vitheory.data import images as I


def test_distinct_sources_counts_photographs_not_crops():
    names = ["astronaut[0:10,0:10]", "astronaut[5:20,3:18]f", "coffee[0:8,0:8]", "foolbox_imagenet_03_990[1:9,2:10]"]
    assert I.distinct_sources(names) == 3


@pytest.mark.skipif(importlib.util.find_spec("foolbox") is None, reason="foolbox 3.3.4 not installed")
def test_foolbox_photographs_are_read_without_import():
    import sys
    photos = I.foolbox_photographs()
    assert "foolbox" not in sys.modules            # the files are read, the package is never imported
    kinds = [nm.split("_")[1] for nm, _ in photos]
    assert kinds.count("imagenet") == 20 and kinds.count("cifar10") == 20 and kinds.count("cifar100") == 20
    assert all(a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 for _, a in photos)
    assert len({a.tobytes() for _, a in photos}) == 60        # 60 different pictures


@pytest.mark.skipif(importlib.util.find_spec("foolbox") is None, reason="foolbox 3.3.4 not installed")
def test_crops_cover_at_least_40_photographs():
    crops = I.package_crops(1000, size=16, seed=0)
    assert len(crops) == 1000 and I.distinct_sources(crops.names) >= 40


@pytest.mark.skipif(importlib.util.find_spec("foolbox") is None or importlib.util.find_spec("skimage") is None,
                    reason="foolbox 3.3.4 data files and scikit-image needed for the default image set")
def test_default_assumptions_table_images_are_1000_from_40_photographs():
    """The assumptions-table default: T >= 1000 >= d = 768 distinct crops from >= 40 distinct photographs."""
    from vitheory.experiments.base import get_experiment, resolve_config
    cfg = resolve_config(get_experiment("assumptions-table"), "default", {})
    assert cfg.image_source == "package" and cfg.n_images >= 1000
    crops = I.load_images(cfg.image_source, cfg.n_images, 16, cfg.image_seed)   # same boxes at any output size
    assert len(set(crops.names)) == cfg.n_images
    assert I.distinct_sources(crops.names) >= 40
    # several scales and positions per photograph
    by_photo = {}
    for nm in crops.names:
        by_photo.setdefault(nm.split("[", 1)[0], set()).add(nm.split("[", 1)[1].rstrip("f"))
    assert sum(len(v) >= 5 for v in by_photo.values()) >= 40


def test_non_crop_names_are_their_own_sources():
    assert I.distinct_sources(["cifar10-train#0", "cifar10-train#1", "noise#0", "a.png"]) == 4
    assert I.distinct_sources(I.noise_images(5, 8).names) == 5

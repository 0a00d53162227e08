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

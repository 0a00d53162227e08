"""Shared test set-up: an isolated HOME for caches, offline hubs, and fixtures used by several test files."""
import os
import tempfile

import pytest

# matplotlib (and friends) write caches under HOME; keep tests from touching the user's files
_tmp = tempfile.mkdtemp(prefix="vitheory-tests-")
os.environ.setdefault("MPLCONFIGDIR", os.path.join(_tmp, "mpl"))
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensor programs are fastest on one thread (and then immune to other processes on the cores)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def run_dir(tmp_path):
    """A fresh, not yet existing run folder."""
    return tmp_path / "run"

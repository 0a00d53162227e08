"""Spurious-token mosaics: alpha_* shares, label correlation in training only, token categories."""
import numpy as np
import pytest

from vitheory.config import ConfigError
from vitheory.data.spurious import make_mosaics, spurious_sources, token_mask


@pytest.fixture(scope="module")
def tiles():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(10), 12)
    x = (rng.integers(0, 40, (120, 8, 8)) + 20 * y[:, None, None]).astype(np.uint8)  # class c has values >= 20c
    return x, y


@pytest.fixture(scope="module")
def sources():
    return [np.full((16, 16), 200 + i, dtype=np.uint8) for i in range(5)]  # source i is the constant 200+i


@pytest.mark.parametrize("k", [5, 7, 9])
def test_shares_and_contents(tiles, sources, k):
    x, y = tiles
    m = make_mosaics(x, y, 200, k, sources, strength=0.8, train=True, seed=0)
    assert m.images.shape == (200, 24, 24, 1) and m.alpha_star == k / 9
    assert (m.relevant.sum(1) == k).all()
    assert ((m.source >= 0) == ~m.relevant).all()
    for i in range(20):  # every slot is what its category says
        for s in range(9):
            r, c = divmod(s, 3)
            tile = m.images[i, 8 * r:8 * r + 8, 8 * c:8 * c + 8, 0]
            if m.relevant[i, s]:
                assert any(np.array_equal(tile, x[j]) for j in np.flatnonzero(y == m.labels[i]))
            else:
                assert (tile == 200 + m.source[i, s]).all()


def test_label_correlation_train_only(tiles, sources):
    x, y = tiles
    tr = make_mosaics(x, y, 3000, 5, sources, strength=0.7, train=True, seed=0)
    te = make_mosaics(x, y, 3000, 5, sources, strength=0.7, train=False, seed=1)
    S = len(sources)
    match_tr = (tr.source == (tr.labels % S)[:, None])[~tr.relevant].mean()
    match_te = (te.source == (te.labels % S)[:, None])[~te.relevant].mean()
    assert abs(match_tr - (0.7 + 0.3 / S)) < 0.02  # P(source = label mod S) = p + (1-p)/S
    assert abs(match_te - 1 / S) < 0.02
    again = make_mosaics(x, y, 3000, 5, sources, strength=0.7, train=True, seed=0)
    assert np.array_equal(again.images, tr.images) and np.array_equal(again.source, tr.source)


def test_token_mask_order():
    rel = np.zeros((1, 9), dtype=bool)
    rel[0, 1] = True  # top-middle tile
    t = token_mask(rel, tile=8, patch=4)  # 6 x 6 tokens
    grid = t.reshape(6, 6)
    assert grid[:2, 2:4].all() and grid.sum() == 4
    with pytest.raises(ConfigError, match="patch_size"):
        token_mask(rel, tile=8, patch=3)


def test_bad_inputs(tiles, sources):
    x, y = tiles
    with pytest.raises(ConfigError, match="k=10"):
        make_mosaics(x, y, 5, 10, sources, 0.5, True, 0)
    with pytest.raises(ConfigError, match="spurious_strength"):
        make_mosaics(x, y, 5, 5, sources, 1.5, True, 0)
    with pytest.raises(ConfigError, match="smaller than the tile"):
        make_mosaics(x, y, 5, 5, [np.zeros((4, 4), np.uint8)], 0.5, True, 0)


def test_default_sources_offline():
    s = spurious_sources()
    assert len(s) == 10 and all(a.ndim == 2 and a.dtype == np.uint8 and min(a.shape) >= 32 for a in s)

"""The plain-torch ViT: shapes, attention maps, transformers equality, token sparsification."""
import numpy as np
import pytest
import torch

from vitheory.config import ConfigError
from vitheory.models.vit import ViT, select_tokens


def small(**kw):
    torch.manual_seed(0)
    args = dict(image_size=24, patch_size=8, in_chans=3, num_classes=5, dim=16, depth=2, heads=4, mlp_ratio=2.0)
    args.update(kw)
    return ViT(**args)


def test_shapes_and_maps():
    m = small(depth=3)
    x = torch.randn(4, 3, 24, 24)
    assert m(x).shape == (4, 5) and m.forward_features(x).shape == (4, 10, 16)
    maps = m.attention_maps(x)
    assert len(maps) == 3 and all(a.shape == (4, 4, 10, 10) for a in maps)
    assert torch.allclose(maps[1].sum(-1), torch.ones(4, 4, 10), atol=1e-6)
    # the SDPA path and the explicit-softmax path give the same tokens
    t = m.embed(x)
    for b in m.blocks:
        t1, _ = b(t)
        t2, _ = b(t, need_maps=True)
        assert torch.allclose(t1, t2, atol=1e-5)
        t = t1


@pytest.mark.parametrize("bad", [dict(patch_size=7), dict(heads=3), dict(depth=0), dict(mlp_ratio=0.0)])
def test_bad_constructor(bad):
    with pytest.raises(ConfigError):
        small(**bad)


def test_from_transformers_equal():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=80,
                                 image_size=32, patch_size=8, num_channels=3)
    torch.manual_seed(1)
    hf = transformers.ViTModel(cfg, add_pooling_layer=False).eval()
    with torch.no_grad():  # transformers initialises [CLS] and positions with small values; make them matter
        hf.embeddings.cls_token.normal_()
        hf.embeddings.position_embeddings.normal_()
    ours = ViT.from_transformers(hf, num_classes=7).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = hf(pixel_values=x).last_hidden_state
        got = ours.forward_features(x)
    assert got.shape == want.shape == (3, 17, 32)
    assert (got - want).abs().max().item() < 1e-5


def test_sparsification_keeps_the_right_tokens():
    m = small()
    x = torch.randn(5, 3, 24, 24)
    rel = torch.zeros(5, 9, dtype=torch.bool)
    rel[:, [0, 4, 8]] = True
    g = torch.Generator().manual_seed(0)
    k = select_tokens(m, x, 3, "oracle", rel, generator=g)
    assert (k == torch.tensor([0, 4, 8])).all()
    k5 = select_tokens(m, x, 5, "oracle", rel, generator=g)
    assert all({0, 4, 8} <= set(r.tolist()) for r in k5) and k5.shape == (5, 5)
    # cls_attention keeps the tokens with the largest first-block [CLS] attention
    _, a = m.blocks[0](m.embed(x), need_maps=True)
    top = a[:, :, 0, 1:].mean(1).argsort(dim=1, descending=True)[:, :4].sort(dim=1).values
    assert (select_tokens(m, x, 4, "cls_attention") == top).all()
    r = select_tokens(m, x, 4, "random", generator=torch.Generator().manual_seed(3))
    assert r.shape == (5, 4) and all(len(set(row.tolist())) == 4 for row in r)
    # the model sees exactly the kept tokens with their own positions
    kept = m.embed(x, k)
    full = m.embed(x)
    assert torch.equal(kept[:, 0], full[:, 0]) and torch.equal(kept[:, 1:], full[:, 1 + k[0]])
    assert m(x, k).shape == (5, 5)
    with pytest.raises(ConfigError, match="keep"):
        select_tokens(m, x, 10, "random")
    with pytest.raises(ConfigError, match="rule"):
        select_tokens(m, x, 3, "loudest")


def test_training_learns_deterministic_and_roundtrips(tmp_path):
    from vitheory.train.vit_train import accuracy, load_weights, save_weights, train_vit
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (64,), generator=g)
    x = torch.randn(64, 3, 24, 24, generator=g) * 0.3
    x[:, 0, :8, :8] += (2 * y - 1).float()[:, None, None]  # the label is in the top-left patch
    runs = []
    for _ in range(2):
        m = small(num_classes=2)
        r = train_vit(m, x, y, steps=40, batch=32, lr=3e-3, seed=0)
        runs.append((r, accuracy(m, x, y), m))
    assert not runs[0][0].diverged and runs[0][1] >= 0.9
    assert runs[0][0].final_loss == runs[1][0].final_loss  # deterministic
    save_weights(runs[0][2], tmp_path / "w.safetensors")
    m2 = load_weights(small(num_classes=2), tmp_path / "w.safetensors")
    assert accuracy(m2, x, y) == runs[0][1]
    m3 = load_weights(small(num_classes=7), tmp_path / "w.safetensors", skip_head=True)
    assert m3.head.out_features == 7
    bad = small(num_classes=2)
    with torch.no_grad():
        bad.head.bias.fill_(float("nan"))
    assert train_vit(bad, x, y, steps=3, batch=8, lr=1e-3, seed=0).diverged
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ConfigError, match="unreadable"):
        load_weights(small(), tmp_path / "junk.safetensors")

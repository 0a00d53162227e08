"""The real-image experiments spurious-tokens (S10) and sparsification-images (S9 on images): claims stated by
small runs, bad input refused before a run folder exists, the tokens each removal rule keeps, the label
correlation of the spurious tiles in training and test, the pre-trained initial model, and a CIFAR-10 source."""
import json

import numpy as np
import pytest
import torch

import vitheory
from vitheory.cli import main
from vitheory.experiments import _images as I
from vitheory.experiments import sparsification_images as SP
from vitheory.experiments import spurious_tokens as ST
from vitheory.experiments.base import get_experiment, resolve_config

TINY = {"n_train": 120, "n_test": 60, "steps": 10, "dim": 8, "heads": 2, "batch_size": 32}


def cfg_of(name, **over):
    return resolve_config(get_experiment(name), "smoke", {**TINY, **over})


@pytest.mark.parametrize("name,overrides,prefix", [
    ("spurious-tokens", {"alphas": "0.556,0.778,1", "pretrain_n": 100, "pretrain_steps": 10}, "S10-rises-"),
    ("sparsification-images", {"removed_grid": "0,16"}, "S9-images-")])
def test_small_runs_state_claims(name, overrides, prefix, run_dir, one_thread):
    df = vitheory.run(name, scale="smoke", overrides={**TINY, **overrides}, out=run_dir, progress=False)
    assert len(df) == len(get_experiment(name).trials(cfg_of(name, **overrides)))
    assert np.isfinite(df["test_accuracy"]).all() and ((df["test_accuracy"] >= 0) & (df["test_accuracy"] <= 1)).all()
    claims = json.loads((run_dir / "summary.json").read_text())["claims"]
    assert claims and all(c["id"].startswith(prefix) and c["evidence"] and c["paper"] for c in claims)
    if name == "spurious-tokens":
        assert {c["id"] for c in claims} == {"S10-rises-random", "S10-rises-pretrained"}
        assert "0.837" in claims[0]["paper"] and "0.996" in claims[0]["paper"]


def _refused(capsys, run_dir, name, sets, needle):
    argv = ["run", name, "--scale", "smoke", "--quiet", "--out", str(run_dir)]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and needle in err, err
    assert not run_dir.exists()
    return err


@pytest.mark.parametrize("name,sets,needle", [
    ("spurious-tokens", ["patch_size=5"], "patch_size=5 does not divide the tile side 28"),
    ("spurious-tokens", ["source=cifar10", "cifar10_dir=/x", "patch_size=14"], "patch_size=14 does not divide the tile side 32"),
    ("sparsification-images", ["patch_size=8"], "patch_size=8"),
    ("spurious-tokens", ["alphas=0.556,1.2"], "alphas"),
    ("spurious-tokens", ["alphas=0"], "alphas"),
    ("spurious-tokens", ["alphas=0.5"], "k/9"),
    ("sparsification-images", ["alpha_star=0"], "alpha_star"),
    ("sparsification-images", ["alpha_star=1.5"], "alpha_star"),
    ("sparsification-images", ["removed_grid=0,36"], "removed_grid contains 36"),
    ("sparsification-images", ["patch_size=7", "removed_grid=144"], "[0, 143]"),
    ("spurious-tokens", ["source=cifar10"], "cifar10_dir is empty"),
    ("spurious-tokens", ["source=cifar10", "cifar10_dir=/nonexistent/cifar"], "no such file or folder"),
    ("sparsification-images", ["source=image_dir", "image_dir=/nonexistent/images"], "no such folder"),
    ("spurious-tokens", ["source=imagenet"], "source"),
    ("spurious-tokens", ["inits=random,imagenet"], "inits"),
])
def test_bad_input_refused_before_a_folder(capsys, run_dir, name, sets, needle):
    _refused(capsys, run_dir, name, sets, needle)


def test_corrupt_cifar_and_small_image_folder_refused(capsys, tmp_path):
    b = tmp_path / "cifar" / "cifar-10-batches-bin"
    b.mkdir(parents=True)
    for m in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        (b / f"{m}.bin").write_bytes(b"\x00" * 100)              # not a whole number of 3073-byte records
    _refused(capsys, tmp_path / "r1", "spurious-tokens", ["source=cifar10", f"cifar10_dir={b.parent}", "patch_size=16"],
             "3073-byte")
    from PIL import Image
    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(np.full((40, 40, 3), 10 * i + (5 if c == "b" else 0), np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    _refused(capsys, tmp_path / "r2", "sparsification-images",
             ["source=image_dir", f"image_dir={tmp_path / 'imgs'}", "patch_size=16"], "fewer than 2 classes with 9")


def _fake_cifar(root, per_batch=40, seed=0):
    """A binary-layout CIFAR-10 copy of 2 classes (labels 0, 1), ``per_batch`` records a batch."""
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    for m in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        y = np.arange(per_batch) % 2
        x = (rng.integers(0, 60, (per_batch, 3072)) + 150 * y[:, None]).astype(np.uint8)
        (d / f"{m}.bin").write_bytes(np.concatenate([y[:, None].astype(np.uint8), x], axis=1).tobytes())
    return root


def test_cifar10_source_runs(tmp_path, one_thread):
    root = _fake_cifar(tmp_path / "c")
    over = {**TINY, "source": "cifar10", "cifar10_dir": str(root), "patch_size": 16, "alphas": "0.556,1",
            "pretrain_n": 60, "pretrain_steps": 5, "seeds": 1}
    df = vitheory.run("spurious-tokens", scale="smoke", overrides=over, out=None, progress=False)
    assert len(df) == 4 and np.isfinite(df["test_accuracy"]).all()
    p = I.pools(cfg_of("spurious-tokens", **over))
    assert p.channels == 3 and p.n_classes == 2 and p.train[0].shape[1:] == (32, 32, 3)
    assert len(p.test[0]) == 40 and len(p.pretrain[0]) + len(p.train[0]) == 200


def test_pools_are_disjoint():
    cfg = cfg_of("spurious-tokens")
    p = I.pools(cfg)
    sizes = [len(p.pretrain[0]), len(p.train[0]), len(p.test[0])]
    assert sum(sizes) == 9716 and sizes[2] == round(0.2 * 9716) and p.n_classes == 10 and p.channels == 1
    keys = [set(map(bytes, x.reshape(len(x), -1))) for x in (p.pretrain[0], p.train[0], p.test[0])]
    assert not (keys[0] & keys[2]) and not (keys[1] & keys[2]) and not (keys[0] & keys[1])


@pytest.mark.parametrize("strength", [0.9, 0.3])
def test_label_correlation_train_vs_test_as_configured(strength):
    cfg = cfg_of("spurious-tokens", spurious_strength=strength)
    p = I.pools(cfg)
    tr = I.mosaics(cfg, p.train, 2000, 5, True, 0, "train")
    te = I.mosaics(cfg, p.test, 2000, 5, False, 0, "test")
    S = len(I._sources())
    match = lambda m: (m.source == (m.labels % S)[:, None])[~m.relevant].mean()  # noqa: E731
    assert abs(match(tr) - (strength + (1 - strength) / S)) < 0.02   # P(picture = y mod S) = p + (1 - p) / S
    assert abs(match(te) - 1 / S) < 0.02
    assert (tr.relevant.sum(1) == 5).all() and tr.images.shape == (2000, 84, 84, 1)


def test_removal_keeps_the_right_tokens(one_thread):
    cfg = cfg_of("sparsification-images")                     # 5/9, patch 14: 36 tokens, 16 spurious
    p = I.pools(cfg)
    m = I.mosaics(cfg, p.test, 50, cfg.k, False, 0, "test")
    rel = torch.from_numpy(I.relevant_tokens(cfg, m))
    assert rel.shape == (50, 36) and (rel.sum(1) == 20).all() and cfg.n_spurious_tokens == 16
    model = I.new_model(cfg, p, 0)
    for removed in (0, 4, 16, 20, 35):
        for rule in SP.RULES:
            k = SP.keep_indices(cfg, rule, removed, m, model, 0, "test", "cpu")
            assert k.shape == (50, 36 - removed)
            assert (k[:, 1:] > k[:, :-1]).all()                 # sorted, distinct
            if rule == "oracle":
                kept_rel = torch.gather(rel, 1, k)
                if removed <= 16:                               # every relevant token kept, only spurious removed
                    assert (kept_rel.sum(1) == 20).all()
                else:                                           # nothing spurious kept
                    assert kept_rel.all()
    # cls_attention: the kept tokens are those with the largest [CLS] attention of the first block
    from vitheory.train.vit_train import to_tensor
    k = SP.keep_indices(cfg, "cls_attention", 16, m, model, 0, "test", "cpu")
    with torch.no_grad():
        _, a = model.blocks[0](model.embed(to_tensor(m.images)), need_maps=True)
    score = a[:, :, 0, 1:].mean(1)
    top = torch.topk(score, 20, dim=1).indices.sort(dim=1).values
    assert torch.equal(k, top)
    # the removal is the same when repeated (seeded) and differs between the train and test draws
    assert torch.equal(SP.keep_indices(cfg, "random", 8, m, model, 0, "test", "cpu"),
                       SP.keep_indices(cfg, "random", 8, m, model, 0, "test", "cpu"))
    assert not torch.equal(SP.keep_indices(cfg, "random", 8, m, model, 0, "test", "cpu"),
                           SP.keep_indices(cfg, "random", 8, m, model, 0, "train", "cpu"))


def test_pretrained_initial_model_loads_all_but_the_head(tmp_path, one_thread):
    cfg = cfg_of("spurious-tokens", pretrain_n=100, pretrain_steps=5)
    p = I.pools(cfg)
    path = I.weights_path(str(tmp_path), 0)
    assert not ST.pretrain(cfg, p, 0, "cpu", path).diverged
    from safetensors.torch import load_file
    from vitheory.train.vit_train import load_weights
    saved = load_file(path)
    fresh = I.new_model(cfg, p, 0)
    head = fresh.head.weight.detach().clone()
    load_weights(fresh, path, skip_head=True)
    s = fresh.state_dict()
    assert all(torch.equal(s[k], v) for k, v in saved.items() if not k.startswith("head."))
    assert torch.equal(fresh.head.weight, head) and not torch.equal(head, saved["head.weight"])


def test_trials_are_deterministic(one_thread):
    cfg = cfg_of("sparsification-images", removed_grid=(0, 8), rules=("oracle", "random"), seeds=1)
    batch = SP.trials(cfg)
    a, b = SP.run_trials(cfg, batch, "cpu"), SP.run_trials(cfg, batch, "cpu")
    assert [x["test_accuracy"] for x in a] == [x["test_accuracy"] for x in b]
    # one trial alone gives what it gives in its batch
    alone = SP.run_trials(cfg, [batch[1]], "cpu")[0]
    assert alone["test_accuracy"] == a[1]["test_accuracy"]


def test_diverged_training_is_a_failed_trial(monkeypatch, one_thread, run_dir):
    """A non-finite loss (train_vit's ``diverged``) is stored as a failure: NaN accuracy, ``diverged`` True, counted
    in the tables, and a claim without finished trials is inconclusive."""
    import math
    import pandas as pd
    from vitheory.train.vit_train import TrainResult
    monkeypatch.setattr(I, "fit", lambda *a, **k: TrainResult(3, math.nan, True))
    cfg = cfg_of("spurious-tokens", alphas=(5 / 9, 7 / 9, 1.0), seeds=1)
    batch = ST.trials(cfg)
    rows = ST.run_trials(cfg, batch, "cpu")
    assert all(r["diverged"] and math.isnan(r["test_accuracy"]) for r in rows)
    df = pd.DataFrame([{**t, **r} for t, r in zip(batch, rows)])
    a = ST.analyze(cfg, df)
    assert [c.supported for c in a.claims] == [None, None]
    assert all((t["failed"] == 1).all() for t in a.tables.values())
    cfg2 = cfg_of("sparsification-images", removed_grid=(0, 16), seeds=1)
    b2 = SP.trials(cfg2)
    r2 = SP.run_trials(cfg2, b2, "cpu")
    assert all(r["diverged"] and math.isnan(r["test_accuracy"]) for r in r2)
    a2 = SP.analyze(cfg2, pd.DataFrame([{**t, **r} for t, r in zip(b2, r2)]))
    assert a2.claims[0].supported is None
    # through the runner: the failures are stored (NaN as null) and the report still states the claims
    vitheory.run("sparsification-images", scale="smoke", overrides={**TINY, "removed_grid": "0,16", "seeds": 1},
                 out=run_dir, progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [c["supported"] for c in summary["claims"]] == [None]

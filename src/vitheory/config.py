"""Validated, typed experiment configs.

Every experiment owns a frozen dataclass ``Config`` whose fields carry the defaults (minGPT style: each
component owns its default config).  This module turns defaults + a scale preset + ``key=value``
overrides into a validated instance, and raises :class:`ConfigError` -- one line, naming the parameter
and the allowed range -- *before* any work is done (nanoGPT's configurator rule: the key must exist and
the value must have the field's type).
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Iterable, Mapping, Sequence


class ConfigError(ValueError):
    """Bad user input: the message is one line that names the parameter and the allowed values."""


# --------------------------------------------------------------------------------------------------
# range and choice checks used by the experiments' ``validate`` methods
# --------------------------------------------------------------------------------------------------
def check_range(name: str, value: float, lo: float | None = None, hi: float | None = None, *,
                lo_open: bool = False, hi_open: bool = False) -> None:
    """Raise ConfigError unless ``lo (<|<=) value (<|<=) hi``; NaN is always rejected."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        raise ConfigError(f"{name}={value!r} is not a finite number; allowed range: {_fmt_range(lo, hi, lo_open, hi_open)}")
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or \
          (hi is not None and (value >= hi if hi_open else value > hi))
    if bad:
        raise ConfigError(f"{name}={value!r} is out of range; allowed range: {_fmt_range(lo, hi, lo_open, hi_open)}")


def check_all_in_range(name: str, values: Sequence[float], lo: float | None = None, hi: float | None = None, *,
                       lo_open: bool = False, hi_open: bool = False, nonempty: bool = True) -> None:
    if nonempty and len(values) == 0:
        raise ConfigError(f"{name} is empty; give at least one value in {_fmt_range(lo, hi, lo_open, hi_open)}")
    for v in values:
        try:
            check_range(name, v, lo, hi, lo_open=lo_open, hi_open=hi_open)
        except ConfigError:
            raise ConfigError(f"{name} contains {v!r}, out of range; allowed range for each value: "
                              f"{_fmt_range(lo, hi, lo_open, hi_open)}") from None


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not allowed; choose one of {', '.join(map(str, choices))}")


def _fmt_range(lo, hi, lo_open, hi_open) -> str:
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    return f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"


# --------------------------------------------------------------------------------------------------
# parsing ``key=value`` strings by the field's declared type
# --------------------------------------------------------------------------------------------------
def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if origin in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"comma-separated list of {_type_name(args[0]) if args else 'values'}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def parse_value(name: str, text: Any, tp) -> Any:
    """Convert ``text`` (a CLI string, or an already-typed value from JSON/Python) to type ``tp``."""
    origin = typing.get_origin(tp)
    wrong = ConfigError(f"{name}={text!r} has the wrong type; expected {_type_name(tp)}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (text is None or (isinstance(text, str) and text.lower() in ("none", "null", ""))):
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return parse_value(name, text, a)
            except ConfigError:
                continue
        raise wrong
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if text not in choices:
            raise ConfigError(f"{name}={text!r} is not allowed; choose one of {', '.join(map(str, choices))}")
        return text
    if origin in (tuple, list):
        (elem,) = [a for a in typing.get_args(tp) if a is not Ellipsis][:1] or [str]
        if isinstance(text, str):
            parts = [p for p in text.replace(" ", "").strip("[]()").split(",") if p != ""]
        elif isinstance(text, (list, tuple)):
            parts = list(text)
        else:
            raise wrong
        return tuple(parse_value(name, p, elem) for p in parts)
    if tp is bool:
        if isinstance(text, bool):
            return text
        if isinstance(text, str) and text.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(text, str) and text.lower() in ("false", "0", "no", "off"):
            return False
        raise wrong
    if tp is int:
        if isinstance(text, bool):
            raise wrong
        if isinstance(text, int):
            return text
        if isinstance(text, float) and text.is_integer():
            return int(text)
        try:
            return int(str(text))
        except ValueError:
            raise wrong from None
    if tp is float:
        if isinstance(text, bool):
            raise wrong
        try:
            return float(text)
        except (TypeError, ValueError):
            raise wrong from None
    if tp is str:
        if not isinstance(text, str):
            raise wrong
        return text
    raise ConfigError(f"{name}: unsupported field type {tp!r}")


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} is not of the form key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def build_config(cls, *layers: Mapping[str, Any]):
    """Defaults of ``cls``, updated by each mapping in ``layers`` in order, then ``validate()``-d.

    Unknown keys and values of the wrong type raise :class:`ConfigError` naming the key and listing the
    valid keys or the expected type.
    """
    types_ = _field_types(cls)
    values: dict[str, Any] = {}
    for layer in layers:
        for k, v in layer.items():
            if k not in types_:
                raise ConfigError(f"unknown parameter {k!r}; valid parameters: {', '.join(sorted(types_))}")
            values[k] = parse_value(k, v, types_[k])
    cfg = cls(**values)
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        validate()
    return cfg


def config_to_dict(cfg) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}


def describe_fields(cls) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) for each field; help comes from ``field(metadata={'help': ...})``."""
    types_ = _field_types(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        rows.append((f.name, _type_name(types_[f.name]), default, f.metadata.get("help", "")))
    return rows


def knob(default: Any, help: str = "", *, project_choice: bool = False):
    """A dataclass field with a help text; ``project_choice`` marks values the papers do not state."""
    text = ("[project choice] " if project_choice else "") + help
    return dataclasses.field(default=default, metadata={"help": text, "project_choice": project_choice})

"""Parse untyped mappings (YAML, Ray's config dict) into frozen dataclasses.

This is the one boundary where strings index into dicts: every config dataclass of fishtune is
built by :func:`parse`, which refuses unknown keys, checks each value against the field's type
annotation and then lets the dataclass check its ranges in ``__post_init__``. Every failure is
a :class:`ConfigError` whose message names the dotted field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

T = TypeVar("T")


class ConfigError(ValueError):
    """A user mistake in a study spec or trial config: the message names the field."""


def parse(cls: type[T], data: Any, path: str) -> T:
    """Build dataclass ``cls`` from ``data``; ``path`` is the dotted name used in errors."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping of {_field_names(cls)}, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{_join(path, str(unknown[0]))}: unknown key; allowed keys are {_field_names(cls)}")
    hints = get_type_hints(cls)
    values = {name: check(hints[name], data[name], _join(path, name)) for name in data}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except TypeError as exc:  # a required field is missing
        missing = [n for n, f in fields.items() if _required(f) and n not in data]
        if missing:
            raise ConfigError(f"{_join(path, missing[0])}: required") from exc
        raise


def check(tp: Any, value: Any, path: str) -> Any:
    """Check ``value`` against type annotation ``tp``; return it (converted where lossless)."""
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{path}: {value!r} is not allowed; choose one of {list(allowed)}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return check(option, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: invalid value {value!r}")
    if origin is dict:  # already-parsed values (e.g. search domains); only the shape is checked
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return parse(tp, value, path)  # type: ignore[arg-type]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {path}")


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted-name view of a (nested) dataclass: ``{"train.lr": 0.01, ...}``."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        name = _join(prefix, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, name))
        elif isinstance(value, Mapping):
            out.update({_join(name, k): v for k, v in value.items()})
        else:
            out[name] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten` on plain dicts: ``{"a.b": 1}`` → ``{"a": {"b": 1}}``."""
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = nested
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return nested


def require(condition: bool, path: str, allowed: str, value: Any) -> None:
    """Raise a :class:`ConfigError` naming ``path`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{path}: must be {allowed}, got {value!r}")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

"""Parse untyped mappings (YAML, Ray's config dict) into frozen dataclasses.

This is the one boundary where strings index into dicts: every config dataclass of fishtune is
built by :func:`parse`, which refuses unknown keys, checks each value against the field's type
annotation and then lets the dataclass check its ranges in ``__post_init__``. Every failure is
a :class:`ConfigError` whose message names the dotted field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
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
    unknown = sorted(set(data) - set(fields), key=str)  # YAML keys need not be strings
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
        return _check_literal(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        return _check_union(tp, value, path)
    if origin is dict:  # already-parsed values (e.g. search domains); only the shape is checked
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(tp, type) and isinstance(value, tp):  # already parsed
            return value
        return parse(tp, value, path)  # type: ignore[arg-type]
    if tp is Any:
        return value
    if tp in _SCALARS:
        accepts, convert = _SCALARS[tp]
        if not accepts(value):
            raise ConfigError(f"{path}: expected {_describe(tp)}, got {value!r}")
        return convert(value)
    raise TypeError(f"unsupported annotation {tp!r} at {path}")


def _number(value: Any) -> bool:
    """An int or a finite float (YAML's .inf and .nan are no setting's value)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


_SCALARS: dict[type, tuple[Callable[[Any], bool], Callable[[Any], Any]]] = {
    bool: (lambda v: isinstance(v, bool), lambda v: v),
    int: (lambda v: not isinstance(v, bool) and isinstance(v, int), lambda v: v),
    float: (_number, float),
    str: (lambda v: isinstance(v, str), lambda v: v),
}


def _check_literal(tp: Any, value: Any, path: str) -> Any:
    allowed = get_args(tp)
    if value not in allowed:
        raise ConfigError(f"{path}: {value!r} is not allowed; choose one of {list(allowed)}")
    return value


def _check_union(tp: Any, value: Any, path: str) -> Any:
    """The first option that takes ``value``; else the one error that explains it best."""
    options = get_args(tp)
    if value is None and type(None) in options:
        return None
    errors: dict[Any, str] = {}
    for option in (o for o in options if o is not type(None)):
        try:
            return check(option, value, path)
        except ConfigError as exc:
            errors[option] = str(exc)
    if len(errors) == 1:
        raise ConfigError(next(iter(errors.values())))
    nested = [msg for option, msg in errors.items() if isinstance(value, Mapping) and _takes_mapping(option)]
    if len(nested) == 1:  # a mapping meant for the one dataclass option: its own error names the key
        raise ConfigError(nested[0])
    raise ConfigError(f"{path}: must be {' or '.join(map(_describe, errors))}, got {value!r}")


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted-name view of nested dataclasses and mappings: ``{"train.lr": 0.01, ...}``."""
    out: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        items = [(str(k), v) for k, v in obj.items()]
    else:
        items = [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)]
    for key, value in items:
        name = _join(prefix, key)
        if isinstance(value, Mapping) or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten` on plain dicts: ``{"a.b": 1}`` → ``{"a": {"b": 1}}``."""
    return merge({}, flat)


def merge(nested: Mapping[str, Any], flat: Mapping[str, Any]) -> dict[str, Any]:
    """``nested`` (copied) with each dotted name of ``flat`` set in it, parents created as needed.

    A parent that is null counts as empty. Where ``nested`` holds another non-mapping at a parent
    of a name, that value is kept and the name dropped: the value is the mistake parsing reports.
    """
    out = _copy(nested)
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node: Any = out
        for key in parents:
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
            if not isinstance(node, dict):
                break
        else:
            node[leaf] = value
    return out


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


def _copy(nested: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _copy(v) if isinstance(v, Mapping) else v for k, v in nested.items()}


def _takes_mapping(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp) or get_origin(tp) is dict


def _describe(tp: Any) -> str:
    """What a value of annotation ``tp`` looks like, for an error message."""
    if get_origin(tp) is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {_field_names(tp)}"  # type: ignore[arg-type]
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(tp, "a mapping")

"""Typed parameter dataclasses: `from_dict` checks keys and types and names what is allowed."""
from __future__ import annotations

import types
import typing
from dataclasses import MISSING, asdict, fields
from typing import Any, Literal, Mapping


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """`value` checked against a type hint (ints widen to float; bools are never numbers)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    bad = ValueError(f"{key}={value!r} is not allowed; expected {_type_name(hint)}")
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if value is None and arg is type(None):
                return None
            try:
                return _coerce(value, arg, key)
            except ValueError:
                continue
        raise bad
    if origin is Literal:
        if value in args:
            return value
        raise ValueError(f"{key}={value!r} is not allowed; allowed: {', '.join(map(repr, args))}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (bool, str) and isinstance(value, hint):
        return value
    raise bad


class TypedParams:
    """Mixin for hyperparameter dataclasses: `from_dict` validates keys and types, naming what is allowed."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TypedParams":
        where = cls.__qualname__
        if not isinstance(d, Mapping):
            raise ValueError(f"{where}: expected a mapping of hyperparameters, got {type(d).__name__}")
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(allowed))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {allowed}")
        missing = [
            f.name for f in fields(cls)
            if f.default is MISSING and f.default_factory is MISSING and f.name not in d
        ]
        if missing:
            raise ValueError(f"{where}: missing required key(s) {missing}")
        hints = typing.get_type_hints(cls)
        return cls(**{k: _coerce(v, hints[k], f"{where}.{k}") for k, v in d.items()})

    @classmethod
    def from_yaml_dict(cls, d: Mapping[str, Any]) -> "TypedParams":
        """`from_dict` after turning strings in float fields into numbers.

        PyYAML (YAML 1.1) reads "5e-4", which has no dot, as a string; hparams files written for
        other tools (EasyEdit's) are full of such values.
        """
        hints = typing.get_type_hints(cls)
        out = dict(d)
        for key, value in d.items():
            hint = hints.get(key)
            if isinstance(value, str) and hint is not None and float in (typing.get_args(hint) or (hint,)):
                try:
                    out[key] = float(value)
                except ValueError:
                    pass  # from_dict names the key and the expected type
        return cls.from_dict(out)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

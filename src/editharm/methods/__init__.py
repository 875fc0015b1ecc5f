"""Editing methods: one registry, one interface, typed hyperparameters."""
from __future__ import annotations

import types
import typing
from dataclasses import MISSING, asdict, fields
from typing import Any, Callable, ClassVar, Literal, Mapping, Optional

import torch

from editharm.records import EditRecord
from editharm.registry import Registry

Stats = Callable[[str], torch.Tensor]


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EditMethod:
    """A model-editing algorithm. Subclasses set `name` and `Hparams` and implement the classmethods."""

    name: ClassVar[str]
    Hparams: ClassVar[type[TypedParams]]

    @classmethod
    def param_names(cls, model: torch.nn.Module, hparams: Any) -> list[str]:
        """Names of the parameters this method changes, known before any edit."""
        raise NotImplementedError

    @classmethod
    def stats_modules(cls, hparams: Any) -> list[str]:
        """Module paths whose input second moment `compute_delta` needs (empty when none)."""
        return []

    @classmethod
    def compute_delta(
        cls,
        model: torch.nn.Module,
        tok: Any,
        records: list[EditRecord],
        hparams: Any,
        *,
        stats: Optional[Stats] = None,
    ) -> dict[str, torch.Tensor]:
        """ΔW that makes the model (at its current weights) learn `records`; the model is left unchanged."""
        raise NotImplementedError


METHODS: Registry[type[EditMethod]] = Registry("method")

# Imported for its side effect of registering; after the definitions above, which it uses.
from editharm.methods import rome  # noqa: E402,F401

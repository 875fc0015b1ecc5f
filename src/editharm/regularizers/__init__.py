"""Regularizers: functions of one edited matrix's W and ΔW that return the ΔW actually applied.

They wrap any editing method, because they see only weights: RECT, Random k%, PCA k% and the like
share this slot.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from editharm.params import TypedParams
from editharm.registry import Registry


class Regularizer:
    """Subclasses set `name` and `Params` and implement `apply`."""

    name: ClassVar[str]
    Params: ClassVar[type[TypedParams]]

    @classmethod
    def apply(
        cls, param_name: str, weight: torch.Tensor, delta: torch.Tensor, params, generator: torch.Generator
    ) -> torch.Tensor:
        """ΔW' for one parameter; `weight` is its current value, both in the parameter's layout."""
        raise NotImplementedError


REGULARIZERS: Registry[type[Regularizer]] = Registry("regularizer")


@dataclass(frozen=True)
class NoParams(TypedParams):
    pass


@REGULARIZERS.register("none")
class Identity(Regularizer):
    name = "none"
    Params = NoParams

    @classmethod
    def apply(cls, param_name, weight, delta, params, generator):
        return delta


# Imported for its side effect of registering; after the definitions above, which it uses.
from editharm.regularizers import baselines, rect  # noqa: E402,F401

"""Regularizers: functions of one edited matrix's ΔW (and what is known about it) that return the ΔW
actually applied.

They wrap any editing method because they see only weights, statistics and their own state: RECT,
Random k%, PCA k%, PRUNE and null-space projection share this slot.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional

import torch

from editharm.core.params import TypedParams
from editharm.core.registry import Registry


@dataclass
class RegContext:
    """What a regularizer may read about one edited parameter at one edit call."""

    param_name: str
    module_path: str  # the module whose weight this is (its input statistics are keyed by it)
    weight: torch.Tensor  # current value, before this call's ΔW
    original: torch.Tensor  # value before the first edit of the sequence
    transposed: bool  # True for GPT-2 Conv1D (in, out) layout, False for nn.Linear (out, in)
    generator: torch.Generator
    stats: Optional[Callable[[str], torch.Tensor]] = None  # module path -> E[k kᵀ] of its input
    state: dict[str, Any] = field(default_factory=dict)  # persists over one sequence, per parameter


class Regularizer:
    """Subclasses set `name` and `Params` and implement `apply`."""

    name: ClassVar[str]
    Params: ClassVar[type[TypedParams]]
    # True when `apply` reads ctx.stats for the edited module (the pipeline then computes them).
    needs_stats: ClassVar[bool] = False

    @classmethod
    def apply(cls, delta: torch.Tensor, params, ctx: RegContext) -> torch.Tensor:
        """ΔW' for one parameter, in the parameter's layout."""
        raise NotImplementedError

    @classmethod
    def snapshot(cls, accumulated: torch.Tensor, params, ctx: RegContext) -> torch.Tensor:
        """The ΔW a checkpoint holds, given the exact sum of every ΔW' `apply` returned in the sequence.

        The sum itself for regularizers that act on each call; one that acts on the sequence's
        whole ΔW (PRUNE's `final`) lets `apply` pass edits through and restrains the sum here,
        while the edits go on from the unrestrained weights.
        """
        return accumulated


REGULARIZERS: Registry[type[Regularizer]] = Registry("regularizer")


@dataclass(frozen=True)
class NoParams(TypedParams):
    pass


@REGULARIZERS.register("none")
class Identity(Regularizer):
    name = "none"
    Params = NoParams

    @classmethod
    def apply(cls, delta, params, ctx):
        return delta

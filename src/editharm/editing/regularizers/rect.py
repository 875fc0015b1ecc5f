"""RECT (Gu et al., 2024): keep the top-k share of ΔW's entries by relative change |ΔW| / |W|."""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch

from editharm.core.params import TypedParams
from editharm.editing.regularizers.base import REGULARIZERS, Regularizer
from editharm.model.deltas import relative_change


@dataclass(frozen=True)
class ShareParams(TypedParams):
    """k: the share kept (of entries, or of the largest possible rank for PCA), in (0, 1]."""

    k: float

    def __post_init__(self) -> None:
        if not 0 < self.k <= 1:
            raise ValueError(f"k={self.k!r} is not allowed; must be in (0, 1]")



def n_kept(k: float, n: int) -> int:
    """ceil(k·n) with k read as the decimal it was written as (0.1·30 is 3, not 4)."""
    return math.ceil(Fraction(repr(k)) * n)


def top_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask of exactly `keep` largest entries; among equal scores the lower flat index wins."""
    flat = scores.flatten()
    if keep >= flat.numel():
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = torch.kthvalue(flat, flat.numel() - keep + 1).values
    mask = flat > threshold
    ties = torch.nonzero(flat == threshold).squeeze(1)
    mask[ties[: keep - int(mask.sum())]] = True
    return mask.view_as(scores)


def keep_top_share(delta: torch.Tensor, scores: torch.Tensor, k: float) -> torch.Tensor:
    """ΔW with only its ceil(k·n) highest-scoring entries kept (ties: lower flat index), the rest zero."""
    mask = top_mask(scores, n_kept(k, delta.numel()))
    return torch.where(mask, delta, torch.zeros_like(delta))


@REGULARIZERS.register("rect")
class Rect(Regularizer):
    name = "rect"
    Params = ShareParams

    @classmethod
    def apply(cls, delta, params: ShareParams, ctx):
        return keep_top_share(delta, relative_change(ctx.weight, delta), params.k)

"""PRUNE (Ma et al., 2024): restrain the large singular values of the accumulated ΔW.

Sequential edits pile up in ΔW_n = Σ ΔW_i; when its singular values outgrow those of the original
weight, the edited matrix's condition number grows and general abilities fall. PRUNE keeps the
method's raw accumulation ΔW_n = U Σ Vᵀ and applies U F(Σ) Vᵀ instead, with

    F(σ) = log_α(σ) − log_α(σ̄) + σ̄   for σ > σ̄,      F(σ) = σ otherwise,

σ̄ the largest singular value of the original weight. F is continuous at σ̄, grows only
logarithmically above it, and so F(σ) ≤ σ: no direction of ΔW is ever enlarged. Each call returns
the change that brings the applied accumulation to U F(Σ) Vᵀ, so the restraint acts on the whole
sequence's ΔW, as in the paper, not on each edit alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from editharm.core.params import TypedParams
from editharm.editing.regularizers.base import REGULARIZERS, RegContext, Regularizer


@dataclass(frozen=True)
class PruneParams(TypedParams):
    alpha: float = math.e  # base of the logarithm; larger restrains harder

    def __post_init__(self) -> None:
        if not self.alpha > 1:
            raise ValueError(f"alpha={self.alpha!r} is not allowed; must be > 1")


def restrain(singular_values: torch.Tensor, ceiling: float, alpha: float) -> torch.Tensor:
    """F(σ) above: σ where σ ≤ ceiling, log_α(σ) − log_α(ceiling) + ceiling above it."""
    log_a = math.log(alpha)
    above = torch.log(singular_values.clamp(min=ceiling)) / log_a - math.log(ceiling) / log_a + ceiling
    return torch.where(singular_values > ceiling, above, singular_values)


def restrained(accumulated: torch.Tensor, ceiling: float, alpha: float) -> torch.Tensor:
    """U F(Σ) Vᵀ for ΔW = U Σ Vᵀ, in float64."""
    u, s, vh = torch.linalg.svd(accumulated.double(), full_matrices=False)
    return (u * restrain(s, ceiling, alpha)) @ vh


@REGULARIZERS.register("prune")
class Prune(Regularizer):
    name = "prune"
    Params = PruneParams

    @classmethod
    def apply(cls, delta, params: PruneParams, ctx: RegContext):
        if delta.dim() != 2:
            raise ValueError(f"prune regularizer: {ctx.param_name} has shape {tuple(delta.shape)}; it needs a matrix")
        if "ceiling" not in ctx.state:
            ctx.state["ceiling"] = torch.linalg.matrix_norm(ctx.original.double(), ord=2).item()
            ctx.state["raw"] = torch.zeros(delta.shape, dtype=torch.float64, device=delta.device)
        ctx.state["raw"] += delta.double()
        target = restrained(ctx.state["raw"], ctx.state["ceiling"], params.alpha)
        applied = ctx.weight.double() - ctx.original.double()
        return (target - applied).to(delta.dtype)

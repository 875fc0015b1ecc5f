"""PRUNE (Ma et al., 2024): restrain the large singular values of the accumulated ΔW.

Sequential edits pile up in ΔW_n = Σ ΔW_i; when its singular values outgrow those of the original
weight, the edited matrix's condition number grows and general abilities fall. PRUNE takes the
method's raw accumulation ΔW_n = U Σ Vᵀ and holds U F(Σ) Vᵀ instead, with

    F(σ) = log_α(σ) − log_α(σ̄) + σ̄   for σ > σ̄,      F(σ) = σ otherwise,

σ̄ the largest singular value of the original weight. F is continuous at σ̄, grows only
logarithmically above it, and so F(σ) ≤ σ: no direction of ΔW is ever enlarged.

When the restraint acts (`restrain`):

- `final` (the reference's): every edit is made unrestrained, on the unrestrained weights; a
  checkpoint at step s holds U F(Σ) Vᵀ of the unrestrained ΔW_s, so it equals "make s edits, then
  restrain once" however many checkpoints the sequence has. The reference saves the unrestrained
  weights at its checkpoints and restrains each one when loading it.
- `per_call`: after every edit call the model holds U F(Σ) Vᵀ of the raw accumulation so far, and
  the next edit is computed on those restrained weights. A checkpoint's ΔW is again U F(Σ) Vᵀ of
  the raw sum, but the raw edits differ from `final`'s because later ones see restrained weights.

In `per_call` the change returned is measured against the exact float64 sum of the changes
returned before (kept in the per-sequence state), not against the weight read back from the
model: a bf16 weight is rounded, and measuring against it would add each call's rounding to the
next change, so the applied ΔW would drift from U F(Σ) Vᵀ as the sequence goes on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from editharm.core.params import TypedParams
from editharm.editing.regularizers.base import REGULARIZERS, RegContext, Regularizer


@dataclass(frozen=True)
class PruneParams(TypedParams):
    alpha: float = math.e  # base of the logarithm; larger restrains harder
    restrain: Literal["final", "per_call"] = "final"

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


def _ceiling(ctx: RegContext, shape: torch.Size) -> float:
    if len(shape) != 2:
        raise ValueError(f"prune regularizer: {ctx.param_name} has shape {tuple(shape)}; it needs a matrix")
    if "ceiling" not in ctx.state:
        ctx.state["ceiling"] = torch.linalg.matrix_norm(ctx.original.double(), ord=2).item()
    return ctx.state["ceiling"]


@REGULARIZERS.register("prune")
class Prune(Regularizer):
    name = "prune"
    Params = PruneParams

    @classmethod
    def apply(cls, delta, params: PruneParams, ctx: RegContext):
        ceiling = _ceiling(ctx, delta.shape)
        if params.restrain == "final":
            return delta
        if "raw" not in ctx.state:
            ctx.state["raw"] = torch.zeros(delta.shape, dtype=torch.float64, device=delta.device)
            ctx.state["held"] = torch.zeros_like(ctx.state["raw"])
        ctx.state["raw"] += delta.double()
        change = (restrained(ctx.state["raw"], ceiling, params.alpha) - ctx.state["held"]).to(delta.dtype)
        ctx.state["held"] += change.double()  # what the model holds once `change` is added, exactly
        return change

    @classmethod
    def snapshot(cls, accumulated, params: PruneParams, ctx: RegContext):
        if params.restrain == "per_call":
            return accumulated
        return restrained(accumulated, _ceiling(ctx, accumulated.shape), params.alpha)

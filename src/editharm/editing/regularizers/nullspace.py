"""Null-space projection: keep only the part of ΔW that leaves preserved knowledge's keys alone.

With C = E[k kᵀ] the second moment of the edited module's input over a text corpus (the same
statistics ROME and MEMIT use), the preserved keys span C's large-eigenvalue directions. P = Û Ûᵀ,
Û the eigenvectors whose eigenvalues are below `threshold`, projects onto the rest, so ΔW' = ΔW P
(nn.Linear layout; P ΔW for Conv1D's (in, out) layout) maps every preserved key k to ΔW' k ≈ 0.
This is AlphaEdit's projection, applied after any locate-then-edit method instead of inside it.

`threshold` is absolute (AlphaEdit's form) unless `relative`, where it is a share of the largest
eigenvalue, which carries over between models whose activations have different scales.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from editharm.core.params import TypedParams
from editharm.editing.regularizers.base import REGULARIZERS, RegContext, Regularizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NullSpaceParams(TypedParams):
    threshold: float = 0.01
    relative: bool = False

    def __post_init__(self) -> None:
        if not self.threshold > 0 or (self.relative and self.threshold >= 1):
            raise ValueError(f"threshold={self.threshold!r} is not allowed; must be > 0 (and < 1 when relative)")


def null_space_projector(second_moment: torch.Tensor, threshold: float, relative: bool = False) -> torch.Tensor:
    """P = Û Ûᵀ over the eigenvectors of the symmetric `second_moment` with eigenvalue < threshold."""
    values, vectors = torch.linalg.eigh(second_moment.double())
    cut = threshold * values.max().item() if relative else threshold
    kept = vectors[:, values < cut]
    return kept @ kept.T


@REGULARIZERS.register("nullspace")
class NullSpace(Regularizer):
    name = "nullspace"
    Params = NullSpaceParams
    needs_stats = True

    @classmethod
    def apply(cls, delta, params: NullSpaceParams, ctx: RegContext):
        if ctx.stats is None:
            raise ValueError(f"nullspace regularizer: no second-moment statistics for {ctx.module_path!r}")
        if "projector" not in ctx.state:
            projector = null_space_projector(ctx.stats(ctx.module_path), params.threshold, params.relative)
            dim = int(round(torch.trace(projector).item()))
            if dim == 0:
                log.warning("nullspace: %s has no eigenvalue below the threshold; every update is removed",
                            ctx.module_path)
            log.info("nullspace: %s keeps a %d-dimensional subspace of %d", ctx.module_path, dim, projector.shape[0])
            ctx.state["projector"] = projector.to(delta.device)
        p = ctx.state["projector"]
        out = p @ delta.double() if ctx.transposed else delta.double() @ p
        return out.to(delta.dtype)

"""AlphaEdit (Fang et al., 2025): MEMIT's layer loop with every update confined to the null space of preserved keys.

For an edited module with input second moment C = K₀K₀ᵀ/N over a corpus (the knowledge to keep):
  P = Û Ûᵀ, Û the eigenvectors of C with eigenvalue below `nullspace_threshold`, projects onto
      the directions preserved keys (almost) never use, so P k₀ ≈ 0;
  ΔW = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + L2·I)⁻¹, with K, R as in MEMIT (`memit.spread_over_layers`)
      and K_p the keys of the sequence's earlier edit calls, the paper's minimiser of
      ‖ΔW K − R‖² + ‖ΔW K_p‖² + L2 ‖ΔW‖² over updates of the form ΔW = X P.
Since P (A P + L2·I) = (P A + L2·I) P, with A = K_p K_pᵀ + K Kᵀ, ΔW = R Kᵀ (P A + L2·I)⁻¹ P is of
the form X P, so ΔW k₀ ≈ 0: outputs for preserved keys do not move. The K_p K_pᵀ term keeps the
sequence's earlier edits.
The sequence's `state` carries Σ K_p K_pᵀ per layer, the projectors (C is fixed within a sequence)
and the context prefixes, generated once from the unedited model (`rome.sequence_contexts`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch

from editharm.core.records import EditRecord
from editharm.editing.methods.base import METHODS, EditMethod, Stats
from editharm.editing.methods.memit import (
    EASYEDIT_UNUSED,
    LayerStep,
    SpreadHparams,
    spread_over_layers,
)

log = logging.getLogger(__name__)

# Besides MEMIT's: where the reference code caches its projectors (they are computed from the
# `stats` given here), and MEMIT's λ, which the null-space solve does not have.
_EASYEDIT_UNUSED = EASYEDIT_UNUSED | {"P_loc", "mom2_update_weight"}

_STATE_KEY = "alphaedit"


@dataclass(frozen=True)
class AlphaEditHparams(SpreadHparams):
    nullspace_threshold: float = 2e-2  # eigenvalues of C below this span the null space
    L2: float = 10.0  # weight of ‖ΔW‖² (keeps the projected system invertible)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._need(self.nullspace_threshold > 0, "nullspace_threshold", "must be > 0")
        self._need(self.L2 > 0, "L2", "must be > 0 (P is singular, so the solve needs it)")

    @classmethod
    def from_easyedit(cls, d: Mapping[str, Any]) -> "AlphaEditHparams":
        """Read an EasyEdit/AlphaEdit hparams mapping; bookkeeping keys are dropped, unknown ones refused."""
        if d.get("mom2_adjustment", True) is not True:
            raise ValueError(f"{cls.__name__}: mom2_adjustment={d['mom2_adjustment']!r} is not allowed; "
                             "AlphaEdit always projects with second-moment statistics")
        return cls._from_easyedit({k: v for k, v in d.items() if k != "mom2_adjustment"}, _EASYEDIT_UNUSED)


@dataclass
class AlphaEditState:
    """What one edit sequence carries from call to call, per edited module path."""

    projectors: dict[str, torch.Tensor] = field(default_factory=dict)  # P (in × in), float64
    prior_gram: dict[str, torch.Tensor] = field(default_factory=dict)  # Σ K_p K_pᵀ (in × in), float64


def null_space_projector(second_moment: torch.Tensor, threshold: float) -> torch.Tensor:
    """P = Û Ûᵀ over the eigenvectors of C with eigenvalue below `threshold` (float64, symmetric, idempotent)."""
    c = second_moment.double()
    values, vectors = torch.linalg.eigh((c + c.T) / 2)  # symmetrised against float32 round-off
    null = vectors[:, values < threshold]
    return null @ null.T


def alphaedit_update(keys: torch.Tensor, residual: torch.Tensor, projector: torch.Tensor,
                     prior_gram: Optional[torch.Tensor], l2: float) -> torch.Tensor:
    """ΔW = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + L2·I)⁻¹ (out × in, float64)."""
    keys, residual, p = keys.double(), residual.double(), projector.to(keys.device, torch.float64)
    gram = keys @ keys.T
    if prior_gram is not None:
        gram = gram + prior_gram.to(gram)
    eye = torch.eye(gram.shape[0], dtype=torch.float64, device=keys.device)
    # Transposed, with P and the grams symmetric: ΔWᵀ = (P A + L2·I)⁻¹ P K Rᵀ, A = K_p K_pᵀ + K Kᵀ.
    return torch.linalg.solve(p @ gram + l2 * eye, p @ keys @ residual.T).T


def sequence_state(state: Optional[dict[str, Any]]) -> AlphaEditState:
    """This method's part of a sequence's state (a throwaway one for a call outside a sequence)."""
    if state is None:
        return AlphaEditState()
    return state.setdefault(_STATE_KEY, AlphaEditState())


@METHODS.register("alphaedit")
class AlphaEdit(EditMethod):
    name = "alphaedit"
    Hparams = AlphaEditHparams

    @classmethod
    def edited_modules(cls, hparams: AlphaEditHparams) -> list[str]:
        return [hparams.module_path(layer) for layer in hparams.layers]

    @classmethod
    def stats_modules(cls, hparams: AlphaEditHparams) -> list[str]:
        return [hparams.module_path(layer) for layer in hparams.layers]

    @classmethod
    def steps(cls, model, tok, records: list[EditRecord], hparams: AlphaEditHparams, *, stats: Optional[Stats] = None,
              state: Optional[dict[str, Any]] = None) -> list[LayerStep]:
        """One batch edit; its keys are added to the sequence's K_p afterwards."""
        if stats is None:
            raise ValueError("AlphaEdit needs second-moment statistics (its null space comes from them)")
        carried = sequence_state(state)

        def solve(path: str, keys: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
            if path not in carried.projectors:
                p = null_space_projector(stats(path).to(keys.device), hparams.nullspace_threshold)
                log.info("%s: null space of dimension %d of %d", path, round(torch.trace(p).item()), p.shape[0])
                carried.projectors[path] = p
            return alphaedit_update(keys, residual, carried.projectors[path], carried.prior_gram.get(path),
                                    hparams.L2)

        steps = spread_over_layers(model, tok, records, hparams, solve, state)
        # A layer's keys depend on the updates of lower layers only, so the keys read during the
        # loop are also the keys of the fully edited model.
        for layer, step in zip(hparams.layers, steps):
            path = hparams.module_path(layer)
            gram = step.keys @ step.keys.T
            carried.prior_gram[path] = gram if path not in carried.prior_gram else carried.prior_gram[path] + gram
        return steps

    @classmethod
    def compute_delta(
        cls, model, tok, records: list[EditRecord], hparams: AlphaEditHparams, *, stats: Optional[Stats] = None,
        state: Optional[dict[str, Any]] = None, editor=None,
    ) -> dict[str, torch.Tensor]:
        """All records in one projected solve per layer; the model is restored, `state` gains their keys."""
        return {step.name: step.update for step in cls.steps(model, tok, records, hparams, stats=stats, state=state)}

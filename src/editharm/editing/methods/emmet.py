"""EMMET (Gupta et al., 2024, "A Unified Framework for Model Editing"): batched ROME, with equality constraints.

MEMIT's layer loop (`memit.spread_over_layers`: keys K, one per record, and residuals R spread over
the edited layers) with EMMET's solve per layer instead of MEMIT's least squares:
  ΔW = argmin ‖ΔW C̃^½‖  subject to  ΔW K = R,  i.e.  ΔW = R (Kᵀ C̃⁻¹ K)⁻¹ Kᵀ C̃⁻¹,
with C̃ = λ C + ν I (λ = mom2_update_weight, ν = update_norm_lambda; C = E[k kᵀ] of the module's
input, the identity without statistics). For a batch of one this is ROME's update with u = C̃⁻¹k.
Against an ill-conditioned Kᵀ C̃⁻¹ K the reference adds emmet_lambda·I to it (the authors' code only
when the batch has more than one key, EasyEdit's always: `emmet_lambda_single`); the constraint then
holds only approximately, and the solve equals MEMIT's R Kᵀ (K Kᵀ + emmet_lambda·C̃)⁻¹, i.e. MEMIT with
λ_MEMIT = emmet_lambda · mom2_update_weight when ν = 0.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch

from editharm.core.records import EditRecord
from editharm.editing.methods.base import METHODS, EditMethod, Stats
from editharm.editing.methods.memit import EASYEDIT_UNUSED, LayerStep, SpreadHparams, spread_over_layers

log = logging.getLogger(__name__)

# Besides MEMIT's: the authors' switch for logging the objective's terms (bookkeeping).
_EASYEDIT_UNUSED = EASYEDIT_UNUSED | {"calculate_objective_value"}


@dataclass(frozen=True)
class EmmetHparams(SpreadHparams):
    mom2_adjustment: bool = True  # off: C is the identity
    mom2_update_weight: float = 1.0  # λ in C̃ = λ C + ν I
    update_norm_lambda: float = 0.0  # ν
    emmet_lambda: float = 0.1  # added to Kᵀ C̃⁻¹ K's diagonal; 0: the exact equality-constrained solve
    emmet_lambda_single: bool = False  # add it for a batch of one key too (EasyEdit's emmet_main.py)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._need(self.mom2_update_weight > 0, "mom2_update_weight", "must be > 0")
        self._need(self.update_norm_lambda >= 0, "update_norm_lambda", "must be ≥ 0")
        self._need(self.emmet_lambda >= 0, "emmet_lambda", "must be ≥ 0")

    @classmethod
    def from_easyedit(cls, d: Mapping[str, Any]) -> "EmmetHparams":
        """Read an EasyEdit/EMMET hparams mapping. EasyEdit regularises a batch of one too, so
        `emmet_lambda_single` is on; bookkeeping keys are dropped, unknown ones refused."""
        if d.get("mom2_adjustment", True) is not True:
            raise ValueError(f"{cls.__name__}: mom2_adjustment={d['mom2_adjustment']!r} is not allowed; the "
                             "reference EMMET ignores it and always uses second-moment statistics")
        rest = {k: v for k, v in d.items() if k != "mom2_adjustment"}
        return cls._from_easyedit({"emmet_lambda_single": True, **rest}, _EASYEDIT_UNUSED)


def emmet_update(keys: torch.Tensor, residual: torch.Tensor, second_moment: Optional[torch.Tensor],
                 hparams: EmmetHparams) -> torch.Tensor:
    """ΔW = R (Kᵀ C̃⁻¹ K + μ I)⁻¹ Kᵀ C̃⁻¹ (out × in, float64), μ = emmet_lambda when it applies, else 0."""
    keys, residual = keys.double(), residual.double()
    n_in, n = keys.shape
    eye = torch.eye(n_in, dtype=torch.float64, device=keys.device)
    c = eye if second_moment is None else second_moment.to(keys)
    if c.shape != (n_in, n_in):
        raise ValueError(f"second moment has shape {tuple(c.shape)}; the keys have {n_in} features")
    c_keys = torch.linalg.solve(hparams.mom2_update_weight * c + hparams.update_norm_lambda * eye, keys)  # C̃⁻¹K
    gram = keys.T @ c_keys
    if n > 1 or hparams.emmet_lambda_single:
        gram = gram + hparams.emmet_lambda * torch.eye(n, dtype=gram.dtype, device=gram.device)
    try:
        return residual @ torch.linalg.solve(gram, c_keys.T)
    except torch.linalg.LinAlgError:
        # Repeated keys with emmet_lambda 0; the reference falls back to the pseudo-inverse too.
        log.warning("EMMET: Kᵀ C̃⁻¹ K is singular (repeated keys?); using its pseudo-inverse")
        return residual @ torch.linalg.pinv(gram) @ c_keys.T


@METHODS.register("emmet")
class Emmet(EditMethod):
    name = "emmet"
    Hparams = EmmetHparams

    @classmethod
    def edited_modules(cls, hparams: EmmetHparams) -> list[str]:
        return [hparams.module_path(layer) for layer in hparams.layers]

    @classmethod
    def stats_modules(cls, hparams: EmmetHparams) -> list[str]:
        return cls.edited_modules(hparams) if hparams.mom2_adjustment else []

    @classmethod
    def steps(cls, model, tok, records: list[EditRecord], hparams: EmmetHparams, *,
              stats: Optional[Stats] = None, state: Optional[dict[str, Any]] = None) -> list[LayerStep]:
        if hparams.mom2_adjustment and stats is None:
            raise ValueError("mom2_adjustment is on but no second-moment statistics were given")

        def solve(path: str, keys: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
            return emmet_update(keys, residual, stats(path) if hparams.mom2_adjustment else None, hparams)

        return spread_over_layers(model, tok, records, hparams, solve, state)

    @classmethod
    def compute_delta(
        cls, model, tok, records: list[EditRecord], hparams: EmmetHparams, *, stats: Optional[Stats] = None,
        state: Optional[dict[str, Any]] = None, editor=None,
    ) -> dict[str, torch.Tensor]:
        """All records in one solve per layer; the model is restored, `state` keeps the sequence's prefixes."""
        return {step.name: step.update for step in cls.steps(model, tok, records, hparams, stats=stats, state=state)}

"""r-ROME (Gupta et al., 2024, "Rebuilding ROME"): ROME with one key, the prefix-averaged k̄, for both sides.

With k₀ the rewritten module's input at the subject's last token of the bare prompt, k̄ its mean over
the bare prompt and the context prefixes, u = C⁻¹k̄ and δ ROME's target shift:
  v* = W k₀ + b + δ (δ is optimised from the bare prompt's value, and its clamp and decay are
      relative to ‖W k₀ + b‖, as in ROME's reference code);
  ΔW = (v* − W k̄ − b) uᵀ / (uᵀ k̄), so W' k̄ + b = v*.
ROME's reference code instead divides by uᵀk₀ and maps k₀ (`rome` with `exact_key: prompt`): the
row space comes from k̄ but the exact key from k₀, and when uᵀk₀ is small the update explodes (the
paper's "disabling edits", which collapse a model in sequential editing). `rome` with
`exact_key: mean` maps k̄ too, but to W k̄ + b + δ; r-ROME's v* is anchored at the bare prompt's
W k₀ + b, so ΔW k̄ = δ + W(k₀ − k̄). Everything else (prefixes, the target shift, records edited one
after another within a call) is ROME's.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Optional

import torch
import torch.nn.functional as F

from editharm.core.records import EditRecord
from editharm.editing.methods.base import METHODS
from editharm.editing.methods.rome import (
    Rome,
    RomeHparams,
    RomeStep,
    rank_one_update,
    step_inputs,
    target_shift,
)
from editharm.model.modules import get_module

log = logging.getLogger(__name__)

# EasyEdit's R-ROME switches (r_rome_hparams.py) and the only setting of them implemented here.
# original_implementation first: in the reference it overrides the other two.
_KEY_SWITCHES = {"original_implementation": False, "enable_prompt_keys": False, "enable_random_prefix_keys": True}
_OTHER_FORM = {
    "original_implementation": "it is ROME's reference code: use method 'rome' with exact_key: prompt",
    "enable_prompt_keys": "the bare prompt's key everywhere is not implemented",
    "enable_random_prefix_keys": "r-ROME is the prefix-averaged key everywhere",
}


@dataclass(frozen=True)
class RRomeHparams(RomeHparams):
    """ROME's hyperparameters; the key the update maps is always the mean key k̄."""

    exact_key: Literal["mean"] = "mean"

    @classmethod
    def from_easyedit(cls, d: Mapping[str, Any]) -> "RRomeHparams":
        """Read an EasyEdit/R-ROME hparams mapping (ROME's keys plus the key switches, which must
        select r-ROME: random-prefix keys on, prompt keys and the original implementation off)."""
        for key, allowed in _KEY_SWITCHES.items():
            if d.get(key, allowed) is not allowed:
                raise ValueError(f"{cls.__name__}: {key}={d[key]!r} is not allowed; only {allowed!r} "
                                 f"({_OTHER_FORM[key]})")
        rest = {k: v for k, v in d.items() if k not in _KEY_SWITCHES}
        return super().from_easyedit({**rest, "exact_key": "mean"})


def r_rome_step(
    model, tok, record: EditRecord, hparams: RomeHparams, *, second_moment: Optional[torch.Tensor] = None,
    prefixes: Optional[list[str]] = None,
) -> RomeStep:
    """One r-ROME edit against the model's current weights (not applied); `prefixes` (bare prompt
    first) default to `context_prefixes` of the current weights."""
    inputs = step_inputs(model, tok, record, hparams, second_moment, prefixes)
    name, weight, transposed, prefixes = inputs.name, inputs.weight, inputs.transposed, inputs.prefixes
    keys, mean_key, u = inputs.keys, inputs.mean_key, inputs.row_space
    with torch.no_grad():  # W k₀ + b (prefixes[0] is the bare prompt) and W k̄ + b
        module = get_module(model, hparams.module_path)
        at_prompt, at_mean = module(torch.stack([keys[0], mean_key]).to(weight)).float()
    delta, nll, steps = target_shift(model, tok, record, hparams, prefixes, at_prompt)
    value = at_prompt + delta
    update = rank_one_update(u, mean_key, value - at_mean, transposed)
    log.info("r_rome %s: %d passes, target nll %.4f, ‖δ‖/‖W k₀ + b‖ %.3f, ‖v* − W k̄ − b‖/‖δ‖ %.3f, cos(k₀, k̄) %.3f",
             record.id, steps, nll, delta.norm().item() / at_prompt.norm().item(),
             (value - at_mean).norm().item() / max(delta.norm().item(), 1e-12),
             F.cosine_similarity(keys[0], mean_key, dim=0).item())
    return RomeStep(name=name, update=update, key=mean_key, value=value, row_space=u.float(), nll=nll, steps=steps)


@METHODS.register("r_rome")
class RRome(Rome):
    """ROME's interface and sequential loop over a call's records, with `r_rome_step` for each."""

    name = "r_rome"
    Hparams = RRomeHparams
    edit_step = staticmethod(r_rome_step)

"""MEMIT (Meng et al., 2023): store a batch of facts with least-squares updates spread over several MLP layers.

For records i = 1..n and edited layers l₁ < … < L:
  δᵢ = ROME's target shift at L (`rome.target_shift`): added to the MLP output of L it makes the
      model predict the target; the MLP output is the last thing a block adds to the residual
      stream, so this is also a shift of the residual after L;
  zᵢ = hᴸᵢ + δᵢ, hᴸᵢ the residual after L at the subject's last token of the bare prompt;
then for each layer l in ascending order, against the model with the lower layers already updated:
  K = [k̄₁ … k̄ₙ] the rewritten module's inputs at the subject's last token, averaged within each
      group of context prefixes and then over the groups, as the reference code's compute_ks does
      (`rome.context_groups`: the bare prompt alone is one group, so with one group of generated
      prefixes it carries half of k̄) (in × n); R = (Z − Hᴸ) / (layers left, l included), Hᴸ
      recomputed because the lower layers' updates moved it;
  ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹, the minimiser of ‖ΔW K − R‖² + λ tr(ΔW C ΔWᵀ), with C = E[k kᵀ]
      of the module's input over a corpus (the identity without second-moment statistics) and
      λ = mom2_update_weight; it is applied before the next layer's keys are read.
The context prefixes are generated once per edit sequence, from the unedited model
(`rome.sequence_contexts`). The model is restored at the end; `compute_delta` returns every
layer's ΔW. AlphaEdit reuses the layer loop (`spread_over_layers`) with its own solve.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Optional

import torch

from editharm.core.params import TypedParams
from editharm.core.records import EditRecord
from editharm.editing.methods.base import METHODS, EditMethod, Stats
from editharm.editing.methods.rome import (
    RomeHparams,
    check_shift_hparams,
    encode_subject,
    sequence_contexts,
    subject_keys,
    target_shift,
)
from editharm.model.modules import edited_matrix, input_device, module_output
from editharm.model.tokens import pad_id, padded_batch

log = logging.getLogger(__name__)

# EasyEdit keys with nothing to honour here: bookkeeping, modules this code does not hook (δ is
# added at the rewritten module's output, the loss is read from the model's logits, i.e.
# v_loss_layer = last layer) and where second-moment statistics come from (the `stats` given).
EASYEDIT_UNUSED = frozenset({
    "alg_name", "model_name", "stats_dir", "device", "model_parallel", "fp16", "max_length",
    "mlp_module_tmp", "attn_module_tmp", "ln_f_module", "lm_head_module", "v_loss_layer",
    "mom2_dataset", "mom2_n_samples", "mom2_dtype",
})


@dataclass(frozen=True)
class SpreadHparams(TypedParams):
    """What MEMIT-style methods share: the edited layers and how the target shift at the last one is found.

    The v_* keys, clamp_norm_factor, kl_factor and the context keys mean what they mean for ROME
    (`RomeHparams`), with the norms taken of the residual after the last edited layer.
    """

    layers: list[int]
    rewrite_module_tmp: str  # e.g. "model.layers.{}.mlp.down_proj" or "transformer.h.{}.mlp.c_proj"
    layer_module_tmp: Optional[str] = None  # the decoder block; None: rewrite_module_tmp up to its "{}"
    v_num_grad_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    v_stop_nll: float = 0.05
    clamp_norm_factor: float = 0.75
    kl_factor: float = 0.0625
    # MEMIT's reference code uses five ten-token continuations as context prefixes.
    context_template_length_params: list[list[int]] = field(default_factory=lambda: [[10, 5]])
    context_prefixes: list[str] = field(default_factory=list)
    fact_token: Literal["subject_last"] = "subject_last"

    def _need(self, ok: bool, key: str, allowed: str) -> None:
        if not ok:
            raise ValueError(f"{type(self).__name__}.{key}={getattr(self, key)!r} is not allowed; {allowed}")

    def __post_init__(self) -> None:
        need = self._need
        need(len(self.layers) >= 1 and self.layers[0] >= 0, "layers", "needs at least one layer, each ≥ 0")
        need(all(a < b for a, b in zip(self.layers, self.layers[1:])), "layers", "must be strictly ascending")
        need(self.rewrite_module_tmp.count("{}") == 1, "rewrite_module_tmp", "needs one '{}' for the layer")
        need(self.layer_module_tmp is None or self.layer_module_tmp.count("{}") == 1, "layer_module_tmp",
             "needs one '{}' for the layer")
        check_shift_hparams(self, need)

    def module_path(self, layer: int) -> str:
        return self.rewrite_module_tmp.format(layer)

    def block_path(self, layer: int) -> str:
        template = self.layer_module_tmp or self.rewrite_module_tmp[: self.rewrite_module_tmp.index("{}") + 2]
        return template.format(layer)

    def at_layer(self, layer: int) -> RomeHparams:
        """ROME's view of one layer, for the shared target-shift and key machinery."""
        return RomeHparams(
            layer=layer, rewrite_module_tmp=self.rewrite_module_tmp, v_num_grad_steps=self.v_num_grad_steps,
            v_lr=self.v_lr, v_weight_decay=self.v_weight_decay, v_stop_nll=self.v_stop_nll,
            clamp_norm_factor=self.clamp_norm_factor, kl_factor=self.kl_factor,
            context_template_length_params=self.context_template_length_params,
            context_prefixes=self.context_prefixes, fact_token=self.fact_token,
        )

    @classmethod
    def _from_easyedit(cls, d: Mapping[str, Any], unused: frozenset[str]) -> Any:
        """Drop `unused` keys, honour `layer_selection: all` only, read "5e-1"-style strings as floats."""
        d = {k: v for k, v in d.items() if k not in unused}
        selection = d.pop("layer_selection", "all")
        if selection != "all":
            raise ValueError(f"{cls.__name__}: layer_selection={selection!r} is not allowed; only 'all' "
                             "(every listed layer is edited)")
        return cls.from_yaml_dict(d)


@dataclass(frozen=True)
class MemitHparams(SpreadHparams):
    mom2_adjustment: bool = True  # off: C is the identity
    mom2_update_weight: float = 15000.0  # λ

    def __post_init__(self) -> None:
        super().__post_init__()
        self._need(self.mom2_update_weight > 0, "mom2_update_weight", "must be > 0")

    @classmethod
    def from_easyedit(cls, d: Mapping[str, Any]) -> "MemitHparams":
        """Read an EasyEdit/MEMIT hparams mapping; bookkeeping keys are dropped, unknown ones refused."""
        return cls._from_easyedit(d, EASYEDIT_UNUSED)


@dataclass
class LayerStep:
    """One layer's part of a batch edit, with what defines it (for checks and logs)."""

    name: str  # edited parameter
    update: torch.Tensor  # ΔW in the parameter's layout, float32
    keys: torch.Tensor  # K (in × n), float64
    residual: torch.Tensor  # R (out × n), float64: what this layer's ΔW should add at the keys


# solve(module_path, K (in × n), R (out × n)) -> ΔW (out × in), all float64
Solve = Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def block_outputs(model, tok, records: list[EditRecord], hparams: SpreadHparams, layer: int) -> torch.Tensor:
    """The residual after `layer` at each record's subject's last token in the bare prompt (n × d, float64)."""
    encoded = [encode_subject(tok, "", r.prompt, r.subject) for r in records]
    inputs, pads = padded_batch([ids for ids, _ in encoded], pad_id(tok), input_device(model))
    out = module_output(model, hparams.block_path(layer), inputs)
    cols = torch.tensor([pad + idx for pad, (_, idx) in zip(pads, encoded)], device=out.device)
    return out[torch.arange(len(records), device=cols.device), cols].double()


def group_mean(rows: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """The mean over groups of each group's mean row; `rows` holds the groups' rows in order."""
    return torch.stack([group.mean(0) for group in rows.split(sizes)]).mean(0)


def layer_keys(model, tok, records: list[EditRecord], hparams: SpreadHparams, layer: int,
               groups: list[list[str]]) -> torch.Tensor:
    """K: the rewritten module's input at each subject's last token, averaged within each group of
    prefixes, then over the groups (in × n, float64)."""
    view = hparams.at_layer(layer)
    prefixes = [prefix for group in groups for prefix in group]
    sizes = [len(group) for group in groups]
    return torch.stack([group_mean(subject_keys(model, tok, r, view, prefixes), sizes) for r in records],
                       1).double()


def target_values(model, tok, records: list[EditRecord], hparams: SpreadHparams,
                  prefixes: list[str]) -> torch.Tensor:
    """Z: the residual after the last edited layer that makes each record's target the continuation (n × d)."""
    last = hparams.layers[-1]
    current = block_outputs(model, tok, records, hparams, last)
    view = hparams.at_layer(last)
    shifts = []
    for record, base in zip(records, current):
        delta, nll, steps = target_shift(model, tok, record, view, prefixes, base.float())
        log.info("target %s: %d passes, target nll %.4f, ‖δ‖/‖h‖ %.3f",
                 record.id, steps, nll, delta.norm().item() / base.norm().item())
        shifts.append(delta.double())
    return current + torch.stack(shifts)


def spread_over_layers(model, tok, records: list[EditRecord], hparams: SpreadHparams, solve: Solve,
                       state: Optional[dict[str, Any]] = None) -> list[LayerStep]:
    """The layer loop MEMIT and AlphaEdit share; `solve` turns a layer's K and R into its ΔW; the
    context prefixes are the sequence's (`state`, see `rome.sequence_contexts`). Model restored."""
    if not records:
        raise ValueError("compute_delta needs at least one record")
    groups = sequence_contexts(model, tok, hparams.at_layer(hparams.layers[-1]), state)
    targets = target_values(model, tok, records, hparams, [prefix for group in groups for prefix in group])
    originals: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    steps: list[LayerStep] = []
    try:
        for i, layer in enumerate(hparams.layers):
            path = hparams.module_path(layer)
            name, weight, transposed = edited_matrix(model, path)
            keys = layer_keys(model, tok, records, hparams, layer, groups)
            gap = targets - block_outputs(model, tok, records, hparams, hparams.layers[-1])
            residual = (gap / (len(hparams.layers) - i)).T.to(keys.device)
            update = solve(path, keys, residual)
            achieved = (update @ keys).norm() / residual.norm()
            log.info("layer %d: ‖Z − H‖ %.3f, ΔW K reaches %.3f of R", layer, gap.norm().item(), achieved.item())
            update = (update.T if transposed else update).float().contiguous()
            originals.append((weight, weight.data.clone()))
            weight.data += update.to(weight)
            steps.append(LayerStep(name=name, update=update, keys=keys, residual=residual))
    finally:
        for weight, original in originals:
            weight.data.copy_(original)
    return steps


def memit_update(keys: torch.Tensor, residual: torch.Tensor, second_moment: Optional[torch.Tensor],
                 weight: float) -> torch.Tensor:
    """ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹ (out × in, float64); C = identity when `second_moment` is None."""
    keys, residual = keys.double(), residual.double()
    n_in = keys.shape[0]
    c = (torch.eye(n_in, dtype=torch.float64, device=keys.device) if second_moment is None
         else second_moment.to(keys))
    if c.shape != (n_in, n_in):
        raise ValueError(f"second moment has shape {tuple(c.shape)}; the keys have {n_in} features")
    # The system is symmetric, so ΔWᵀ = (λC + KKᵀ)⁻¹ K Rᵀ.
    return torch.linalg.solve(weight * c + keys @ keys.T, keys @ residual.T).T


@METHODS.register("memit")
class Memit(EditMethod):
    name = "memit"
    Hparams = MemitHparams

    @classmethod
    def edited_modules(cls, hparams: MemitHparams) -> list[str]:
        return [hparams.module_path(layer) for layer in hparams.layers]

    @classmethod
    def stats_modules(cls, hparams: MemitHparams) -> list[str]:
        return [hparams.module_path(layer) for layer in hparams.layers] if hparams.mom2_adjustment else []

    @classmethod
    def steps(cls, model, tok, records: list[EditRecord], hparams: MemitHparams, *,
              stats: Optional[Stats] = None, state: Optional[dict[str, Any]] = None) -> list[LayerStep]:
        if hparams.mom2_adjustment and stats is None:
            raise ValueError("mom2_adjustment is on but no second-moment statistics were given")

        def solve(path: str, keys: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
            c = stats(path) if hparams.mom2_adjustment else None
            return memit_update(keys, residual, c, hparams.mom2_update_weight)

        return spread_over_layers(model, tok, records, hparams, solve, state)

    @classmethod
    def compute_delta(
        cls, model, tok, records: list[EditRecord], hparams: MemitHparams, *, stats: Optional[Stats] = None,
        state: Optional[dict[str, Any]] = None, editor=None,
    ) -> dict[str, torch.Tensor]:
        """All records in one solve per layer; the model is restored, `state` keeps the sequence's prefixes."""
        return {step.name: step.update for step in cls.steps(model, tok, records, hparams, stats=stats, state=state)}

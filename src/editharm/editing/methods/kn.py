"""KN (Dai et al., 2022, "Knowledge Neurons in Pretrained Transformers"): find the MLP neurons that
express a fact by integrated gradients, then rewrite their value vectors.

Neurons. A neuron (l, i) is coordinate i of layer l's MLP intermediate activation, the input of the
down projection (`rewrite_module_tmp`: Llama's down_proj, whose input is act(gate_proj(x)) ·
up_proj(x); GPT-2's c_proj, whose input is gelu(c_fc(x))), at the prompt's last token. Its value
vector is the column i of down_proj's weight (Linear, (hidden, intermediate)) or the row i of
c_proj's (Conv1D, (intermediate, hidden)): what the neuron adds to the residual stream per unit
of activation.

Attribution. For a prompt with last-token activation a ∈ R^m at layer l and P(α) the probability
of the ground truth's first token when that activation is replaced by α·a (every other layer and
position as computed), the score of neuron i is, with n = `steps`,
    attr_i = a_i / n · Σ_{k=0..n-1} ∂P/∂x_i at x = α_k·a,   α = linspace(0, 1, n),
the grid of the knowledge-neurons package's `scaled_input` (which EasyEdit's KN runs): α_k =
k/(n−1), both ends included, and α = (0) for n = 1. It tends to a_i ∫₀¹ ∂P/∂x_i(α a) dα, so
Σ_i attr_i ≈ P(1) − P(0) (completeness) for large n; for n = 1 it is a_i times the gradient with
the activation zeroed, not at the activation itself (the paper writes the right Riemann sum,
α_k = k/n for k = 1..n). As in the paper's code, a layer's whole
activation vector is scaled at once and every layer in `layers` (all by default) is attributed
separately. Scaled copies run `batch_size` to a forward pass; the prompt's tokens before the last
are run once and cached, since scaling the last token's activation changes nothing before it.

Selection. Per prompt, the neurons with attr_i > `adaptive_threshold` × (the prompt's largest
score over all attributed layers) are its coarse neurons. The prompts are the record's prompt and,
for each of `prompt_prefixes`, "{prefix}. {prompt}". Without `refine` the knowledge neurons are
the union of the prompts' coarse neurons; with it, those that are coarse neurons of more than a
share `p` of the prompts (count > p × prompts, as in the paper and the knowledge-neurons package,
so a count exactly at p × prompts is dropped). The record's rephrase prompt is not used: it
measures generalisation.

Edit. With e_old and e_new the unembedding rows (output embeddings) of the first tokens of the
ground truth and of the new target, and s_i the sign of neuron i's activation on the record's
prompt, each knowledge neuron's value vector changes by
    Δv_i = s_i · (`enhance` · e_new − `erase` · e_old);
every other weight is unchanged (ΔW is exactly 0 outside those columns or rows). The paper's rule
is s_i = 1: its GELU neurons fire positively; Llama's gated activations take either sign, and s_i
makes the neuron's added output, a_i Δv_i = |a_i| (…), push toward the new target in both cases
(on SmolLM2-135M about half the knowledge neurons fire negatively; over 12 demo records the
reliability was 0.0 with s_i = 1 and 0.75 with s_i).
EasyEdit's KN (through the knowledge-neurons package) uses `erase` = `enhance` = 2, the input
embeddings (the same matrix when tied), and erases the model's argmax instead of the ground truth.

Records of one call are edited one after another, each against the weights the earlier ones
produced. No random numbers are drawn, so an edit is a deterministic function of the weights and
the record.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch

from editharm.core.params import TypedParams
from editharm.core.records import EditRecord
from editharm.editing.methods.base import METHODS, EditMethod, Stats
from editharm.editing.methods.rome import PrefixCache
from editharm.model.deltas import applied
from editharm.model.architectures import architecture_by_name
from editharm.model.modules import edited_matrix, eval_mode, input_device, input_hook
from editharm.model.tokens import pad_id, target_ids

log = logging.getLogger(__name__)

Neuron = tuple[int, int]  # (layer, index in the intermediate activation)

# EasyEdit KN keys that change nothing here: bookkeeping, and lr_scale and n_toks, which its KN
# declares but never reads.
_EASYEDIT_UNUSED = frozenset({"alg_name", "device", "model_parallel", "fp16", "max_length", "lr_scale", "n_toks"})

@dataclass(frozen=True)
class KnHparams(TypedParams):
    rewrite_module_tmp: str  # the MLP down projection, e.g. "model.layers.{}.mlp.down_proj"
    layers: Optional[list[int]] = None  # None: every layer of the model
    steps: int = 20  # Riemann steps of the integrated gradients
    batch_size: int = 20  # scaled copies per forward pass; divides `steps`
    adaptive_threshold: float = 0.2
    refine: bool = False
    p: float = 0.4  # with `refine`, keep neurons coarse for more than this share of the prompts
    prompt_prefixes: list[str] = field(default_factory=list)
    erase: float = 2.0
    enhance: float = 2.0

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"KnHparams.{key}={getattr(self, key)!r} is not allowed; {allowed}")

        need(self.rewrite_module_tmp.count("{}") == 1, "rewrite_module_tmp", "needs one '{}' for the layer")
        need(self.layers is None or (bool(self.layers) and all(i >= 0 for i in self.layers)
                                     and len(set(self.layers)) == len(self.layers)),
             "layers", "null (every layer) or a non-empty list of distinct layer indices ≥ 0")
        need(self.steps >= 1, "steps", "must be ≥ 1")
        need(1 <= self.batch_size <= self.steps and self.steps % self.batch_size == 0, "batch_size",
             f"must divide steps={self.steps}")
        need(0 <= self.adaptive_threshold < 1, "adaptive_threshold", "must be in [0, 1)")
        need(0 <= self.p < 1, "p", "must be in [0, 1)")
        need(self.erase >= 0, "erase", "must be ≥ 0")
        need(self.enhance >= 0, "enhance", "must be ≥ 0")

    def layer_indices(self, model: torch.nn.Module) -> list[int]:
        return list(range(model.config.num_hidden_layers)) if self.layers is None else list(self.layers)

    def module_paths(self, model: torch.nn.Module) -> list[str]:
        return [self.rewrite_module_tmp.format(i) for i in self.layer_indices(model)]

    @classmethod
    def from_easyedit(cls, d: Mapping[str, Any]) -> "KnHparams":
        """Read an EasyEdit KN hparams mapping; without `rewrite_module_tmp` the down projection's
        template is the family's (`editharm.model.architectures`) that `model_name` names: EasyEdit's KN
        files name no modules, the knowledge-neurons package knows each family's layout."""
        d = {k: v for k, v in d.items() if k not in _EASYEDIT_UNUSED}
        model_name = d.pop("model_name", "")
        if "rewrite_module_tmp" not in d:
            try:
                d["rewrite_module_tmp"] = architecture_by_name(model_name).mlp_out
            except ValueError as exc:
                raise ValueError(f"KnHparams: {exc}; add rewrite_module_tmp") from None
        return cls.from_dict(d)


def _first_token(tok, text: str, what: str, record: EditRecord) -> int:
    if not text:
        raise ValueError(f"edit record {record.id!r}: KN needs a non-empty {what}")
    return target_ids(tok, record.prompt, text)[0]


@torch.no_grad()
def last_token_activations(model, ids: list[int], paths: list[str]) -> torch.Tensor:
    """(layers, intermediate): each down projection's input at the last token of `ids`."""
    seen: dict[str, torch.Tensor] = {}
    handles = [input_hook(model, path, lambda x, path=path: seen.__setitem__(path, x[0, -1].float()))
               for path in paths]
    try:
        model(input_ids=torch.tensor([ids], device=input_device(model)), use_cache=False, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack([seen[path] for path in paths])


def alpha_grid(steps: int) -> torch.Tensor:
    """The activation scales at which gradients are summed: linspace(0, 1, steps), as the reference."""
    return torch.linspace(0, 1, steps)


def integrated_gradients(
    model, tok, ids: list[int], answer: int, paths: list[str], activations: torch.Tensor, hparams: KnHparams
) -> torch.Tensor:
    """(layers, intermediate) attribution scores of every neuron of `paths` for P(answer | ids)."""
    rows = hparams.batch_size
    cache = PrefixCache(model, [ids] * rows, [len(ids) - 1] * rows, pad_id(tok))
    alphas = alpha_grid(hparams.steps).to(activations.device)
    scores = []
    for path, act in zip(paths, activations):
        total = torch.zeros_like(act)
        for chunk in alphas.split(rows):
            scaled = (chunk[:, None] * act[None]).requires_grad_(True)

            def replace_last(x, scaled=scaled):
                x = x.clone()
                x[:, -1] = scaled.to(x.dtype)
                return x

            handle = input_hook(model, path, replace_last)
            try:
                prob = cache.logits(model, 1)[:, -1].float().softmax(-1)[:, answer]
            finally:
                handle.remove()
            total += torch.autograd.grad(prob.sum(), scaled)[0].sum(0)
        scores.append(act * total / hparams.steps)
    return torch.stack(scores)


def coarse_neurons(scores: torch.Tensor, layers: list[int], threshold: float) -> set[Neuron]:
    """Neurons scoring above `threshold` × the largest score (none when no score is positive)."""
    top = scores.max()
    if top <= 0:
        return set()
    rows, cols = torch.nonzero(scores > threshold * top, as_tuple=True)
    return {(layers[r], c) for r, c in zip(rows.tolist(), cols.tolist())}


def shared_neurons(per_prompt: list[set[Neuron]], p: Optional[float]) -> list[Neuron]:
    """Sorted neurons that are coarse for more than a share `p` of the prompts (for any, when `p` is None)."""
    counts = Counter(n for neurons in per_prompt for n in neurons)
    need = 0.0 if p is None else p * len(per_prompt)
    return sorted(n for n, c in counts.items() if c > need)


def knowledge_neurons(model, tok, record: EditRecord, hparams: KnHparams) -> tuple[list[Neuron], dict[Neuron, float]]:
    """The record's knowledge neurons (sorted) and each one's activation on the record's prompt."""
    answer = _first_token(tok, record.ground_truth, "ground_truth", record)
    layers = hparams.layer_indices(model)
    paths = hparams.module_paths(model)
    prompts = [record.prompt] + [f"{prefix}. {record.prompt}" for prefix in hparams.prompt_prefixes]
    coarse: list[set[Neuron]] = []
    activations = []
    with eval_mode(model), torch.enable_grad():
        for prompt in prompts:
            ids = tok(prompt)["input_ids"]
            activations.append(last_token_activations(model, ids, paths))
            scores = integrated_gradients(model, tok, ids, answer, paths, activations[-1], hparams)
            coarse.append(coarse_neurons(scores, layers, hparams.adaptive_threshold))
    neurons = shared_neurons(coarse, hparams.p if hparams.refine else None)
    return neurons, {(l, i): activations[0][layers.index(l), i].item() for l, i in neurons}


def value_update(model, tok, record: EditRecord, neurons: list[Neuron], activations: dict[Neuron, float],
                 hparams: KnHparams) -> dict[str, torch.Tensor]:
    """ΔW (float32, parameter layout) of the layers holding `neurons`; see the module docstring."""
    old = _first_token(tok, record.ground_truth, "ground_truth", record)
    new = _first_token(tok, record.target_new, "target_new", record)
    unembed = model.get_output_embeddings().weight.detach().float()
    shift = hparams.enhance * unembed[new] - hparams.erase * unembed[old]
    deltas: dict[str, torch.Tensor] = {}
    for layer, index in neurons:
        name, weight, transposed = edited_matrix(model, hparams.rewrite_module_tmp.format(layer))
        if name not in deltas:
            deltas[name] = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        sign = 1.0 if activations[(layer, index)] >= 0 else -1.0
        change = sign * shift.to(weight.device)
        if transposed:
            deltas[name][index, :] += change
        else:
            deltas[name][:, index] += change
    return deltas


@METHODS.register("kn")
class Kn(EditMethod):
    name = "kn"
    Hparams = KnHparams

    @classmethod
    def param_names(cls, model, hparams: KnHparams) -> list[str]:
        return [edited_matrix(model, path)[0] for path in hparams.module_paths(model)]

    @classmethod
    def edited_modules(cls, hparams: KnHparams) -> list[str]:
        if hparams.layers is None:
            raise ValueError("kn edits every layer when 'layers' is null, which is known only from the model; "
                             "list the layers in the method's hparams")
        return [hparams.rewrite_module_tmp.format(i) for i in hparams.layers]

    @classmethod
    def compute_delta(
        cls, model, tok, records: list[EditRecord], hparams: KnHparams, *, stats: Optional[Stats] = None,
        state=None, editor=None,
    ) -> dict[str, torch.Tensor]:
        """Records are edited one after another (each sees the earlier ones); the model is left unchanged."""
        if not records:
            raise ValueError("compute_delta needs at least one record")
        total: dict[str, torch.Tensor] = {}
        for record in records:
            with applied(model, total):
                neurons, acts = knowledge_neurons(model, tok, record, hparams)
                update = value_update(model, tok, record, neurons, acts, hparams)
            for name, delta in update.items():
                total[name] = total[name] + delta if name in total else delta
            if not neurons:
                log.warning("kn %s: no neuron raises the ground truth's probability, so nothing is edited", record.id)
            log.info("kn %s: %d knowledge neurons in layers %s", record.id, len(neurons),
                     sorted({layer for layer, _ in neurons}))
        return total

"""ROME (Meng et al., 2022): store a fact with a rank-one update of one MLP output matrix.

For a record (subject, prompt, target), with k the rewritten module's input at the subject's last
token:
  k̄ = k averaged over the bare prompt and context prefixes put before it, all weighted equally (as
      the reference compute_u does; MEMIT's keys weigh groups of prefixes instead); u = C⁻¹k̄ (C = E[k kᵀ],
      or the identity without second-moment statistics) is the update's row space;
  k* = the key the update maps exactly: k̄ (the paper's formula, `exact_key: mean`) or the bare
      prompt's k₀ (the reference code's form, `exact_key: prompt`);
  v* = W k* + b + δ, with δ optimised so the model, given δ added to the module's output at the
      subject's last token under every prefix, predicts the target (NLL), keeps its next-token
      distribution after the bare subject (KL) and keeps δ small (weight decay, norm clamp);
  ΔW = δ uᵀ / (uᵀ k*), so W' k* + b = v*.
The two forms differ when k₀ is far from k̄ (e.g. a subject that is the first token of a prompt
for a tokenizer that adds no BOS): the paper's form then barely changes the bare prompt, the
code's form divides by a small uᵀk₀ and makes a large update that disturbs other facts.
The context prefixes are generated once per edit sequence, from the unedited model, and reused by
every later edit (`sequence_contexts`), as the reference code's cache does; they are greedy, not
sampled, so the optimisation draws no random numbers (zero start, Adam, eval mode) and an edit is a
deterministic function of the weights, the prefixes and the record.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Optional

import torch
import torch.nn.functional as F

from editharm.core.params import TypedParams
from editharm.core.records import EditRecord
from editharm.editing.methods.base import METHODS, EditMethod, Stats
from editharm.model.modules import (
    edited_matrix,
    frozen,
    get_module,
    input_device,
    module_input,
    output_hook,
)
from editharm.model.tokens import pad_id, padded_batch, target_ids

log = logging.getLogger(__name__)

# Greedy continuations of these words are the generated context prefixes (the MEMIT and EasyEdit
# code samples continuations of the first five; greedy decoding keeps contexts reproducible, so
# each word yields one prefix).
SEED_WORDS = ("The", "Therefore", "Because", "I", "You", "It", "In", "We", "This", "When")

# Where a sequence's `state` keeps its context prefixes, by context settings (`sequence_contexts`).
_CONTEXTS_KEY = "context_groups"

# Below this cosine between the bare prompt's key and the mean key, edits on SmolLM2-135M failed on
# the bare prompt (cos ≈ 0.15: one-token subjects at position 0, no BOS); at 0.59 and above they held.
_FAR_KEY_COS = 0.3

# Keys of EasyEdit/ROME hparams files that this implementation does not need: bookkeeping, module
# paths it does not hook (δ is added at the rewritten module's output, which equals the MLP output
# in GPT-2 and Llama; the loss is read from the model's own logits, i.e. v_loss_layer = last layer),
# and mom2_update_weight, which cancels in the rank-one formula.
_EASYEDIT_UNUSED = frozenset({
    "alg_name", "model_name", "stats_dir", "device", "model_parallel", "fp16", "max_length",
    "layer_module_tmp", "mlp_module_tmp", "attn_module_tmp", "ln_f_module", "lm_head_module",
    "v_loss_layer", "mom2_dataset", "mom2_n_samples", "mom2_dtype", "mom2_update_weight",
})


def check_shift_hparams(hp, need: Callable[[bool, str, str], None]) -> None:
    """Checks of the target-shift hyperparameters (v_*, clamp, KL, context prefixes) that ROME and the
    methods reusing its optimisation (MEMIT, AlphaEdit) share; `need(ok, key, allowed)` raises."""
    need(hp.v_num_grad_steps >= 1, "v_num_grad_steps", "must be ≥ 1")
    need(hp.v_lr > 0, "v_lr", "must be > 0")
    need(hp.v_weight_decay >= 0, "v_weight_decay", "must be ≥ 0")
    need(hp.v_stop_nll >= 0, "v_stop_nll", "must be ≥ 0")
    need(hp.clamp_norm_factor > 0, "clamp_norm_factor", "must be > 0")
    need(hp.kl_factor >= 0, "kl_factor", "must be ≥ 0")
    need(
        all(len(p) == 2 and p[0] >= 1 and 1 <= p[1] <= len(SEED_WORDS)
            for p in hp.context_template_length_params),
        "context_template_length_params",
        f"pairs [n_tokens ≥ 1, n_prefixes in 1..{len(SEED_WORDS)}]",
    )


@dataclass(frozen=True)
class RomeHparams(TypedParams):
    layer: int
    rewrite_module_tmp: str  # e.g. "model.layers.{}.mlp.down_proj" or "transformer.h.{}.mlp.c_proj"
    v_num_grad_steps: int = 20  # forward passes at most; the last one is not followed by an update
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    v_stop_nll: float = 0.05  # stop once the mean target NLL over the prompts is below this
    clamp_norm_factor: float = 4.0  # ‖δ‖ ≤ factor · ‖W k* + b‖
    kl_factor: float = 0.0625
    mom2_adjustment: bool = False
    # [[n_tokens, n_prefixes], ...]: greedy continuations of SEED_WORDS used as context prefixes; the
    # default is the reference ROME hparams' ten 5-token and ten 10-token prefixes
    context_template_length_params: list[list[int]] = field(default_factory=lambda: [[5, 10], [10, 10]])
    context_prefixes: list[str] = field(default_factory=list)  # fixed prefixes, used as "{text}. "
    fact_token: Literal["subject_last"] = "subject_last"
    exact_key: Literal["mean", "prompt"] = "mean"  # see the module docstring

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"RomeHparams.{key}={getattr(self, key)!r} is not allowed; {allowed}")

        need(self.layer >= 0, "layer", "must be ≥ 0")
        need(self.rewrite_module_tmp.count("{}") == 1, "rewrite_module_tmp", "needs one '{}' for the layer")
        check_shift_hparams(self, need)

    @property
    def module_path(self) -> str:
        return self.rewrite_module_tmp.format(self.layer)

    @classmethod
    def from_easyedit(cls, d: Mapping[str, Any]) -> "RomeHparams":
        """Read an EasyEdit/ROME hparams mapping: `layers: [L]` becomes `layer`, unused keys are dropped.

        Such files describe the reference code, so `exact_key` defaults to its form, "prompt".
        """
        d = {"exact_key": "prompt", **{k: v for k, v in d.items() if k not in _EASYEDIT_UNUSED}}
        if "layers" in d:
            layers = d.pop("layers")
            if not isinstance(layers, list) or len(layers) != 1:
                raise ValueError(f"RomeHparams: layers={layers!r} is not allowed; ROME edits exactly one layer")
            d["layer"] = layers[0]
        return cls.from_yaml_dict(d)


@dataclass
class RomeStep:
    """One record's edit, with the vectors that define it (for checks and logs)."""

    name: str  # edited parameter
    update: torch.Tensor  # ΔW in the parameter's layout
    key: torch.Tensor  # k*, the key ΔW maps exactly
    value: torch.Tensor  # v* = W k* + b + δ
    row_space: torch.Tensor  # u = C⁻¹k̄
    nll: float  # target NLL at the last evaluated δ
    steps: int  # forward passes used


def encode_subject(tok, prefix: str, prompt: str, subject: str) -> tuple[list[int], int]:
    """Token ids of prefix + prompt and the index of the last token overlapping the subject."""
    start = len(prefix) + prompt.index(subject)
    end = start + len(subject)
    enc = tok(prefix + prompt, return_offsets_mapping=True)
    hits = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if s < end and e > start]
    if not hits:
        raise ValueError(f"subject {subject!r} maps to no token of {prefix + prompt!r}")
    return enc["input_ids"], hits[-1]


@torch.no_grad()
def _greedy_texts(model, tok, seeds: list[str], n_new: int) -> list[str]:
    seqs = [tok(s)["input_ids"] for s in seeds]
    inputs, _ = padded_batch(seqs, pad_id(tok), input_device(model))
    mask, positions = inputs["attention_mask"], inputs["position_ids"][:, -1:]
    out = model(**inputs, use_cache=True, logits_to_keep=1)
    new: list[torch.Tensor] = []
    for i in range(n_new):
        new.append(out.logits[:, -1].argmax(-1, keepdim=True))
        if i == n_new - 1:
            break
        mask = torch.cat([mask, torch.ones_like(new[-1])], 1)
        positions = positions + 1
        out = model(input_ids=new[-1], attention_mask=mask, position_ids=positions,
                    past_key_values=out.past_key_values, use_cache=True, logits_to_keep=1)
    generated = torch.cat(new, 1).tolist()
    return [tok.decode(s + g, skip_special_tokens=True) for s, g in zip(seqs, generated)]


def context_groups(model, tok, hparams: RomeHparams) -> list[list[str]]:
    """Texts put before the prompt so the edit holds in varied contexts, in groups: [""] (the bare
    prompt), then the fixed `context_prefixes` if any, then one group per [n_tokens, n] of
    `context_template_length_params` (MEMIT-style keys average within each group first)."""
    groups = [[""]]
    if hparams.context_prefixes:
        groups.append([f"{text}. " for text in hparams.context_prefixes])
    for n_tokens, n in hparams.context_template_length_params:
        groups.append([f"{text}. " for text in _greedy_texts(model, tok, list(SEED_WORDS[:n]), n_tokens)])
    return groups


def context_prefixes(model, tok, hparams: RomeHparams) -> list[str]:
    """`context_groups` in one list; the first is "" (bare prompt)."""
    return [prefix for group in context_groups(model, tok, hparams) for prefix in group]


def sequence_contexts(model, tok, hparams: RomeHparams, state: Optional[dict[str, Any]]) -> list[list[str]]:
    """`context_groups` generated at the sequence's first edit call and kept in its `state` for the rest.

    The first call of a sequence sees the unedited weights, so every edit of the sequence uses the
    unedited model's prefixes (the reference code caches its first ones the same way) instead of
    regenerating them on a model that drifts as edits accumulate. Without `state` (a call outside a
    sequence) they are generated from the current weights.
    """
    if state is None:
        return context_groups(model, tok, hparams)
    cache = state.setdefault(_CONTEXTS_KEY, {})
    settings = (tuple(map(tuple, hparams.context_template_length_params)), tuple(hparams.context_prefixes))
    if settings not in cache:
        cache[settings] = context_groups(model, tok, hparams)
    return cache[settings]


def subject_keys(model, tok, record: EditRecord, hparams: RomeHparams, prefixes: list[str]) -> torch.Tensor:
    """The rewritten module's input at the subject's last token, one row per prefix."""
    encoded = [encode_subject(tok, p, record.prompt, record.subject) for p in prefixes]
    inputs, pads = padded_batch([ids for ids, _ in encoded], pad_id(tok), input_device(model))
    keys = module_input(model, hparams.module_path, inputs)
    cols = torch.tensor([pad + idx for pad, (_, idx) in zip(pads, encoded)])
    return keys[torch.arange(len(encoded)), cols].float()


class PrefixCache:
    """Batched rows split at each row's lookup token; the part before it is run once and cached.

    δ changes nothing before the lookup token, so each optimisation step only runs the tails (the
    lookup token and what follows): a few tokens per row instead of the whole context.
    """

    def __init__(self, model, seqs: list[list[int]], lookups: list[int], pad_id: int):
        device = input_device(model)
        heads = [s[:i] for s, i in zip(seqs, lookups)]
        tails = [s[i:] for s, i in zip(seqs, lookups)]
        self.cache = None
        head_mask = torch.zeros(len(seqs), 0, dtype=torch.long, device=device)
        if any(heads):
            # A row whose head is empty is all padding here; its tail attends to none of it.
            head_inputs, _ = padded_batch([h or [pad_id] for h in heads], pad_id, device)
            head_inputs["attention_mask"][[i for i, h in enumerate(heads) if not h], :] = 0
            with torch.no_grad():
                self.cache = model(**head_inputs, use_cache=True, logits_to_keep=1).past_key_values
            head_mask = head_inputs["attention_mask"]
        self.inputs, pads = padded_batch(tails, pad_id, device, first_positions=[len(h) for h in heads])
        self.inputs["attention_mask"] = torch.cat([head_mask, self.inputs["attention_mask"]], 1)
        self.rows = torch.arange(len(seqs), device=device)
        self.cols = torch.tensor(pads, device=device)  # the lookup token is each tail's first

    def logits(self, model, n_last: int) -> torch.Tensor:
        # The forward pass appends the tails to the cache it is given, so it gets a copy.
        past = copy.deepcopy(self.cache)
        return model(**self.inputs, past_key_values=past, use_cache=past is not None, logits_to_keep=n_last).logits


def target_shift(
    model, tok, record: EditRecord, hparams: RomeHparams, prefixes: list[str], base: torch.Tensor
) -> tuple[torch.Tensor, float, int]:
    """δ to add to the module output at the subject's last token; returns (δ, final NLL, passes)."""
    target = target_ids(tok, record.prompt, record.target_new)
    n_target = len(target)
    rewrite = [encode_subject(tok, p, record.prompt, record.subject) for p in prefixes]
    # ROME's KL prompt "{subject} is a" is read at the subject's last token, where a causal model
    # has seen only the subject; the bare subject gives the same distribution in fewer tokens.
    kl_ids, kl_idx = encode_subject(tok, "", record.subject, record.subject)
    seqs = [ids + target[:-1] for ids, _ in rewrite] + [kl_ids[: kl_idx + 1]]
    batch = PrefixCache(model, seqs, [idx for _, idx in rewrite] + [kl_idx], pad_id(tok))
    n_rw = len(rewrite)
    # Left padding puts every scored position in the last n_target columns: the target tokens'
    # predictions for rewriting rows, the subject's last token (the final token) for the KL row.
    target_t = torch.tensor(target, device=batch.rows.device).expand(n_rw, n_target).unsqueeze(2)

    base_norm = base.norm().item()
    delta = torch.zeros_like(base, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hparams.v_lr)
    max_norm = hparams.clamp_norm_factor * base_norm

    def add_delta(out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[batch.rows, batch.cols] += delta.to(out.dtype)
        return out

    kl_init: Optional[torch.Tensor] = None
    handle = output_hook(model, hparams.module_path, add_delta)
    try:
        with frozen(model):
            for step in range(hparams.v_num_grad_steps):
                logits = batch.logits(model, n_target).float()
                logp = logits[:n_rw].log_softmax(-1)
                nll = -logp.gather(2, target_t).mean()
                kl_logp = logits[n_rw:, -1].log_softmax(-1)
                if kl_init is None:
                    kl_init = kl_logp.detach()
                kl = hparams.kl_factor * F.kl_div(kl_init, kl_logp, log_target=True, reduction="batchmean")
                decay = hparams.v_weight_decay * delta.norm() / base_norm**2
                log.debug("rome %s pass %d: nll %.4f kl %.4f decay %.4f",
                          record.id, step, nll.item(), kl.item(), decay.item())
                if nll.item() < hparams.v_stop_nll or step == hparams.v_num_grad_steps - 1:
                    break
                opt.zero_grad()
                (nll + kl + decay).backward()
                opt.step()
                with torch.no_grad():
                    if delta.norm() > max_norm:
                        delta.mul_(max_norm / delta.norm())
    finally:
        handle.remove()
    return delta.detach(), nll.item(), step + 1


def rank_one_update(row_space: torch.Tensor, key: torch.Tensor, residual: torch.Tensor, transposed: bool) -> torch.Tensor:
    """ΔW = residual uᵀ / (uᵀ key), so ΔW key = residual, in the parameter's layout."""
    u = row_space.double()
    update = torch.outer(residual.double(), u) / (u @ key.double())  # (out, in)
    return (update.T if transposed else update).float().contiguous()


def row_space(mean_key: torch.Tensor, second_moment: Optional[torch.Tensor], module_path: str) -> torch.Tensor:
    """u = C⁻¹k̄ (k̄ itself without statistics), float64."""
    u = mean_key.double()
    if second_moment is None:
        return u
    if second_moment.shape != (u.numel(), u.numel()):
        raise ValueError(f"second moment for {module_path!r} has shape {tuple(second_moment.shape)}; "
                         f"the module's input has {u.numel()} features")
    return torch.linalg.solve(second_moment.to(u), u)


@dataclass(frozen=True)
class StepInputs:
    """What a ROME-family edit reads from the model before it solves: the edited matrix, the prefixes
    (bare prompt first), the subject's key under each, their mean k̄ and the row space u = C⁻¹k̄."""

    name: str
    weight: torch.Tensor
    transposed: bool
    prefixes: list[str]
    keys: torch.Tensor
    mean_key: torch.Tensor
    row_space: torch.Tensor


def step_inputs(model, tok, record: EditRecord, hparams: RomeHparams, second_moment: Optional[torch.Tensor],
                prefixes: Optional[list[str]]) -> StepInputs:
    """`StepInputs` of one record against the model's current weights; `prefixes` default to
    `context_prefixes` of the current weights."""
    name, weight, transposed = edited_matrix(model, hparams.module_path)
    if prefixes is None:
        prefixes = context_prefixes(model, tok, hparams)
    keys = subject_keys(model, tok, record, hparams, prefixes)
    mean_key = keys.mean(0)
    u = row_space(mean_key, second_moment, hparams.module_path)
    return StepInputs(name, weight, transposed, prefixes, keys, mean_key, u)


def rome_step(
    model, tok, record: EditRecord, hparams: RomeHparams, *, second_moment: Optional[torch.Tensor] = None,
    prefixes: Optional[list[str]] = None,
) -> RomeStep:
    """One ROME edit against the model's current weights (not applied); `prefixes` (bare prompt
    first) default to `context_prefixes` of the current weights."""
    inputs = step_inputs(model, tok, record, hparams, second_moment, prefixes)
    name, weight, transposed, prefixes = inputs.name, inputs.weight, inputs.transposed, inputs.prefixes
    keys, mean_key, u = inputs.keys, inputs.mean_key, inputs.row_space
    key = mean_key if hparams.exact_key == "mean" else keys[0]  # prefixes[0] is the bare prompt
    with torch.no_grad():
        base = get_module(model, hparams.module_path)(key.to(weight)[None])[0].float()  # W k* + b
    delta, nll, steps = target_shift(model, tok, record, hparams, prefixes, base)
    update = rank_one_update(u, key, delta, transposed)
    cos = F.cosine_similarity(keys[0], mean_key, dim=0).item()
    log.info("rome %s: %d passes, target nll %.4f, ‖δ‖/‖W k* + b‖ %.3f, cos(k₀, k̄) %.3f",
             record.id, steps, nll, delta.norm().item() / base.norm().item(), cos)
    if cos < _FAR_KEY_COS:
        log.warning("rome %s: the bare prompt's key is far from the in-context keys (cos %.2f), so the edit may "
                    "not hold on the prompt itself; a subject that is the prompt's first token with a tokenizer "
                    "that adds no BOS does this", record.id, cos)
    return RomeStep(name=name, update=update, key=key, value=base + delta, row_space=u.float(), nll=nll,
                    steps=steps)


@METHODS.register("rome")
class Rome(EditMethod):
    name = "rome"
    Hparams = RomeHparams

    @classmethod
    def edited_modules(cls, hparams: RomeHparams) -> list[str]:
        return [hparams.module_path]

    @classmethod
    def stats_modules(cls, hparams: RomeHparams) -> list[str]:
        return [hparams.module_path] if hparams.mom2_adjustment else []

    # One record's edit; r-ROME (r_rome.py) replaces it and keeps the rest.
    edit_step = staticmethod(rome_step)

    @classmethod
    def compute_delta(
        cls, model, tok, records: list[EditRecord], hparams: RomeHparams, *, stats: Optional[Stats] = None,
        state: Optional[dict[str, Any]] = None, editor=None,
    ) -> dict[str, torch.Tensor]:
        """Records are edited one after another (each sees the earlier ones) with the sequence's
        context prefixes (`sequence_contexts`); the model is restored."""
        if not records:
            raise ValueError("compute_delta needs at least one record")
        prefixes = [prefix for group in sequence_contexts(model, tok, hparams, state) for prefix in group]
        second_moment = None
        if hparams.mom2_adjustment:
            if stats is None:
                raise ValueError("mom2_adjustment is on but no second-moment statistics were given")
            second_moment = stats(hparams.module_path)
        name, weight, _ = edited_matrix(model, hparams.module_path)
        original = weight.data.clone()
        total = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        try:
            for i, record in enumerate(records):
                step = cls.edit_step(model, tok, record, hparams, second_moment=second_moment, prefixes=prefixes)
                total += step.update
                if i < len(records) - 1:
                    weight.data += step.update.to(weight)
        finally:
            weight.data.copy_(original)
        return {name: total}

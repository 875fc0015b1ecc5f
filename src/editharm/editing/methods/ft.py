"""FT-L and FT-M: store facts by fine-tuning MLP output matrices with Adam.

Both tune W of `rewrite_module_tmp` at each of `layers` (weights only; EasyEdit matches parameter
names by substring, so on GPT-2 it also tunes c_proj's bias) and differ only in the objective:

- FT-L (`ft_l`, EasyEdit's `objective_optimization: prompt_last`, the constrained fine-tuning of
  the ROME paper). The input is the prompt alone. With logp = log-softmax of the logits at the
  prompt's last token, a record's loss is −(1/n) Σ_j logp[t_j] over its n target tokens
  t_1..t_n: every target token is scored at that one position, so for a one-token target this is
  its NLL, and for a longer one a bag-of-tokens objective, as in EasyEdit and the ROME code.
- FT-M (`ft_m`, EasyEdit's `objective_optimization: target_new`). The input is prompt + target
  and a record's loss is the mean cross-entropy of the target tokens, each predicted from the
  position before it; prompt (and padding) positions carry no loss.

Targets are tokenized with `target_ids` (their ids after the prompt, as edit evaluation scores
them) and appended to the prompt's ids. The batch loss is the mean of the records' losses.

Optimisation: ΔW starts at zero and W = W₀ + ΔW, with W₀ the weights at the start of the call.
Each step runs the forward pass with W₀ + ΔW in place of W (the model's parameters are never
written), takes the gradient of the batch loss, adds `weight_decay`·W (the L2 term of Adam's
`weight_decay` on W, as EasyEdit applies it), takes an Adam step on ΔW and, with
`norm_constraint` = ε, clamps ΔW to [−ε, ε] elementwise, so ‖ΔW‖∞ ≤ ε holds exactly for the
returned ΔW. `num_steps` counts passes over the call's records; a pass runs the records in
batches of `batch_size` (all of them in one padded batch when unset), a batch whose loss is
below `stop_loss` takes no step, and training stops after a pass whose mean loss is below it
(EasyEdit's fixed 1e-2 by default). Eval mode and no random numbers make an edit a
deterministic function of the weights and the records.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Mapping, Optional

import torch
from torch.func import functional_call

from editharm.core.params import TypedParams
from editharm.core.records import EditRecord
from editharm.editing.methods.base import METHODS, EditMethod, Stats
from editharm.model.modules import edited_matrix, eval_mode, input_device
from editharm.model.tokens import pad_id, padded_batch, target_ids

log = logging.getLogger(__name__)

Objective = Literal["prompt_last", "target_new"]

# Keys of EasyEdit FT hparams files that change nothing here: bookkeeping, and module paths this
# implementation does not hook (the loss is read from the model's own logits).
_EASYEDIT_UNUSED = frozenset({
    "alg_name", "model_name", "device", "model_parallel", "fp16", "max_length",
    "layer_module_tmp", "mlp_module_tmp", "attn_module_tmp", "ln_f_module", "lm_head_module",
})


@dataclass(frozen=True)
class FtHparams(TypedParams):
    layers: list[int]
    rewrite_module_tmp: str  # e.g. "model.layers.{}.mlp.down_proj" or "transformer.h.{}.mlp.c_proj"
    num_steps: int = 25
    lr: float = 5e-4
    weight_decay: float = 0.0
    norm_constraint: Optional[float] = None  # ε of the L∞ ball around W₀; None: unconstrained
    batch_size: Optional[int] = None  # records per optimiser step; None: all records of the call
    stop_loss: float = 0.01

    objective: ClassVar[Objective]

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"{type(self).__name__}.{key}={getattr(self, key)!r} is not allowed; {allowed}")

        need(bool(self.layers) and all(i >= 0 for i in self.layers) and len(set(self.layers)) == len(self.layers),
             "layers", "a non-empty list of distinct layer indices ≥ 0")
        need(self.rewrite_module_tmp.count("{}") == 1, "rewrite_module_tmp", "needs one '{}' for the layer")
        need(self.num_steps >= 1, "num_steps", "must be ≥ 1")
        need(self.lr > 0, "lr", "must be > 0")
        need(self.weight_decay >= 0, "weight_decay", "must be ≥ 0")
        need(self.norm_constraint is None or self.norm_constraint > 0, "norm_constraint", "must be > 0 or null")
        need(self.batch_size is None or self.batch_size >= 1, "batch_size", "must be ≥ 1 or null")
        need(self.stop_loss >= 0, "stop_loss", "must be ≥ 0")

    def module_paths(self) -> list[str]:
        return [self.rewrite_module_tmp.format(layer) for layer in self.layers]

    @classmethod
    def from_easyedit(cls, d: Mapping[str, Any]) -> "FtHparams":
        """Read an EasyEdit FT hparams mapping.

        `objective_optimization` must be this class's objective (a missing key means EasyEdit's
        default, prompt_last); `norm_constraint: false` means unconstrained; a trailing ".weight"
        of `rewrite_module_tmp` (EasyEdit matches parameter names) is dropped; `kl_factor`, which
        EasyEdit's FT never reads, must be 0.
        """
        d = {k: v for k, v in d.items() if k not in _EASYEDIT_UNUSED}
        objective = d.pop("objective_optimization", "prompt_last")
        if objective != cls.objective:
            other = {"prompt_last": "ft_l", "target_new": "ft_m"}.get(objective)
            hint = f"; that objective is method {other!r}" if other else ""
            raise ValueError(f"{cls.__name__}: objective_optimization={objective!r} is not allowed; "
                             f"allowed: {cls.objective!r}{hint}")
        kl = d.pop("kl_factor", 0)
        if kl not in (0, "0"):
            raise ValueError(f"{cls.__name__}: kl_factor={kl!r} is not allowed; FT has no KL term, allowed: 0")
        if d.get("norm_constraint") is False:
            d["norm_constraint"] = None
        if isinstance(d.get("rewrite_module_tmp"), str) and d["rewrite_module_tmp"].endswith(".weight"):
            d["rewrite_module_tmp"] = d["rewrite_module_tmp"][: -len(".weight")]
        return cls.from_yaml_dict(d)


@dataclass(frozen=True)
class FtLHparams(FtHparams):
    objective: ClassVar[Objective] = "prompt_last"


@dataclass(frozen=True)
class FtMHparams(FtHparams):
    objective: ClassVar[Objective] = "target_new"


@dataclass
class FtBatch:
    """Model inputs for a batch of records and the target tokens each record is scored on."""

    inputs: dict[str, torch.Tensor]
    targets: torch.Tensor  # (records, longest target) token ids, right-aligned, 0 where masked
    mask: torch.Tensor  # (records, longest target) 1.0 at a record's target tokens
    objective: Objective

    @property
    def n_logits(self) -> int:
        """Logits to keep from the end: the prompt's last position, or every target-predicting one."""
        return 1 if self.objective == "prompt_last" else self.targets.shape[1] + 1


def make_batch(model, tok, records: list[EditRecord], objective: Objective) -> FtBatch:
    prompts = [tok(r.prompt)["input_ids"] for r in records]
    targets = [target_ids(tok, r.prompt, r.target_new) for r in records]
    seqs = prompts if objective == "prompt_last" else [p + t for p, t in zip(prompts, targets)]
    inputs, _ = padded_batch(seqs, pad_id(tok), input_device(model))
    width = max(len(t) for t in targets)
    # Left padding puts each row's target tokens in its last columns, so right-aligned targets
    # line up with the logits that predict them.
    ids = torch.tensor([[0] * (width - len(t)) + t for t in targets], device=inputs["input_ids"].device)
    mask = torch.tensor([[0.0] * (width - len(t)) + [1.0] * len(t) for t in targets], device=ids.device)
    return FtBatch(inputs=inputs, targets=ids, mask=mask, objective=objective)


def record_losses(logits: torch.Tensor, batch: FtBatch) -> torch.Tensor:
    """Each record's mean target NLL from the last `batch.n_logits` logits (records, n_logits, vocab)."""
    logp = logits.float().log_softmax(-1)
    if batch.objective == "prompt_last":
        logp = logp[:, -1:].expand(-1, batch.targets.shape[1], -1)
    else:
        logp = logp[:, :-1]  # the last position predicts nothing in the target
    nll = -logp.gather(2, batch.targets[..., None])[..., 0]
    return (nll * batch.mask).sum(1) / batch.mask.sum(1)


def finetune(model, tok, records: list[EditRecord], hparams: FtHparams) -> tuple[dict[str, torch.Tensor], float, int]:
    """ΔW per edited parameter (float32, parameter layout), the last mean loss, and the passes run."""
    mats = [edited_matrix(model, path) for path in hparams.module_paths()]
    base = {name: weight.detach() for name, weight, _ in mats}
    delta = {name: torch.zeros(w.shape, dtype=torch.float32, device=w.device, requires_grad=True)
             for name, w in base.items()}
    opt = torch.optim.Adam(list(delta.values()), lr=hparams.lr)
    size = hparams.batch_size or len(records)
    chunks = [records[i : i + size] for i in range(0, len(records), size)]
    batches = [make_batch(model, tok, chunk, hparams.objective) for chunk in chunks]
    eps = hparams.norm_constraint
    with eval_mode(model), torch.enable_grad():
        for step in range(hparams.num_steps):
            total = 0.0
            for chunk, batch in zip(chunks, batches):
                weights = {n: (base[n].float() + d).to(base[n].dtype) for n, d in delta.items()}
                logits = functional_call(
                    model, weights, args=(), kwargs={**batch.inputs, "use_cache": False, "logits_to_keep": batch.n_logits}
                ).logits
                loss = record_losses(logits, batch).mean()
                total += loss.item() * len(chunk)
                if loss.item() < hparams.stop_loss:
                    continue
                grads = torch.autograd.grad(loss, list(delta.values()))
                for (name, d), g in zip(delta.items(), grads):
                    d.grad = g + hparams.weight_decay * (base[name].float() + d.detach())
                opt.step()
                if eps is not None:
                    with torch.no_grad():
                        for d in delta.values():
                            d.clamp_(-eps, eps)
            mean = total / len(records)
            log.debug("%s pass %d: mean loss %.4f", hparams.objective, step, mean)
            if mean < hparams.stop_loss:
                break
    return {n: d.detach() for n, d in delta.items()}, mean, step + 1


class _Ft(EditMethod):
    """Shared by FT-L and FT-M, which differ only in their Hparams' objective."""

    @classmethod
    def edited_modules(cls, hparams: FtHparams) -> list[str]:
        return hparams.module_paths()

    @classmethod
    def compute_delta(
        cls, model, tok, records: list[EditRecord], hparams: FtHparams, *, stats: Optional[Stats] = None,
        state=None, editor=None,
    ) -> dict[str, torch.Tensor]:
        """All records of the call are learned together; the model's weights are never written."""
        if not records:
            raise ValueError("compute_delta needs at least one record")
        if type(hparams) is not cls.Hparams:
            raise TypeError(f"{cls.name} needs {cls.Hparams.__name__}, got {type(hparams).__name__}")
        delta, loss, passes = finetune(model, tok, records, hparams)
        log.info("%s %s: %d passes, mean loss %.4f, max |ΔW| %.3g", cls.name, [r.id for r in records], passes, loss,
                 max(d.abs().max().item() for d in delta.values()))
        return delta


@METHODS.register("ft_l")
class FtL(_Ft):
    name = "ft_l"
    Hparams = FtLHparams


@METHODS.register("ft_m")
class FtM(_Ft):
    name = "ft_m"
    Hparams = FtMHparams

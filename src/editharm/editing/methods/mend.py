"""MEND (Mitchell et al., 2022): a trained editor turns one fine-tuning gradient into an edit.

For an edited matrix W (input u, output y = W u + b at each token t of the edit prompt), the
gradient of the edit loss L (target NLL after the prompt) is a sum of rank-one terms,
∇W = Σ_t δ_t u_tᵀ with δ_t = ∂L/∂y_t. MEND never forms ∇W: an editor network g maps each token's
normalised pair z_t = [u_t; δ_t] to (ũ_t, δ̃_t), and the edit is ΔW = −α Σ_t δ̃_t ũ_tᵀ with a
learned step α per edited matrix.

g is the reference's IDMLP (EasyEdit easyeditor/trainer/algs/local_nn.py, `IDMLP` and
`LRLinear`): `n_hidden` + 1 low-rank layers of the input's own width D, each
x ← x + relu(s_m ⊙ (U V x + b) + o_m), with V (r × D), U (D × r), r = min(rank, D), and the bias b,
scale s_m and shift o_m all of width D. U starts at zero and V standard normal, so an untrained g
is the identity, and with the untrained normalisation (mean 0, std 1) the untrained edit is
−α ∇W, plain gradient descent. `init: xavier` instead draws U and V Xavier-uniform and drops the
residual (x ← relu(…)), as the reference does. Matrices of one shape share g (`shared`); each
matrix m of a shape then has its own row s_m, o_m ("mode"), so shared layers still treat matrices
differently; unshared networks have no scale and shift, as in the reference. `combine` runs one g
on [u; δ]; otherwise u and δ get their own g (`x_only`, `delta_only`, `one_sided` keep one side as
it is).

Training (`Mend.train`) fits the normalisation to the train split's u and δ, then, per step, edits
a batch of records with the editor, runs the edited model functionally (W + ΔW keeps the graph to
the editor) and minimises cedit × target NLL on the prompts and their rephrasings + cloc × KL of
the edited from the unedited next-token distributions on the locality prompts. u and δ are inputs
to the editor, not differentiated through. Since g acts on each token's pair by itself, editing a
batch of records is the sum of their edits.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Optional

import torch
from torch.func import functional_call
from tqdm.auto import tqdm

from editharm.core.params import TypedParams
from editharm.core.records import EditRecord
from editharm.editing.methods.base import METHODS, EditMethod, Editor, Stats
from editharm.model.modules import edited_matrix, frozen, get_module, input_device
from editharm.model.tokens import pad_id, padded_batch, target_ids

log = logging.getLogger(__name__)

# EasyEdit/MEND keys with no effect here: bookkeeping, where and how to run, logging and saving,
# `seed` (train takes the seed as an argument), `cbase`, which weighs a base-model loss that is
# only trained with `train_base` (fixed to False below), and keys EasyEdit's MEND reads nowhere:
# `hidden_dim` (GradientTransform passes its own, which IDMLP ignores), `dropout`, `half`,
# `no_grad_layers`.
_EASYEDIT_UNUSED = frozenset({
    "alg", "alg_name", "archive", "model_name", "model_class", "tokenizer_class", "tokenizer_name", "device",
    "model_parallel", "results_dir", "seed", "silent", "verbose", "debug", "save", "eval_only", "final_eval",
    "log_interval", "eval_log_interval", "model_save_pt", "max_length", "cbase",
    "hidden_dim", "dropout", "half", "no_grad_layers",
})
# EasyEdit/MEND keys accepted only at the one value this implementation has: `mlp_class` MLP is
# not buildable by EasyEdit's GradientTransform either (it passes n_modes, which MLP lacks), and
# IDMLP ignores `act` (every layer clamps at 0), so only relu says what is run.
_EASYEDIT_FIXED: dict[str, Any] = {"mlp_class": "IDMLP", "act": "relu", "opt": "Adam", "train_base": False}
_PARAM = re.compile(r"^(?P<head>.+?)\.(?P<layer>\d+)\.(?P<tail>.+)\.weight$")
# Editors carry this record of their architecture (a uint8 tensor holding `_architecture`'s text),
# so an editor saved by another architecture is refused rather than misread.
ARCH_KEY = "arch"


@dataclass(frozen=True)
class MendHparams(TypedParams):
    layers: list[int]
    rewrite_module_tmps: list[str]  # e.g. ["model.layers.{}.mlp.up_proj", "model.layers.{}.mlp.down_proj"]
    edit_lr: float = 1e-4  # initial α of every edited matrix
    lr_lr: float = 1e-4  # Adam step size for the α
    lr: float = 1e-6  # Adam step size for the editor networks
    lr_scale: float = 1.0  # multiplies ΔW at edit time (not in training)
    rank: int = 1920  # inner width of each low-rank layer (capped at the layer's width)
    n_hidden: int = 1  # each network has n_hidden + 1 layers
    init: Literal["id", "xavier"] = "id"  # id: U = 0 and residual layers; xavier: no residual
    norm: bool = True  # normalise u and δ with statistics of the train split
    combine: bool = True  # one network on [u; δ]
    x_only: bool = False  # transform u only
    delta_only: bool = False  # transform δ only
    one_sided: bool = False  # transform only the shorter of u and δ
    shared: bool = True  # one network per distinct matrix shape (else one per matrix)
    cedit: float = 0.1
    cloc: float = 1.0
    batch_size: int = 1  # edits per training batch (edited together, as one ΔW)
    accumulate_bs: int = 10  # batches per optimiser step
    train_steps: int = 100000  # training batches
    grad_clip: float = 100.0
    val_size: int = 0  # records held out of the train split for early stopping (0: none)
    val_batch_size: int = 5
    val_interval: int = 1000  # batches between validations
    early_stop_patience: int = 20000  # batches without a better validation before stopping
    early_stop_key: Literal["loss/total_edit_val", "edit/acc_val"] = "loss/total_edit_val"

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"MendHparams.{key}={getattr(self, key)!r} is not allowed; {allowed}")

        need(bool(self.layers) and len(set(self.layers)) == len(self.layers) and min(self.layers) >= 0,
             "layers", "a non-empty list of distinct layers ≥ 0")
        need(bool(self.rewrite_module_tmps) and len(set(self.rewrite_module_tmps)) == len(self.rewrite_module_tmps)
             and all(t.count("{}") == 1 for t in self.rewrite_module_tmps),
             "rewrite_module_tmps", "a non-empty list of distinct templates, each with one '{}' for the layer")
        for key in ("edit_lr", "lr", "lr_scale", "grad_clip"):
            need(getattr(self, key) > 0, key, "must be > 0")
        for key in ("lr_lr", "cedit", "cloc"):
            need(getattr(self, key) >= 0, key, "must be ≥ 0")
        for key in ("rank", "batch_size", "accumulate_bs", "val_batch_size", "val_interval", "early_stop_patience"):
            need(getattr(self, key) >= 1, key, "must be ≥ 1")
        for key in ("n_hidden", "train_steps", "val_size"):
            need(getattr(self, key) >= 0, key, "must be ≥ 0")
        need(not (self.x_only and self.delta_only), "x_only", "x_only and delta_only cannot both be true")
        for key in ("x_only", "delta_only", "one_sided"):
            need(not (self.combine and getattr(self, key)), key,
                 "combine transforms u and δ together; set combine: false for a one-sided editor")

    @property
    def module_paths(self) -> list[str]:
        return [t.format(layer) for layer in self.layers for t in self.rewrite_module_tmps]

    @classmethod
    def from_easyedit(cls, d: Mapping[str, Any]) -> "MendHparams":
        """Read an EasyEdit/MEND hparams mapping.

        `inner_params` (every template at every layer) becomes `layers` + `rewrite_module_tmps`,
        `max_iters` becomes `train_steps`, and validation on `val_steps` batches of
        `val_batch_size` edits becomes `val_size` held-out records.
        """
        d = {k: v for k, v in d.items() if k not in _EASYEDIT_UNUSED}
        for key, only in _EASYEDIT_FIXED.items():
            value = d.pop(key, only)
            if value != only:
                raise ValueError(f"MendHparams: {key}={value!r} cannot be honoured; allowed: {only!r}")
        if "inner_params" in d:
            d["layers"], d["rewrite_module_tmps"] = _split_inner_params(d.pop("inner_params"))
        if "max_iters" in d:
            d["train_steps"] = d.pop("max_iters")
        if "val_steps" in d:
            d["val_size"] = d.pop("val_steps") * d.get("val_batch_size", 5)
        return cls.from_yaml_dict(d)


def _split_inner_params(names: Any) -> tuple[list[int], list[str]]:
    """["model.layers.29.mlp.up_proj.weight", ...] → [29, ...] and ["model.layers.{}.mlp.up_proj", ...]."""
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"MendHparams: inner_params={names!r} is not allowed; expected a list of parameter names")
    layers: list[int] = []
    tmps: list[str] = []
    for name in names:
        m = _PARAM.match(name)
        if m is None:
            raise ValueError(f"MendHparams: inner_params entry {name!r} is not '<path>.<layer>.<module>.weight'")
        layer, tmp = int(m["layer"]), f"{m['head']}.{{}}.{m['tail']}"
        layers += [layer] if layer not in layers else []
        tmps += [tmp] if tmp not in tmps else []
    if len(layers) * len(tmps) != len(set(names)):
        raise ValueError(f"MendHparams: inner_params={names!r} is not every module at every layer "
                         f"(layers {layers}, modules {tmps}); that is the only form supported")
    return layers, tmps


@dataclass(frozen=True)
class Site:
    """One edited matrix and the editor parts it uses."""

    name: str  # parameter name
    module: str  # module path
    transposed: bool  # GPT-2 Conv1D: weight stored (in, out)
    d_in: int
    d_out: int
    group: str  # editor network key (its shape when shared, else its name)
    member: int  # its row in the group's per-matrix scale and shift


def edit_sites(model: torch.nn.Module, hparams: MendHparams) -> list[Site]:
    found = []
    for path in hparams.module_paths:
        name, weight, transposed = edited_matrix(model, path)
        d_in, d_out = weight.shape if transposed else weight.shape[::-1]
        found.append((name, path, transposed, d_in, d_out, f"{d_in}x{d_out}" if hparams.shared else name))
    members: dict[str, int] = {}
    sites = []
    for name, path, transposed, d_in, d_out, group in found:
        sites.append(Site(name, path, transposed, d_in, d_out, group, members.get(group, 0)))
        members[group] = members.get(group, 0) + 1
    return sites


def _sides(site: Site, hparams: MendHparams) -> dict[str, int]:
    """Networks a site's group has, by side: "ud" (combined), "u", "d"; with their input widths."""
    if hparams.combine:
        return {"ud": site.d_in + site.d_out}
    u = not hparams.delta_only and not (hparams.one_sided and site.d_in > site.d_out)
    d = not hparams.x_only and not (hparams.one_sided and site.d_in <= site.d_out)
    return {**({"u": site.d_in} if u else {}), **({"d": site.d_out} if d else {})}


def _rank(hparams: MendHparams, dim: int) -> int:
    return min(hparams.rank, dim)


def editor_shapes(sites: list[Site], hparams: MendHparams) -> dict[str, tuple[int, ...]]:
    """Every tensor an editor for these sites holds, by name (the architecture record aside)."""
    shapes: dict[str, tuple[int, ...]] = {}
    members: dict[str, int] = {}
    for site in sites:
        members[site.group] = max(members.get(site.group, 0), site.member + 1)
    for site in sites:
        shapes[f"lr.{site.name}"] = ()
        if hparams.norm:
            for side, dim in (("u", site.d_in), ("d", site.d_out)):
                shapes[f"norm.{site.name}.{side}_mean"] = (dim,)
                shapes[f"norm.{site.name}.{side}_std"] = (dim,)
        for side, dim in _sides(site, hparams).items():
            for layer in range(hparams.n_hidden + 1):
                key = f"net.{site.group}.{side}.{layer}"
                r = _rank(hparams, dim)
                shapes.update({f"{key}.U": (dim, r), f"{key}.V": (r, dim), f"{key}.bias": (dim,)})
                if hparams.shared:
                    shapes.update({f"{key}.scale": (members[site.group], dim),
                                   f"{key}.shift": (members[site.group], dim)})
    return shapes


def _architecture(hparams: MendHparams) -> str:
    """What decides how an editor's tensors are read, beyond their names and shapes."""
    return (f"mend IDMLP v1: init={hparams.init} n_hidden={hparams.n_hidden} rank={hparams.rank} "
            f"norm={hparams.norm} combine={hparams.combine} x_only={hparams.x_only} "
            f"delta_only={hparams.delta_only} one_sided={hparams.one_sided} shared={hparams.shared}")


def _xavier_uniform(shape: tuple[int, int], gain: float, g: torch.Generator) -> torch.Tensor:
    bound = gain * math.sqrt(6.0 / (shape[0] + shape[1]))
    return (torch.rand(shape, generator=g) * 2 - 1) * bound


def init_editor(model: torch.nn.Module, hparams: MendHparams, *, seed: int = 0) -> Editor:
    """An untrained editor, initialised as the reference's LRLinear: with init id, U = 0 and V standard
    normal (so the networks are the identity); bias 0, scale 1, shift 0; identity normalisation;
    α = edit_lr."""
    g = torch.Generator().manual_seed(seed)
    editor: Editor = {ARCH_KEY: torch.tensor(list(_architecture(hparams).encode()), dtype=torch.uint8)}
    for key, shape in editor_shapes(edit_sites(model, hparams), hparams).items():
        kind = key.rsplit(".", 1)[1]
        if kind in ("U", "V") and hparams.init == "xavier":
            editor[key] = _xavier_uniform(shape, math.sqrt(2.0) if kind == "U" else 1.0, g)
        elif kind == "V":
            editor[key] = torch.randn(shape, generator=g)
        elif kind in ("scale", "u_std", "d_std"):
            editor[key] = torch.ones(shape)
        elif key.startswith("lr."):
            editor[key] = torch.tensor(hparams.edit_lr)
        else:
            editor[key] = torch.zeros(shape)
    return editor


def _check_editor(editor: Optional[Editor], sites: list[Site], hparams: MendHparams) -> None:
    if editor is None:
        raise ValueError("mend edits with a trained editor: run Mend.train on a train split and pass "
                         "its output as editor=")
    if ARCH_KEY not in editor:
        raise ValueError(f"the editor has no {ARCH_KEY!r} record: it was saved by an earlier MEND editor "
                         "(rank-space bottleneck, before IDMLP) and cannot be read as one; train it again "
                         "(the train_editor rule)")
    saved, want_arch = bytes(editor[ARCH_KEY].tolist()).decode(errors="replace"), _architecture(hparams)
    if saved != want_arch:
        raise ValueError(f"the editor was trained as {saved!r}, but these hparams describe {want_arch!r}; "
                         "train it again with these hparams")
    want = editor_shapes(sites, hparams)
    have = set(editor) - {ARCH_KEY}
    missing = sorted(set(want) - have)
    unexpected = sorted(have - set(want))
    wrong = sorted(k for k in set(want) & have if tuple(editor[k].shape) != want[k])
    if missing or unexpected or wrong:
        raise ValueError(f"the editor does not fit this model and these hparams: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}")


# --- gradient factors --------------------------------------------------------------------------


def _batch(model, tok, seqs: list[list[int]]) -> dict[str, torch.Tensor]:
    return padded_batch(seqs, pad_id(tok), input_device(model))[0]


def _target_rows(
    model, tok, pairs: list[tuple[str, str]], extra: list[list[int]] = ()
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One padded batch: a row prompt + target[:-1] per (prompt, target), then the `extra` token rows;
    and labels for the (prompt, target) rows, −100 except at the positions that predict the target."""
    rows = [(tok(p)["input_ids"], target_ids(tok, p, t)) for p, t in pairs]
    inputs = _batch(model, tok, [p + t[:-1] for p, t in rows] + list(extra))
    labels = torch.full_like(inputs["input_ids"][: len(rows)], -100)
    for i, (_, target) in enumerate(rows):
        labels[i, labels.shape[1] - len(target):] = torch.tensor(target)  # left padding: targets end each row
    return inputs, labels


def _row_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean target NLL of each row."""
    valid = labels >= 0
    logp = logits.float().log_softmax(-1).gather(-1, labels.clamp_min(0)[..., None])[..., 0]
    return -(logp * valid).sum(1) / valid.sum(1)


def _row_acc(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Share of each row's target tokens that are the argmax (EasyEdit's reliability measure)."""
    valid = labels >= 0
    return ((logits.argmax(-1) == labels) & valid).sum(1) / valid.sum(1)


def gradient_factors(
    model: torch.nn.Module, tok, records: list[EditRecord], sites: list[Site]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per edited matrix, (u, δ) at every token of the records' edit inputs: (n_tokens, d_in), (n_tokens, d_out).

    The edit loss is the sum over records of each record's mean target NLL; Σ_t δ_t u_tᵀ is its
    gradient with respect to the matrix (in (out, in) layout).
    """
    inputs, labels = _target_rows(model, tok, [(r.prompt, r.target_new) for r in records])
    params = dict(model.named_parameters())
    # Stand-ins that share storage and require grad: the graph then starts at the first edited matrix.
    leaves = {s.name: params[s.name].detach().requires_grad_() for s in sites}
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {s.name: [] for s in sites}

    def hook(name: str):
        return lambda _m, args, out: seen[name].append((args[0].detach(), out))

    handles = [get_module(model, s.module).register_forward_hook(hook(s.name)) for s in sites]
    try:
        with frozen(model), torch.enable_grad():
            logits = functional_call(model, leaves, args=(), kwargs={**inputs, "use_cache": False}).logits
            calls = {name: len(v) for name, v in seen.items() if len(v) != 1}
            if calls:
                raise RuntimeError(f"each edited module must run once per forward pass; calls: {calls}")
            outs = [seen[s.name][0][1] for s in sites]
            grads = torch.autograd.grad(_row_nll(logits, labels).sum(), outs)
    finally:
        for h in handles:
            h.remove()
    # Tokens with a zero u or δ (padding; positions before the targets at the last layer) add nothing
    # to ∇W but would not stay zero once normalised: the reference skips them, in its statistics too.
    factors = {}
    for site, grad in zip(sites, grads):
        u = seen[site.name][0][0]
        keep = inputs["attention_mask"].bool() & (u != 0).any(-1) & (grad != 0).any(-1)
        factors[site.name] = (u[keep].float(), grad[keep].float())
    return factors


# --- the editor --------------------------------------------------------------------------------


def _network(editor: Editor, key: str, member: int, x: torch.Tensor, hparams: MendHparams) -> torch.Tensor:
    """The reference's IDMLP forward on rows x (tokens × D)."""
    for layer in range(hparams.n_hidden + 1):
        p = f"{key}.{layer}"
        pre = (x @ editor[f"{p}.V"].T) @ editor[f"{p}.U"].T + editor[f"{p}.bias"]
        if hparams.shared:
            pre = pre * editor[f"{p}.scale"][member] + editor[f"{p}.shift"][member]
        # clamp, not relu: its gradient at 0 is 1, and with U = 0 every pre-activation starts at 0.
        out = pre.clamp(min=0)
        x = x + out if hparams.init == "id" else out
    return x


def transform(editor: Editor, site: Site, u: torch.Tensor, d: torch.Tensor, hparams: MendHparams):
    """(ũ, δ̃) for one matrix's factors."""
    if hparams.norm:
        # The reference's 1e-7 keeps a feature that never varied in training finite.
        u = (u - editor[f"norm.{site.name}.u_mean"]) / (editor[f"norm.{site.name}.u_std"] + 1e-7)
        d = (d - editor[f"norm.{site.name}.d_mean"]) / (editor[f"norm.{site.name}.d_std"] + 1e-7)
    sides = _sides(site, hparams)
    key = f"net.{site.group}"
    if "ud" in sides:
        both = _network(editor, f"{key}.ud", site.member, torch.cat([u, d], -1), hparams)
        return both.split([site.d_in, site.d_out], -1)
    u = _network(editor, f"{key}.u", site.member, u, hparams) if "u" in sides else u
    d = _network(editor, f"{key}.d", site.member, d, hparams) if "d" in sides else d
    return u, d


def editor_deltas(
    editor: Editor, sites: list[Site], factors: dict[str, tuple[torch.Tensor, torch.Tensor]], hparams: MendHparams
) -> dict[str, torch.Tensor]:
    """ΔW = −α Σ_t δ̃_t ũ_tᵀ per matrix, in its parameter's layout (differentiable in the editor)."""
    deltas = {}
    for site in sites:
        u, d = transform(editor, site, *factors[site.name], hparams)
        deltas[site.name] = -editor[f"lr.{site.name}"] * (u.T @ d if site.transposed else d.T @ u)
    return deltas


def _on(editor: Editor, device: torch.device) -> Editor:
    return {k: v if k == ARCH_KEY else v.to(device=device, dtype=torch.float32) for k, v in editor.items()}


# --- training ----------------------------------------------------------------------------------


def fit_normalisation(model, tok, records: list[EditRecord], sites: list[Site], editor: Editor,
                      chunk: int = 16) -> None:
    """Set the editor's normalisation to the mean and (unbiased) std of u and δ over the records' tokens.

    The reference keeps running statistics over the tokens of its training steps; over whole epochs
    of the train split they are these."""
    sums: dict[str, list[torch.Tensor]] = {}
    counts: dict[str, int] = {}
    for start in range(0, len(records), chunk):
        factors = gradient_factors(model, tok, records[start:start + chunk], sites)
        for name, (u, d) in factors.items():
            parts = [u.double().sum(0), (u.double() ** 2).sum(0), d.double().sum(0), (d.double() ** 2).sum(0)]
            sums[name] = parts if name not in sums else [a + b for a, b in zip(sums[name], parts)]
        for name, (u, _) in factors.items():
            counts[name] = counts.get(name, 0) + u.shape[0]
    for name, (su, su2, sd, sd2) in sums.items():
        if counts[name] < 2:
            raise ValueError(f"mend: {counts[name]} token(s) with a nonzero gradient at {name}; "
                             "the normalisation needs at least 2")
        for side, s, s2 in (("u", su, su2), ("d", sd, sd2)):
            mean = s / counts[name]
            std = ((s2 - counts[name] * mean**2) / (counts[name] - 1)).clamp_min(0).sqrt()
            editor[f"norm.{name}.{side}_mean"].copy_(mean.float())
            editor[f"norm.{name}.{side}_std"].copy_(std.float())


def _meta_loss(model, tok, records: list[EditRecord], sites: list[Site], editor: Editor, hparams: MendHparams):
    """(cedit × edit NLL + cloc × locality KL, edit NLL, KL, edit accuracy) of editing `records` together."""
    factors = gradient_factors(model, tok, records, sites)
    deltas = editor_deltas(editor, sites, factors, hparams)
    n = len(records)
    pairs = [(r.prompt, r.target_new) for r in records] + [(r.rephrase_prompt, r.target_new) for r in records]
    # The locality answer follows its prompt, so the positions that predict it are kept too.
    loc_rows = [tok(r.locality_prompt)["input_ids"] + target_ids(tok, r.locality_prompt, r.locality_answer)
                for r in records]
    inputs, labels = _target_rows(model, tok, pairs, loc_rows)
    loc = {k: v[2 * n:] for k, v in inputs.items()}
    with torch.no_grad():
        base_logp = model(**loc, use_cache=False).logits.float().log_softmax(-1)
    params = dict(model.named_parameters())
    edited = {name: params[name] + delta.to(params[name].dtype) for name, delta in deltas.items()}
    all_logits = functional_call(model, edited, args=(), kwargs={**inputs, "use_cache": False}).logits
    logits, loc_logp = all_logits[: 2 * n], all_logits[2 * n:].float().log_softmax(-1)
    nll = _row_nll(logits, labels).mean()
    mask = loc["attention_mask"].bool()
    kl = (base_logp.exp() * (base_logp - loc_logp)).sum(-1)[mask].mean()
    total = hparams.cedit * nll + hparams.cloc * kl
    acc = _row_acc(logits.detach(), labels)[:n].mean()
    return total, nll.detach(), kl.detach(), acc


def _validate(model, tok, records: list[EditRecord], sites, editor, hparams: MendHparams) -> float:
    """The early-stopping score, lower is better."""
    totals, accs = [], []
    for start in range(0, len(records), hparams.val_batch_size):
        with torch.no_grad():
            total, _, _, acc = _meta_loss(model, tok, records[start:start + hparams.val_batch_size], sites,
                                          editor, hparams)
        totals.append(total.item())
        accs.append(acc.item())
    return sum(totals) / len(totals) if hparams.early_stop_key == "loss/total_edit_val" else -sum(accs) / len(accs)


def train_editor(model, tok, records: list[EditRecord], hparams: MendHparams, *, seed: int = 0) -> Editor:
    sites = edit_sites(model, hparams)
    need = hparams.batch_size + hparams.val_size
    if len(records) < need:
        raise ValueError(f"mend training needs at least batch_size + val_size = {need} records, got {len(records)}")
    g = torch.Generator().manual_seed(seed)
    editor = _on(init_editor(model, hparams, seed=seed), input_device(model))
    order = torch.randperm(len(records), generator=g).tolist()
    val = [records[i] for i in order[:hparams.val_size]]
    train = [records[i] for i in order[hparams.val_size:]]
    # Frozen, the model gets no gradients of its own: backward reaches only the editor.
    with frozen(model):
        if hparams.norm:
            fit_normalisation(model, tok, train, sites, editor)
        kept, steps = _optimise(model, tok, train, val, sites, editor, hparams, g)
    alphas = [kept[f"lr.{s.name}"].item() for s in sites]
    log.info("mend: %d training steps; α from %.3g to [%.3g, %.3g]", steps, hparams.edit_lr, min(alphas), max(alphas))
    return {k: v.cpu().contiguous() for k, v in kept.items()}


def _optimise(model, tok, train: list[EditRecord], val: list[EditRecord], sites: list[Site], editor: Editor,
              hparams: MendHparams, g: torch.Generator) -> tuple[Editor, int]:
    """Adam on the networks (lr) and the α (lr_lr); returns the editor to keep (the best validated one)
    and the number of steps run."""
    trained = [k for k in editor if k.startswith(("net.", "lr."))]
    for k in trained:
        editor[k].requires_grad_(True)
    opt = torch.optim.Adam([
        {"params": [editor[k] for k in trained if k.startswith("net.")], "lr": hparams.lr},
        {"params": [editor[k] for k in trained if k.startswith("lr.")], "lr": hparams.lr_lr},
    ])
    best = (_validate(model, tok, val, sites, editor, hparams), 0) if val else None
    kept = {k: v.detach().clone() for k, v in editor.items()}
    queue: list[int] = []
    step = 0
    for step in tqdm(range(1, hparams.train_steps + 1), desc="mend train", disable=None):
        if len(queue) < hparams.batch_size:  # epochs of the train split, each in a seeded order
            queue += torch.randperm(len(train), generator=g).tolist()
        batch = [train[i] for i in queue[:hparams.batch_size]]
        del queue[:hparams.batch_size]
        total, nll, kl, acc = _meta_loss(model, tok, batch, sites, editor, hparams)
        (total / hparams.accumulate_bs).backward()
        log.debug("mend step %d: total %.4f nll %.4f kl %.4f acc %.3f", step, total.item(), nll, kl, acc)
        if step % hparams.accumulate_bs == 0 or step == hparams.train_steps:
            torch.nn.utils.clip_grad_norm_([editor[k] for k in trained], hparams.grad_clip)
            opt.step()
            opt.zero_grad()
        if best is not None and step % hparams.val_interval == 0:
            score = _validate(model, tok, val, sites, editor, hparams)
            log.info("mend step %d: %s %.4f (best %.4f at step %d)", step, hparams.early_stop_key,
                     abs(score), abs(best[0]), best[1])
            if score < best[0]:
                best = (score, step)
                kept = {k: v.detach().clone() for k, v in editor.items()}
            elif step - best[1] >= hparams.early_stop_patience:
                log.info("mend: early stop at step %d", step)
                break
    if best is None:
        kept = {k: v.detach().clone() for k, v in editor.items()}
    return kept, step


@METHODS.register("mend")
class Mend(EditMethod):
    name = "mend"
    Hparams = MendHparams

    @classmethod
    def param_names(cls, model, hparams: MendHparams) -> list[str]:
        return [s.name for s in edit_sites(model, hparams)]

    @classmethod
    def edited_modules(cls, hparams: MendHparams) -> list[str]:
        return list(hparams.module_paths)

    @classmethod
    def trainable(cls) -> bool:
        return True

    @classmethod
    def train(cls, model, tok, records: list[EditRecord], hparams: MendHparams, *, seed: int = 0) -> Editor:
        """The editor trained on `records` (its tensors by flat name); the model is left unchanged."""
        return train_editor(model, tok, records, hparams, seed=seed)

    @classmethod
    def compute_delta(
        cls, model, tok, records: list[EditRecord], hparams: MendHparams, *, stats: Optional[Stats] = None,
        state=None, editor: Optional[Editor] = None,
    ) -> dict[str, torch.Tensor]:
        """One edit of all records: the editor applied to the sum of their edit-loss gradients."""
        if not records:
            raise ValueError("compute_delta needs at least one record")
        sites = edit_sites(model, hparams)
        _check_editor(editor, sites, hparams)
        editor = _on(editor, input_device(model))
        factors = gradient_factors(model, tok, records, sites)
        with torch.no_grad():
            deltas = editor_deltas(editor, sites, factors, hparams)
        return {name: (hparams.lr_scale * delta).contiguous() for name, delta in deltas.items()}

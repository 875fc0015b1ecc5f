"""AlphaEdit on tiny random GPT-2 (Conv1D) and Llama (Linear): facts flip, preserved outputs do not move."""
from __future__ import annotations

from importlib import resources

import pytest
import torch
import yaml
from helpers import BATCH, spread_hparams

from editharm.editing.methods import METHODS
from editharm.editing.methods.alphaedit import (
    AlphaEdit,
    AlphaEditHparams,
    AlphaEditState,
    alphaedit_update,
    null_space_projector,
)
from editharm.editing.methods.rome import sequence_contexts
from editharm.model.deltas import applied
from editharm.model.modules import module_input
from editharm.model.stats import collect_second_moment
from editharm.model.tokens import padded_batch, target_ids

THRESHOLD = 2e-2  # the paper's; the tiny models' nonzero eigenvalues of C are ≥ 0.2


@pytest.fixture
def preserved(tiny_texts) -> list[str]:
    """The knowledge to keep: four texts, ~50 tokens, so C (128 or 256 features) has a large null space."""
    return tiny_texts[:4]


def tiny_hparams(model, **overrides) -> AlphaEditHparams:
    d = {
        **spread_hparams(model),
        "nullspace_threshold": THRESHOLD,
        "L2": 1.0,
    }
    return AlphaEditHparams.from_dict({**d, **overrides})


def stats_for(model, tok, hp, texts):
    by_module = {path: collect_second_moment(model, tok, path, texts)[0] for path in AlphaEdit.stats_modules(hp)}
    return by_module.__getitem__


def text_batch(tok, texts):
    return padded_batch([tok(t)["input_ids"] for t in texts], tok.pad_token_id, torch.device("cpu"))[0]


@torch.no_grad()
def next_token(model, tok, prompt: str) -> int:
    return model(input_ids=tok(prompt, return_tensors="pt")["input_ids"]).logits[0, -1].argmax().item()


def random_psd(n: int, rank: int, g: torch.Generator) -> torch.Tensor:
    a = torch.randn(rank, n, generator=g, dtype=torch.float64)
    return a.T @ a


def test_registered():
    assert METHODS.get("alphaedit") is AlphaEdit


def test_projector_is_the_symmetric_idempotent_null_space_projector():
    g = torch.Generator().manual_seed(0)
    c = random_psd(20, 7, g)  # rank 7: 13 eigenvalues are zero up to round-off
    p = null_space_projector(c.float(), THRESHOLD)
    torch.testing.assert_close(p, p.T)
    torch.testing.assert_close(p @ p, p)
    assert round(torch.trace(p).item()) == 13
    # Preserved keys (the span of C) are annihilated; null-space vectors pass unchanged.
    torch.testing.assert_close(p @ c, torch.zeros_like(c), rtol=0, atol=1e-4)
    values, vectors = torch.linalg.eigh(c)
    torch.testing.assert_close(p @ vectors[:, :13], vectors[:, :13])


def test_update_matches_the_closed_form_and_lies_in_the_null_space():
    g = torch.Generator().manual_seed(1)
    n_in, n_out, n = 20, 6, 3
    c = random_psd(n_in, 8, g)
    p = null_space_projector(c, THRESHOLD)
    keys = torch.randn(n_in, n, generator=g, dtype=torch.float64)
    residual = torch.randn(n_out, n, generator=g, dtype=torch.float64)
    prior = torch.randn(n_in, 5, generator=g, dtype=torch.float64)
    update = alphaedit_update(keys, residual, p, prior @ prior.T, 0.5)
    # The paper's formula, written out with an explicit inverse.
    inner = prior @ prior.T @ p + keys @ keys.T @ p + 0.5 * torch.eye(n_in, dtype=torch.float64)
    torch.testing.assert_close(update, residual @ keys.T @ p @ torch.linalg.inv(inner))
    torch.testing.assert_close(update @ p, update)
    assert (update @ c).norm() < 1e-8 * update.norm() * c.norm()


def test_preserved_outputs_do_not_move_while_the_facts_flip(model_tok, preserved):
    model, tok = model_tok
    hp = tiny_hparams(model)
    stats = stats_for(model, tok, hp, preserved)
    targets = [target_ids(tok, r.prompt, r.target_new)[0] for r in BATCH]
    assert all(next_token(model, tok, r.prompt) != t for r, t in zip(BATCH, targets))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    steps = AlphaEdit.steps(model, tok, BATCH, hp, stats=stats)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    delta = {s.name: s.update for s in steps}
    inputs = text_batch(tok, preserved)
    tokens = inputs["attention_mask"].bool()
    # Each layer's ΔW maps the preserved texts' keys (read from the unedited model) to ~0.
    for layer, step in zip(hp.layers, steps):
        k0 = module_input(model, hp.module_path(layer), inputs)[tokens].double()  # tokens × in
        update = (step.update.T if model.config.model_type == "gpt2" else step.update).double()  # (out, in)
        assert (k0 @ update.T).norm() < 1e-5 * update.norm() * k0.norm()
    with torch.no_grad():
        before = model(**inputs).logits[tokens]
        with applied(model, delta):
            after = model(**inputs).logits[tokens]
            assert [next_token(model, tok, r.prompt) for r in BATCH] == targets
    torch.testing.assert_close(after, before, rtol=0, atol=1e-4)
    # Without the projection (every eigenvalue under the threshold: P = I) they do move, so the
    # check above can fail.
    unprojected = AlphaEdit.compute_delta(model, tok, BATCH, tiny_hparams(model, nullspace_threshold=1e9), stats=stats)
    with torch.no_grad(), applied(model, unprojected):
        assert (model(**inputs).logits[tokens] - before).abs().max() > 0.1


def test_state_accumulates_the_keys_of_earlier_calls(tiny_gpt2, preserved):
    model, tok = tiny_gpt2
    hp = tiny_hparams(model)
    stats = stats_for(model, tok, hp, preserved)
    state: dict = {}
    # A call outside the sequence, with the sequence's prefixes (those of the unedited model).
    unprimed: dict = {}
    sequence_contexts(model, tok, hp.at_layer(hp.layers[-1]), unprimed)
    first = AlphaEdit.steps(model, tok, BATCH[:2], hp, stats=stats, state=state)
    carried = state["alphaedit"]
    assert isinstance(carried, AlphaEditState)
    paths = [hp.module_path(layer) for layer in hp.layers]
    for path, step in zip(paths, first):
        torch.testing.assert_close(carried.prior_gram[path], step.keys @ step.keys.T)
    projectors = dict(carried.projectors)
    with applied(model, {s.name: s.update for s in first}):
        second = AlphaEdit.steps(model, tok, BATCH[2:], hp, stats=stats, state=state)
        alone = AlphaEdit.steps(model, tok, BATCH[2:], hp, stats=stats, state=unprimed)
    for path, a, b in zip(paths, first, second):
        torch.testing.assert_close(carried.prior_gram[path], a.keys @ a.keys.T + b.keys @ b.keys.T)
        assert carried.projectors[path] is projectors[path]  # computed once per sequence
    # The first layer's keys and residuals do not depend on the prior; the solve does: it is the
    # closed form with the first call's keys, and it disturbs them less than a solve without them.
    k1 = first[0].keys
    torch.testing.assert_close(second[0].keys, alone[0].keys)
    expected = alphaedit_update(second[0].keys, second[0].residual, projectors[paths[0]], k1 @ k1.T, hp.L2)
    torch.testing.assert_close(second[0].update.T.double(), expected, rtol=1e-4, atol=1e-6)
    disturbance = lambda step: (step.update.T.double() @ k1).norm().item()  # noqa: E731
    assert disturbance(second[0]) < 0.5 * disturbance(alone[0])


def test_statistics_are_required(tiny_gpt2):
    model, tok = tiny_gpt2
    hp = tiny_hparams(model)
    assert AlphaEdit.stats_modules(hp) == ["transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_proj"]
    with pytest.raises(ValueError, match="second-moment"):
        AlphaEdit.compute_delta(model, tok, BATCH, hp)


def test_hparams_are_checked():
    base = {"layers": [4, 5], "rewrite_module_tmp": "model.layers.{}.mlp.down_proj"}
    with pytest.raises(ValueError, match=r"L2=0.0.*> 0"):
        AlphaEditHparams.from_dict({**base, "L2": 0})
    with pytest.raises(ValueError, match=r"nullspace_threshold=-1.0.*> 0"):
        AlphaEditHparams.from_dict({**base, "nullspace_threshold": -1})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['mom2_update_weight'\]"):
        AlphaEditHparams.from_dict({**base, "mom2_update_weight": 15000})
    hp = AlphaEditHparams.from_dict(base)
    assert (hp.nullspace_threshold, hp.L2) == (2e-2, 10.0)


EASYEDIT_YAML = """
alg_name: "AlphaEdit"
model_name: "./hugging_cache/gpt2-xl"
stats_dir: "./data/stats"
P_loc: "./null_space_project.pt"
device: 0
layers: [13, 14, 15, 16, 17]
clamp_norm_factor: 0.75
layer_selection: "all"
fact_token: "subject_last"
v_num_grad_steps: 20
v_lr: 5e-1
v_loss_layer: 47
v_weight_decay: 0.5
kl_factor: 0.0625
mom2_adjustment: true
mom2_update_weight: 20000
rewrite_module_tmp: "transformer.h.{}.mlp.c_proj"
layer_module_tmp: "transformer.h.{}"
mlp_module_tmp: "transformer.h.{}.mlp"
attn_module_tmp: "transformer.h.{}.attn"
ln_f_module: "transformer.ln_f"
lm_head_module: "transformer.wte"
mom2_dataset: "wikipedia"
mom2_n_samples: 100000
mom2_dtype: "float32"
nullspace_threshold: 2e-2
L2: 10
model_parallel: false
"""


def test_easyedit_hparams_are_read():
    easyedit = yaml.safe_load(EASYEDIT_YAML)
    hp = AlphaEditHparams.from_easyedit(easyedit)
    assert hp.layers == [13, 14, 15, 16, 17]
    assert (hp.v_lr, hp.clamp_norm_factor, hp.nullspace_threshold, hp.L2) == (0.5, 0.75, 0.02, 10.0)
    assert hp.block_path(13) == "transformer.h.13"
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['null_space_rank'\]"):
        AlphaEditHparams.from_easyedit({**easyedit, "null_space_rank": 100})
    with pytest.raises(ValueError, match="mom2_adjustment=False"):
        AlphaEditHparams.from_easyedit({**easyedit, "mom2_adjustment": False})


@pytest.mark.parametrize("preset", ["gpt2-xl", "llama-7b", "llama-2-7b", "smollm2-135m", "tiny-llama"])
def test_presets_load(preset):
    text = resources.files("editharm.editing").joinpath(f"presets/alphaedit/{preset}.yaml").read_text()
    hp = AlphaEditHparams.from_dict(yaml.safe_load(text))
    assert hp.L2 > 0 and hp.layers


def test_tiny_llama_preset_edits_the_tiny_llama(tiny_llama, preserved):
    model, tok = tiny_llama
    text = resources.files("editharm.editing").joinpath("presets/alphaedit/tiny-llama.yaml").read_text()
    hp = AlphaEditHparams.from_dict(yaml.safe_load(text))
    delta = AlphaEdit.compute_delta(model, tok, BATCH[:2], hp, stats=stats_for(model, tok, hp, preserved))
    with applied(model, delta):
        assert [next_token(model, tok, r.prompt) for r in BATCH[:2]] == [
            target_ids(tok, r.prompt, r.target_new)[0] for r in BATCH[:2]
        ]

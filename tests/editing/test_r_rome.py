"""r-ROME on tiny random GPT-2 (Conv1D) and Llama (Linear): the fact flips, the update maps the mean key,
and a sequence of edits stays bounded."""
from __future__ import annotations

from importlib import resources

import pytest
import torch
import yaml
from helpers import record

from editharm.editing.methods import METHODS
from editharm.editing.methods.r_rome import RRome, RRomeHparams, r_rome_step
from editharm.editing.methods.rome import context_prefixes, subject_keys, target_shift
from editharm.model.deltas import applied
from editharm.model.modules import get_module
from editharm.model.stats import collect_second_moment
from editharm.model.tokens import target_ids

# Prompts end with the subject (random weights attend almost uniformly; see test_rome.py).
FACTS = [
    record("The capital city of France", "France", "Rome", "france"),
    record("The first book of John", "John", "apples", "john"),
    record("The old language of Japan", "Japan", "green", "japan"),
    record("The big river of Egypt", "Egypt", "London", "egypt"),
    record("The new king of Spain", "Spain", "Tokyo", "spain"),
    record("The last queen of England", "England", "blue", "england"),
    record("The small dog of Mary", "Mary", "Cairo", "mary"),
    record("The good author of Greece", "Greece", "seven", "greece"),
]
FRANCE = FACTS[0]


@pytest.fixture
def r_rome_hparams(tiny_rome_hparams):
    """Factory: the tiny ROME hparams (edit layer 1) as r-ROME's, with keyword overrides."""
    def make(model, **overrides) -> RRomeHparams:
        return RRomeHparams.from_dict({**tiny_rome_hparams(model).to_dict(), **overrides})

    return make


def second_moment(model, tok, hp, texts):
    return collect_second_moment(model, tok, hp.module_path, texts)[0]


@torch.no_grad()
def next_token(model, tok, prompt: str) -> int:
    return model(input_ids=tok(prompt, return_tensors="pt")["input_ids"]).logits[0, -1].argmax().item()


def test_registered():
    assert METHODS.get("r_rome") is RRome


def test_edit_makes_target_the_argmax_and_leaves_model_unchanged(model_tok, r_rome_hparams):
    model, tok = model_tok
    hp = r_rome_hparams(model)
    target = target_ids(tok, FRANCE.prompt, FRANCE.target_new)[0]
    assert next_token(model, tok, FRANCE.prompt) != target
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    delta = RRome.compute_delta(model, tok, [FRANCE], hp)
    assert list(delta) == RRome.param_names(model, hp)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    with applied(model, delta):
        assert next_token(model, tok, FRANCE.prompt) == target


@pytest.mark.parametrize("mom2", [False, True])
def test_update_maps_the_mean_key_to_the_prompts_value_plus_shift(model_tok, r_rome_hparams, tiny_texts, mom2):
    model, tok = model_tok
    hp = r_rome_hparams(model, mom2_adjustment=mom2)
    c = second_moment(model, tok, hp, tiny_texts) if mom2 else None
    prefixes = context_prefixes(model, tok, hp)
    step = r_rome_step(model, tok, FRANCE, hp, second_moment=c, prefixes=prefixes)
    keys = subject_keys(model, tok, FRANCE, hp, prefixes)
    mean_key = keys.mean(0)
    assert len(keys) == 3 and torch.equal(step.key, mean_key)
    module = get_module(model, hp.module_path)
    with torch.no_grad():
        at_prompt = module(keys[0][None])[0]  # W k₀ + b
    # v* is the bare prompt's value plus ROME's target shift, its norms taken from W k₀ + b
    delta, _, _ = target_shift(model, tok, FRANCE, hp, prefixes, at_prompt)
    torch.testing.assert_close(step.value, at_prompt + delta)
    with torch.no_grad():
        with applied(model, {step.name: step.update}):
            torch.testing.assert_close(module(mean_key[None])[0], step.value, rtol=1e-4, atol=1e-4)  # W' k̄ + b = v*
    # Rank one, with the row space along C⁻¹k̄ (k̄ itself without statistics).
    update = (step.update.T if model.config.model_type == "gpt2" else step.update).double()  # (out, in)
    direction = torch.linalg.solve(c.double(), mean_key.double()) if mom2 else mean_key.double()
    assert torch.linalg.matrix_rank(update.float()).item() == 1  # float32, as the update is stored
    row = update[update.norm(dim=1).argmax()]
    assert torch.nn.functional.cosine_similarity(row, direction, dim=0).abs().item() == pytest.approx(1.0, abs=1e-5)


def test_calls_edit_their_records_one_after_another(tiny_llama, r_rome_hparams):
    model, tok = tiny_llama
    hp = r_rome_hparams(model)
    prefixes = context_prefixes(model, tok, hp)
    first = r_rome_step(model, tok, FACTS[0], hp, prefixes=prefixes)
    with applied(model, {first.name: first.update}):
        second = r_rome_step(model, tok, FACTS[1], hp, prefixes=prefixes)
    delta = RRome.compute_delta(model, tok, FACTS[:2], hp)
    torch.testing.assert_close(delta[first.name], first.update + second.update)


def test_eight_sequential_edits_stay_bounded_and_all_hold(model_tok, r_rome_hparams, tiny_texts):
    # The failure r-ROME fixes is a sequence in which one update is far larger than the rest and
    # breaks the model. Here every edit's ‖ΔW‖ stays within twice the sequence's median (max/median
    # is about 1.1 on both tiny models) and, after the eighth, every earlier fact still holds.
    model, tok = model_tok
    hp = r_rome_hparams(model, mom2_adjustment=True)
    stats = {hp.module_path: second_moment(model, tok, hp, tiny_texts)}.__getitem__
    state: dict = {}
    norms, originals = [], {k: v.clone() for k, v in model.state_dict().items()}
    try:
        for fact in FACTS:
            ((name, update),) = RRome.compute_delta(model, tok, [fact], hp, stats=stats, state=state).items()
            norms.append(update.norm().item())
            model.get_parameter(name).data += update
        assert all(next_token(model, tok, f.prompt) == target_ids(tok, f.prompt, f.target_new)[0] for f in FACTS)
    finally:
        model.load_state_dict(originals)
    assert max(norms) <= 2 * torch.tensor(norms).median().item(), norms


def test_hparams_map_the_mean_key_only():
    base = {"layer": 4, "rewrite_module_tmp": "model.layers.{}.mlp.down_proj"}
    assert RRomeHparams.from_dict(base).exact_key == "mean"
    with pytest.raises(ValueError, match=r"exact_key='prompt'.*allowed: 'mean'"):
        RRomeHparams.from_dict({**base, "exact_key": "prompt"})


EASYEDIT_YAML = """
alg_name: "R-ROME"
model_name: "./hugging_cache/llama-2-7b"
stats_dir: "./data/stats"
device: 0
layers: [5]
fact_token: "subject_last"
v_num_grad_steps: 25
v_lr: 5e-1
v_loss_layer: 31
v_weight_decay: 1e-3
clamp_norm_factor: 4
kl_factor: 0.0625
mom2_adjustment: false
context_template_length_params: [[5, 10], [10, 10]]
rewrite_module_tmp: "model.layers.{}.mlp.down_proj"
layer_module_tmp: "model.layers.{}"
mlp_module_tmp: "model.layers.{}.mlp"
attn_module_tmp: "model.layers.{}.self_attn"
ln_f_module: "model.norm"
lm_head_module: "lm_head"
mom2_dataset: "wikipedia"
mom2_n_samples: 100000
mom2_dtype: "float32"
model_parallel: false
fp16: true
"""


def test_easyedit_hparams_are_read():
    easyedit = yaml.safe_load(EASYEDIT_YAML)
    hp = RRomeHparams.from_easyedit(easyedit)
    assert (hp.layer, hp.v_lr, hp.v_weight_decay, hp.exact_key) == (5, 0.5, 1e-3, "mean")
    switches = {"enable_random_prefix_keys": True, "enable_prompt_keys": False, "original_implementation": False}
    assert RRomeHparams.from_easyedit({**easyedit, **switches}) == hp
    with pytest.raises(ValueError, match=r"original_implementation=True.*'rome' with exact_key: prompt"):
        RRomeHparams.from_easyedit({**easyedit, "original_implementation": True})
    with pytest.raises(ValueError, match=r"enable_prompt_keys=True.*not implemented"):
        RRomeHparams.from_easyedit({**easyedit, "enable_prompt_keys": True, "enable_random_prefix_keys": False})
    with pytest.raises(ValueError, match=r"enable_random_prefix_keys=False"):
        RRomeHparams.from_easyedit({**easyedit, "enable_random_prefix_keys": False})
    with pytest.raises(ValueError, match="exactly one layer"):
        RRomeHparams.from_easyedit({**easyedit, "layers": [4, 5]})


@pytest.mark.parametrize("preset", ["gpt2-xl", "llama-7b", "llama-2-7b", "smollm2-135m", "tiny-llama"])
def test_presets_load(preset):
    text = resources.files("editharm.editing").joinpath(f"presets/r_rome/{preset}.yaml").read_text()
    assert RRomeHparams.from_dict(yaml.safe_load(text)).exact_key == "mean"


def test_tiny_llama_preset_edits_the_tiny_llama(tiny_llama, tiny_texts):
    model, tok = tiny_llama
    text = resources.files("editharm.editing").joinpath("presets/r_rome/tiny-llama.yaml").read_text()
    hp = RRomeHparams.from_dict(yaml.safe_load(text))
    stats = {hp.module_path: second_moment(model, tok, hp, tiny_texts)}.__getitem__
    delta = RRome.compute_delta(model, tok, [FRANCE], hp, stats=stats)
    with applied(model, delta):
        assert next_token(model, tok, FRANCE.prompt) == target_ids(tok, FRANCE.prompt, FRANCE.target_new)[0]

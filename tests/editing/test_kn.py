"""KN on tiny random GPT-2 (Conv1D) and Llama (Linear): integrated gradients match their definition,
the edit touches only the knowledge neurons' value vectors, and it raises the new target."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from helpers import REWRITE_MODULES

from editharm.core.records import EditRecord
from editharm.editing.methods import METHODS, kn
from editharm.editing.methods.kn import (
    Kn,
    KnHparams,
    alpha_grid,
    coarse_neurons,
    integrated_gradients,
    knowledge_neurons,
    last_token_activations,
    shared_neurons,
)
from editharm.model.deltas import applied
from editharm.model.modules import get_module
from editharm.model.tokens import target_ids

PRESETS = Path(kn.__file__).parents[1] / "presets"
PROMPTS = {"france": ("The capital city of France", "Rome"), "john": ("The first book of John", "apples"),
           "japan": ("The capital of Japan is", "Berlin")}


def hparams(model, **overrides) -> KnHparams:
    d = {"rewrite_module_tmp": REWRITE_MODULES[model.config.model_type], "steps": 8, "batch_size": 4}
    return KnHparams.from_dict({**d, **overrides})


@torch.no_grad()
def next_logp(model, tok, prompt: str) -> torch.Tensor:
    return model(input_ids=torch.tensor([tok(prompt)["input_ids"]])).logits[0, -1].log_softmax(-1)


def record(model, tok, key: str) -> EditRecord:
    """The fact the model holds now: its argmax after the prompt is the ground truth."""
    prompt, target = PROMPTS[key]
    truth = tok.decode([next_logp(model, tok, prompt).argmax().item()])
    return EditRecord(id=key, subject=prompt.split()[-1], prompt=prompt, target_new=target, ground_truth=truth,
                      rephrase_prompt=prompt, locality_prompt="", locality_answer="")


def prob_with_activation(model, ids: list[int], path: str, value: torch.Tensor, answer: int) -> torch.Tensor:
    """P(answer) when the down projection's input at the last token is `value` (full forward, no cache)."""
    def replace(_m, args):
        x = args[0].clone()
        x[0, -1] = value
        return (x,)

    handle = get_module(model, path).register_forward_pre_hook(replace)
    try:
        return model(input_ids=torch.tensor([ids])).logits[0, -1].softmax(-1)[answer]
    finally:
        handle.remove()


def attribution_inputs(model, tok, hp):
    fact = record(model, tok, "france")
    ids = tok(fact.prompt)["input_ids"]
    answer = target_ids(tok, fact.prompt, fact.ground_truth)[0]
    paths = hp.module_paths(model)
    return ids, answer, paths, last_token_activations(model, ids, paths)


def test_registered():
    assert METHODS.get("kn") is Kn


def test_alpha_grid_is_the_references_linspace():
    # knowledge-neurons' scaled_input: torch.linspace(start=0, end=1, steps=steps), both ends included
    assert alpha_grid(1).tolist() == [0.0]
    torch.testing.assert_close(alpha_grid(4), torch.tensor([0 / 3, 1 / 3, 2 / 3, 3 / 3]))


@pytest.mark.parametrize("steps, batch_size, grid", [
    (4, 2, [0 / 3, 1 / 3, 2 / 3, 3 / 3]),  # two cached batches of two scaled copies
    (1, 1, [0.0]),  # the gradient with the activation zeroed, times the activation
])
def test_attribution_is_the_references_sum_by_hand(model_tok, steps, batch_size, grid):
    model, tok = model_tok
    hp = hparams(model, steps=steps, batch_size=batch_size)
    ids, answer, paths, acts = attribution_inputs(model, tok, hp)
    scores = integrated_gradients(model, tok, ids, answer, paths, acts, hp)
    for layer, (path, a) in enumerate(zip(paths, acts)):
        grads = torch.zeros_like(a)
        for alpha in grid:
            x = (alpha * a).requires_grad_(True)
            grads += torch.autograd.grad(prob_with_activation(model, ids, path, x, answer), x)[0]
        torch.testing.assert_close(scores[layer], a * grads / steps, rtol=1e-4, atol=1e-7)
    assert scores.abs().max() > 1e-4


def test_attributions_are_complete(model_tok):
    model, tok = model_tok
    hp = hparams(model, steps=400, batch_size=200)
    ids, answer, paths, acts = attribution_inputs(model, tok, hp)
    scores = integrated_gradients(model, tok, ids, answer, paths, acts, hp)
    with torch.no_grad():
        for layer, (path, a) in enumerate(zip(paths, acts)):
            change = (prob_with_activation(model, ids, path, a, answer)
                      - prob_with_activation(model, ids, path, torch.zeros_like(a), answer))
            assert abs(change) > 1e-3
            assert scores[layer].sum().item() == pytest.approx(change.item(), rel=0.02)


def test_llama_attributes_the_down_projection_input(tiny_llama):
    # act(gate_proj(x)) · up_proj(x), not gate_proj's output (the same width, so values must decide).
    model, tok = tiny_llama
    hp = hparams(model)
    ids, answer, paths, acts = attribution_inputs(model, tok, hp)
    assert acts.shape == (3, get_module(model, paths[0]).in_features) == (3, 128)
    mlp_inputs = []
    handles = [get_module(model, f"model.layers.{i}.mlp").register_forward_pre_hook(
        lambda _m, args: mlp_inputs.append(args[0][0, -1])) for i in range(3)]
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]))
    for h in handles:
        h.remove()
    for i, x in enumerate(mlp_inputs):
        mlp = get_module(model, f"model.layers.{i}.mlp")
        with torch.no_grad():
            torch.testing.assert_close(acts[i], mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x))
            assert not torch.allclose(acts[i], mlp.gate_proj(x), atol=1e-2)
    scores = integrated_gradients(model, tok, ids, answer, paths, acts, hp)
    assert scores.shape == acts.shape


def test_coarse_neurons_keep_scores_above_the_adaptive_threshold():
    scores = torch.tensor([[0.1, 1.0, -2.0], [0.25, 0.2, 0.0]])
    assert coarse_neurons(scores, [3, 7], 0.2) == {(3, 1), (7, 0)}
    assert coarse_neurons(-scores.abs(), [3, 7], 0.2) == set()


def test_refine_keeps_neurons_shared_by_a_share_p_of_prompts(tiny_gpt2):
    model, tok = tiny_gpt2
    prefixes = ["The", "In the"]
    fact = record(model, tok, "france")
    answer = target_ids(tok, fact.prompt, fact.ground_truth)[0]
    per_prompt = []
    for prompt in [fact.prompt] + [f"{p}. {fact.prompt}" for p in prefixes]:
        hp = hparams(model)
        ids = tok(prompt)["input_ids"]
        acts = last_token_activations(model, ids, hp.module_paths(model))
        scores = integrated_gradients(model, tok, ids, answer, hp.module_paths(model), acts, hp)
        per_prompt.append(coarse_neurons(scores, [0, 1, 2], hp.adaptive_threshold))
    union, shared = set.union(*per_prompt), set.intersection(*per_prompt)
    two_of_three = {n for n in union if sum(n in s for s in per_prompt) >= 2}
    assert shared < two_of_three < union  # the three rules differ on this case
    # 3 × (1/3) = 1 and 3 × (2/3) = 2 exactly: a count at p × prompts is not enough
    for refine, p, expected in [(False, 0.4, union), (True, 0.0, union), (True, 1 / 3, two_of_three),
                                (True, 0.6, two_of_three), (True, 2 / 3, shared), (True, 0.9, shared)]:
        hp = hparams(model, prompt_prefixes=prefixes, refine=refine, p=p)
        assert set(knowledge_neurons(model, tok, fact, hp)[0]) == expected


def test_shared_neurons_need_more_than_a_share_p():
    per_prompt = [{(0, 1), (0, 2), (1, 5)}, {(0, 1), (0, 2)}, {(0, 1), (1, 5)}, {(2, 3)}]  # counts 3, 2, 2, 1
    assert shared_neurons(per_prompt, 0.5) == [(0, 1)]  # 2 = 0.5 × 4 prompts is not more than half
    assert shared_neurons(per_prompt, 0.49) == [(0, 1), (0, 2), (1, 5)]
    assert shared_neurons(per_prompt, None) == [(0, 1), (0, 2), (1, 5), (2, 3)]


def test_edit_changes_only_the_knowledge_neurons_value_vectors(model_tok):
    model, tok = model_tok
    hp = hparams(model, erase=1.0, enhance=3.0)
    fact = record(model, tok, "france")
    neurons, acts = knowledge_neurons(model, tok, fact, hp)
    delta = Kn.compute_delta(model, tok, [fact], hp)
    assert neurons and set(delta) <= set(Kn.param_names(model, hp))
    unembed = model.get_output_embeddings().weight.detach()
    shift = (3.0 * unembed[target_ids(tok, fact.prompt, fact.target_new)[0]]
             - 1.0 * unembed[target_ids(tok, fact.prompt, fact.ground_truth)[0]])
    gpt2 = model.config.model_type == "gpt2"
    for layer in range(3):
        name = f"{hp.rewrite_module_tmp.format(layer)}.weight"
        chosen = [i for l, i in neurons if l == layer]
        if not chosen:
            assert name not in delta
            continue
        d = delta[name].T if gpt2 else delta[name]  # (hidden, intermediate): value vectors are columns
        others = torch.ones(d.shape[1], dtype=torch.bool)
        others[chosen] = False
        assert torch.count_nonzero(d[:, others]) == 0
        for i in chosen:
            sign = 1.0 if acts[(layer, i)] >= 0 else -1.0
            torch.testing.assert_close(d[:, i], sign * shift)


@pytest.mark.parametrize("key", sorted(PROMPTS))
def test_edit_makes_target_the_argmax(model_tok, key):
    model, tok = model_tok
    fact = record(model, tok, key)
    target = target_ids(tok, fact.prompt, fact.target_new)[0]
    before = next_logp(model, tok, fact.prompt)
    delta = Kn.compute_delta(model, tok, [fact], hparams(model))
    with applied(model, delta):
        after = next_logp(model, tok, fact.prompt)
    assert after.argmax().item() == target
    assert after[target] > before[target] + 3.0


def test_subword_ground_truth_and_target_are_their_words_after_the_prompt(subword_model_tok):
    # A lone " Paris" and " Rome" both start with "▁" under the Llama-2-shaped tokenizer: read that
    # way, KN would erase and enhance the same token.
    model, tok = subword_model_tok
    fact = EditRecord(id="france", subject="France", prompt="The capital city of France", target_new="Rome",
                      ground_truth="Paris", rephrase_prompt="", locality_prompt="", locality_answer="")
    old, new = (target_ids(tok, fact.prompt, t)[0] for t in (fact.ground_truth, fact.target_new))
    assert [tok.decode([old]).strip(), tok.decode([new]).strip()] == ["Paris", "Rome"]
    hp = hparams(model, erase=1.0, enhance=3.0)
    neurons, acts = knowledge_neurons(model, tok, fact, hp)
    delta = Kn.compute_delta(model, tok, [fact], hp)
    unembed = model.get_output_embeddings().weight.detach()
    layer, i = neurons[0]
    d = delta[f"{hp.rewrite_module_tmp.format(layer)}.weight"]
    d = d.T if model.config.model_type == "gpt2" else d
    sign = 1.0 if acts[(layer, i)] >= 0 else -1.0
    torch.testing.assert_close(d[:, i], sign * (3.0 * unembed[new] - 1.0 * unembed[old]))
    with applied(model, delta):
        assert next_logp(model, tok, fact.prompt).argmax().item() == new


def test_records_are_edited_one_after_another(model_tok):
    model, tok = model_tok
    hp = hparams(model)
    first, second = record(model, tok, "france"), record(model, tok, "japan")
    both = Kn.compute_delta(model, tok, [first, second], hp)
    alone = Kn.compute_delta(model, tok, [first], hp)
    with applied(model, alone):
        after_first = Kn.compute_delta(model, tok, [second], hp)
    for name in set(both) | set(alone) | set(after_first):
        zero = torch.zeros_like(next(iter(both.values())))
        expected = alone.get(name, zero) + after_first.get(name, zero)
        torch.testing.assert_close(both[name], expected)
    with applied(model, both):  # the later edit may overwrite the earlier one (KN has no protection)
        new = target_ids(tok, second.prompt, second.target_new)[0]
        assert next_logp(model, tok, second.prompt).argmax().item() == new


def test_compute_delta_is_deterministic_and_leaves_model_unchanged(model_tok):
    model, tok = model_tok
    hp = hparams(model, layers=[1, 2])
    fact = record(model, tok, "john")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    first = Kn.compute_delta(model, tok, [fact], hp)
    second = Kn.compute_delta(model, tok, [fact], hp)
    assert set(first) <= set(Kn.param_names(model, hp)) and len(Kn.param_names(model, hp)) == 2
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_missing_ground_truth_is_refused(tiny_llama):
    model, tok = tiny_llama
    fact = EditRecord(id="x", subject="France", prompt="The capital city of France", target_new="Rome",
                      ground_truth="", rephrase_prompt="", locality_prompt="", locality_answer="")
    with pytest.raises(ValueError, match="'x'.*ground_truth"):
        Kn.compute_delta(model, tok, [fact], hparams(model))


EASYEDIT_GPT2_XL = """
alg_name: "KN"
model_name: "./hugging_cache/gpt2-xl"
device: 0
model_parallel: false

lr_scale: 1.0
n_toks: 10
refine: false
batch_size: 20
steps: 20
adaptive_threshold: 0.2
p: 0.4
"""


def test_easyedit_hparams_are_read():
    d = yaml.safe_load(EASYEDIT_GPT2_XL)
    hp = KnHparams.from_easyedit(d)
    assert hp == KnHparams(rewrite_module_tmp="transformer.h.{}.mlp.c_proj", steps=20, batch_size=20,
                           adaptive_threshold=0.2, refine=False, p=0.4)
    assert (hp.layers, hp.erase, hp.enhance) == (None, 2.0, 2.0)
    llama = KnHparams.from_easyedit({**d, "model_name": "./hugging_cache/llama-2-7b", "steps": 1, "batch_size": 1})
    assert llama.rewrite_module_tmp == "model.layers.{}.mlp.down_proj"
    explicit = KnHparams.from_easyedit({**d, "model_name": "my-model", "rewrite_module_tmp": "m.{}.down"})
    assert explicit.rewrite_module_tmp == "m.{}.down"


def test_easyedit_hparams_errors_name_the_key():
    d = yaml.safe_load(EASYEDIT_GPT2_XL)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['attribution_method'\]"):
        KnHparams.from_easyedit({**d, "attribution_method": "integrated_grads"})
    with pytest.raises(ValueError, match=r"model_name='./t5-3b'.*rewrite_module_tmp"):
        KnHparams.from_easyedit({**d, "model_name": "./t5-3b"})
    with pytest.raises(ValueError, match=r"batch_size=3 is not allowed; must divide steps=20"):
        KnHparams.from_easyedit({**d, "batch_size": 3})
    with pytest.raises(ValueError, match=r"p=1.0 is not allowed; must be in \[0, 1\)"):
        KnHparams.from_easyedit({**d, "p": 1.0})


@pytest.mark.parametrize("preset", ["gpt2-xl", "llama-7b", "llama-2-7b", "smollm2-135m", "tiny-llama"])
def test_presets_load(preset, tiny_llama):
    hp = KnHparams.from_dict(yaml.safe_load((PRESETS / "kn" / f"{preset}.yaml").read_text()))
    if preset == "tiny-llama":
        assert len(Kn.param_names(tiny_llama[0], hp)) == 3

"""ROME on tiny random GPT-2 (Conv1D) and Llama (Linear): the fact flips, the algebra holds."""
from __future__ import annotations

import pytest
import torch

from editharm.core.records import EditRecord
from editharm.editing.methods import METHODS
from editharm.editing.methods.rome import (
    Rome,
    RomeHparams,
    context_prefixes,
    rome_step,
    subject_keys,
)
from editharm.evaluation.edits import edit_metrics
from editharm.model.deltas import applied
from editharm.model.modules import get_module
from editharm.model.stats import collect_second_moment
from editharm.model.tokens import target_ids


def record(prompt: str, subject: str, target: str, id: str = "r") -> EditRecord:
    return EditRecord(
        id=id, subject=subject, prompt=prompt, target_new=target, ground_truth="",
        rephrase_prompt=prompt, locality_prompt="The capital of Japan is", locality_answer="Tokyo",
    )


# Random weights attend almost uniformly, so little of δ at a mid-prompt subject reaches the last
# position; these prompts end with the subject, where δ reaches the logits through the residual.
FRANCE = record("The capital city of France", "France", "Rome", id="france")
JOHN = record("The first book of John", "John", "apples", id="john")


@torch.no_grad()
def greedy(model, tok, prompt: str, n: int) -> list[int]:
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    for _ in range(n):
        ids = torch.cat([ids, model(input_ids=ids).logits[:, -1:].argmax(-1)], 1)
    return ids[0, -n:].tolist()


def test_registered():
    assert METHODS.get("rome") is Rome


def test_edit_makes_target_the_argmax(model_tok, tiny_rome_hparams):
    model, tok = model_tok
    hp = tiny_rome_hparams(model)
    target = target_ids(tok, FRANCE.prompt, FRANCE.target_new)
    assert greedy(model, tok, FRANCE.prompt, 1) != target
    delta = Rome.compute_delta(model, tok, [FRANCE], hp)
    with applied(model, delta):
        assert greedy(model, tok, FRANCE.prompt, 1) == target


def test_subword_edit_trains_the_ids_evaluation_scores(subword_model_tok, tiny_rome_hparams):
    # With the Llama-2-shaped tokenizer a lone " Rome" is "▁", "▁Rome": trained on that, the edit
    # would make "▁" the argmax and score 0 where evaluation reads "▁Rome" after the prompt.
    model, tok = subword_model_tok
    assert edit_metrics(model, tok, [FRANCE])[1]["reliability"] == 0.0
    delta = Rome.compute_delta(model, tok, [FRANCE], tiny_rome_hparams(model))
    with applied(model, delta):
        assert edit_metrics(model, tok, [FRANCE])[1]["reliability"] == 1.0
        assert tok.decode(greedy(model, tok, FRANCE.prompt, 1)).strip() == "Rome"


@torch.no_grad()
def target_logprob(model, tok, prompt: str, target: list[int]) -> float:
    ids = torch.tensor([tok(prompt)["input_ids"] + target])
    logp = model(input_ids=ids).logits[0, -len(target) - 1 : -1].log_softmax(-1)
    return logp.gather(1, torch.tensor(target)[:, None]).sum().item()


def test_multi_token_target_is_learned(model_tok, tiny_rome_hparams):
    model, tok = model_tok
    fact = record("The capital city of France", "France", "red apples")
    target = target_ids(tok, fact.prompt, fact.target_new)
    assert len(target) == 2
    before = target_logprob(model, tok, fact.prompt, target)
    delta = Rome.compute_delta(model, tok, [fact], tiny_rome_hparams(model))
    with applied(model, delta):
        assert greedy(model, tok, fact.prompt, 1) == target[:1]
        assert target_logprob(model, tok, fact.prompt, target) > before + 3.0


def test_batch_edits_both_records(model_tok, tiny_rome_hparams, tiny_texts):
    # Keys of different subjects overlap (cos ≈ 0.8 in the random GPT-2); C⁻¹ from second-moment
    # statistics keeps the second edit from overwriting the first, which is what ROME uses it for.
    model, tok = model_tok
    hp = tiny_rome_hparams(model, mom2_adjustment=True)
    c, _ = collect_second_moment(model, tok, hp.module_path, tiny_texts)
    delta = Rome.compute_delta(model, tok, [FRANCE, JOHN], hp, stats={hp.module_path: c}.__getitem__)
    with applied(model, delta):
        for fact in (FRANCE, JOHN):
            assert greedy(model, tok, fact.prompt, 1) == target_ids(tok, fact.prompt, fact.target_new)


@pytest.mark.parametrize("exact_key", ["mean", "prompt"])
@pytest.mark.parametrize("mom2", [False, True])
def test_rank_one_update_maps_key_to_value(model_tok, tiny_rome_hparams, mom2, exact_key):
    model, tok = model_tok
    hp = tiny_rome_hparams(model, mom2_adjustment=mom2, exact_key=exact_key)
    module = get_module(model, hp.module_path)
    n_in = module.weight.shape[0 if model.config.model_type == "gpt2" else 1]
    c = None
    if mom2:
        g = torch.Generator().manual_seed(1)
        a = torch.randn(4 * n_in, n_in, generator=g)
        c = a.T @ a / (4 * n_in)  # a well-conditioned stand-in for E[k kᵀ]
    step = rome_step(model, tok, FRANCE, hp, second_moment=c)
    keys = subject_keys(model, tok, FRANCE, hp, context_prefixes(model, tok, hp))
    assert len(keys) == 3  # bare prompt + 2 generated prefixes
    assert torch.equal(step.key, keys.mean(0) if exact_key == "mean" else keys[0])
    with torch.no_grad():
        before = module(step.key[None])[0]
        with applied(model, {step.name: step.update}):
            after = module(step.key[None])[0]
    torch.testing.assert_close(after, step.value, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(before, step.value, atol=1e-3)
    # Rank one, with the row space along C⁻¹k̄ (k̄ itself without statistics), k̄ the mean key.
    update = step.update.T if model.config.model_type == "gpt2" else step.update  # (out, in)
    mean_key = keys.mean(0).double()
    direction = torch.linalg.solve(c.double(), mean_key) if mom2 else mean_key
    assert torch.linalg.matrix_rank(update).item() == 1
    cos = torch.nn.functional.cosine_similarity(update[update.norm(dim=1).argmax()].double(), direction, dim=0)
    assert cos.abs().item() == pytest.approx(1.0, abs=1e-5)


def test_compute_delta_is_deterministic_and_leaves_model_unchanged(model_tok, tiny_rome_hparams):
    model, tok = model_tok
    hp = tiny_rome_hparams(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    first = Rome.compute_delta(model, tok, [FRANCE, JOHN], hp)
    second = Rome.compute_delta(model, tok, [FRANCE, JOHN], hp)
    assert list(first) == Rome.param_names(model, hp)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_mom2_without_stats_is_refused(tiny_gpt2, tiny_rome_hparams):
    model, tok = tiny_gpt2
    hp = tiny_rome_hparams(model, mom2_adjustment=True)
    assert Rome.stats_modules(hp) == ["transformer.h.1.mlp.c_proj"]
    with pytest.raises(ValueError, match="second-moment"):
        Rome.compute_delta(model, tok, [FRANCE], hp)


def test_hparams_reject_unknown_keys_and_bad_types():
    base = {"layer": 4, "rewrite_module_tmp": "model.layers.{}.mlp.down_proj"}
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['v_lrr'\].*allowed: .*v_lr"):
        RomeHparams.from_dict({**base, "v_lrr": 0.5})
    with pytest.raises(ValueError, match=r"v_num_grad_steps='20' .*expected int"):
        RomeHparams.from_dict({**base, "v_num_grad_steps": "20"})
    with pytest.raises(ValueError, match=r"mom2_adjustment=1 .*expected bool"):
        RomeHparams.from_dict({**base, "mom2_adjustment": 1})
    with pytest.raises(ValueError, match=r"fact_token='subject_first'.*allowed: 'subject_last'"):
        RomeHparams.from_dict({**base, "fact_token": "subject_first"})
    with pytest.raises(ValueError, match=r"missing required key\(s\) \['rewrite_module_tmp'\]"):
        RomeHparams.from_dict({"layer": 4})
    with pytest.raises(ValueError, match=r"context_template_length_params"):
        RomeHparams.from_dict({**base, "context_template_length_params": [[5, 11]]})
    hp = RomeHparams.from_dict({**base, "v_lr": 1})
    assert hp.v_lr == 1.0 and isinstance(hp.v_lr, float)
    assert RomeHparams.from_dict(hp.to_dict()) == hp


def test_easyedit_hparams_are_read():
    easyedit = {
        "alg_name": "ROME", "model_name": "gpt2-xl", "stats_dir": "./data/stats", "device": 0,
        "layers": [17], "fact_token": "subject_last", "v_num_grad_steps": 20, "v_lr": "5e-1",
        "v_loss_layer": 47, "v_weight_decay": 0.5, "clamp_norm_factor": 4, "kl_factor": 0.0625,
        "mom2_adjustment": False, "context_template_length_params": [[5, 10], [10, 10]],
        "rewrite_module_tmp": "transformer.h.{}.mlp.c_proj", "layer_module_tmp": "transformer.h.{}",
        "mlp_module_tmp": "transformer.h.{}.mlp", "attn_module_tmp": "transformer.h.{}.attn",
        "ln_f_module": "transformer.ln_f", "lm_head_module": "transformer.wte", "mom2_dataset": "wikipedia",
        "mom2_n_samples": 100000, "mom2_dtype": "float32", "mom2_update_weight": 15000,
        "model_parallel": False, "fp16": False,
    }
    hp = RomeHparams.from_easyedit(easyedit)
    assert (hp.layer, hp.v_lr, hp.clamp_norm_factor, hp.exact_key) == (17, 0.5, 4.0, "prompt")
    assert hp.module_path == "transformer.h.17.mlp.c_proj"
    with pytest.raises(ValueError, match="exactly one layer"):
        RomeHparams.from_easyedit({**easyedit, "layers": [4, 5]})

"""FT-L and FT-M on tiny random GPT-2 (Conv1D) and Llama (Linear): facts flip, the L∞ ball and the
objectives hold exactly."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from helpers import REWRITE_MODULES

from editharm.core.records import EditRecord
from editharm.editing.methods import METHODS, ft
from editharm.editing.methods.ft import (
    FtL,
    FtLHparams,
    FtM,
    FtMHparams,
    make_batch,
    record_losses,
)
from editharm.evaluation.edits import edit_metrics
from editharm.model.deltas import applied
from editharm.model.modules import get_module
from editharm.model.tokens import target_ids

METHOD_CLASSES = [FtL, FtM]
PRESETS = Path(ft.__file__).parents[1] / "presets"


def record(prompt: str, target: str, id: str = "r") -> EditRecord:
    return EditRecord(
        id=id, subject=prompt.split()[-1], prompt=prompt, target_new=target, ground_truth="",
        rephrase_prompt=prompt, locality_prompt="The capital of Japan is", locality_answer="Tokyo",
    )


FRANCE = record("The capital city of France", "Rome", id="france")
JOHN = record("The first book of John", "apples", id="john")
JAPAN = record("The capital of Japan is", "Berlin", id="japan")


def hparams(cls, model, **overrides):
    d = {"layers": [1], "rewrite_module_tmp": REWRITE_MODULES[model.config.model_type], "num_steps": 20,
         "lr": 0.02, "norm_constraint": 0.05}
    return cls.Hparams.from_dict({**d, **overrides})


@torch.no_grad()
def next_logp(model, tok, prompt: str) -> torch.Tensor:
    ids = torch.tensor([tok(prompt)["input_ids"]])
    return model(input_ids=ids).logits[0, -1].log_softmax(-1)


@torch.no_grad()
def forced_logp(model, tok, prompt: str, target: list[int]) -> torch.Tensor:
    """Log-prob of each target token, teacher-forced after the prompt (unpadded, full logits)."""
    ids = torch.tensor([tok(prompt)["input_ids"] + target])
    logp = model(input_ids=ids).logits[0, -len(target) - 1 : -1].log_softmax(-1)
    return logp.gather(1, torch.tensor(target)[:, None])[:, 0]


def test_registered():
    assert METHODS.get("ft_l") is FtL and METHODS.get("ft_m") is FtM
    assert (FtL.Hparams.objective, FtM.Hparams.objective) == ("prompt_last", "target_new")


@pytest.mark.parametrize("cls", METHOD_CLASSES, ids=lambda c: c.name)
def test_edit_makes_target_the_argmax(model_tok, cls):
    model, tok = model_tok
    target = target_ids(tok, FRANCE.prompt, FRANCE.target_new)[0]
    before = next_logp(model, tok, FRANCE.prompt)
    assert before.argmax().item() != target
    delta = cls.compute_delta(model, tok, [FRANCE], hparams(cls, model))
    with applied(model, delta):
        after = next_logp(model, tok, FRANCE.prompt)
    assert after.argmax().item() == target
    assert after[target] > before[target] + 3.0


@pytest.mark.parametrize("cls", METHOD_CLASSES, ids=lambda c: c.name)
def test_subword_edit_trains_the_ids_evaluation_scores(subword_model_tok, cls):
    # With the Llama-2-shaped tokenizer a lone " Rome" is "▁", "▁Rome"; evaluation reads "▁Rome".
    model, tok = subword_model_tok
    assert edit_metrics(model, tok, [FRANCE])[1]["reliability"] == 0.0
    delta = cls.compute_delta(model, tok, [FRANCE], hparams(cls, model))
    with applied(model, delta):
        assert edit_metrics(model, tok, [FRANCE])[1]["reliability"] == 1.0


@pytest.mark.parametrize("cls", METHOD_CLASSES, ids=lambda c: c.name)
def test_delta_stays_in_the_linf_ball_exactly(model_tok, cls):
    model, tok = model_tok
    eps = 0.01
    delta = cls.compute_delta(model, tok, [FRANCE], hparams(cls, model, norm_constraint=eps))
    (name, d), = delta.items()
    assert name == cls.param_names(model, hparams(cls, model))[0]
    bound = torch.tensor(eps, dtype=d.dtype)
    assert d.abs().max() <= bound  # exactly: no rounding slack
    assert (d.abs() == bound).any()  # the constraint binds, so the test means something
    free = cls.compute_delta(model, tok, [FRANCE], hparams(cls, model, norm_constraint=None))
    assert free[name].abs().max() > 5 * eps


def test_ft_m_loss_is_masked_cross_entropy_on_target_tokens(model_tok):
    model, tok = model_tok
    records = [record("The capital city of France", "red apples"), JAPAN]  # 2-token and 1-token targets
    batch = make_batch(model, tok, records, "target_new")
    assert batch.mask.sum(1).tolist() == [2.0, 1.0]  # prompt and padding positions carry no loss
    with torch.no_grad():
        logits = model(**batch.inputs, logits_to_keep=batch.n_logits).logits
    by_hand = torch.stack([
        -forced_logp(model, tok, r.prompt, target_ids(tok, r.prompt, r.target_new)).mean() for r in records
    ])
    torch.testing.assert_close(record_losses(logits, batch), by_hand, rtol=1e-4, atol=1e-5)


def test_ft_l_loss_scores_every_target_token_at_the_last_prompt_token(model_tok):
    model, tok = model_tok
    records = [record("The capital city of France", "red apples"), JAPAN]
    batch = make_batch(model, tok, records, "prompt_last")
    assert batch.inputs["input_ids"].shape[1] == max(len(tok(r.prompt)["input_ids"]) for r in records)
    with torch.no_grad():
        logits = model(**batch.inputs, logits_to_keep=batch.n_logits).logits
    by_hand = torch.stack([
        -next_logp(model, tok, r.prompt)[target_ids(tok, r.prompt, r.target_new)].mean() for r in records
    ])
    torch.testing.assert_close(record_losses(logits, batch), by_hand, rtol=1e-4, atol=1e-5)


def test_ft_m_learns_a_multi_token_target(model_tok):
    model, tok = model_tok
    fact = record("The capital city of France", "red apples")
    target = target_ids(tok, fact.prompt, fact.target_new)
    before = forced_logp(model, tok, fact.prompt, target)
    delta = FtM.compute_delta(model, tok, [fact], hparams(FtM, model, norm_constraint=None))
    with applied(model, delta):
        after = forced_logp(model, tok, fact.prompt, target)
    assert (after > before + 2.0).all()
    assert after.min().exp() > 0.5  # each token is then the teacher-forced argmax


@pytest.mark.parametrize("cls", METHOD_CLASSES, ids=lambda c: c.name)
@pytest.mark.parametrize("batch_size", [None, 1])
def test_batch_of_three_records_all_move(model_tok, cls, batch_size):
    model, tok = model_tok
    facts = [FRANCE, JOHN, JAPAN]
    hp = hparams(cls, model, batch_size=batch_size)
    targets = [target_ids(tok, f.prompt, f.target_new)[0] for f in facts]
    before = [next_logp(model, tok, f.prompt)[t].item() for f, t in zip(facts, targets)]
    delta = cls.compute_delta(model, tok, facts, hp)
    with applied(model, delta):
        after = [next_logp(model, tok, f.prompt) for f in facts]
    for logp, t, b in zip(after, targets, before):
        assert logp.argmax().item() == t
        assert logp[t].item() > b + 2.0


def test_early_stop_below_stop_loss(tiny_llama):
    model, tok = tiny_llama
    hp = hparams(FtM, model, norm_constraint=None, num_steps=200)
    delta, loss, passes = ft.finetune(model, tok, [FRANCE], hp)
    assert loss < hp.stop_loss and passes < hp.num_steps
    # A stop loss the model already meets makes no step at all.
    delta, _, passes = ft.finetune(model, tok, [FRANCE], hparams(FtM, model, stop_loss=100.0))
    assert passes == 1 and all(torch.equal(d, torch.zeros_like(d)) for d in delta.values())


@pytest.mark.parametrize("cls", METHOD_CLASSES, ids=lambda c: c.name)
def test_compute_delta_is_deterministic_and_leaves_model_unchanged(model_tok, cls):
    model, tok = model_tok
    hp = hparams(cls, model, layers=[0, 2])
    model.train()  # eval mode is used inside and the caller's mode restored
    state = {k: v.clone() for k, v in model.state_dict().items()}
    first = cls.compute_delta(model, tok, [FRANCE, JOHN], hp)
    second = cls.compute_delta(model, tok, [FRANCE, JOHN], hp)
    assert model.training
    assert list(first) == cls.param_names(model, hp) and len(first) == 2
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    for name, d in first.items():
        assert d.shape == get_module(model, name.removesuffix(".weight")).weight.shape


def test_wrong_hparams_class_is_refused(tiny_gpt2):
    model, tok = tiny_gpt2
    with pytest.raises(TypeError, match="FtMHparams"):
        FtM.compute_delta(model, tok, [FRANCE], hparams(FtL, model))


EASYEDIT_GPT2_XL = """
alg_name: "FT"
model_name: "./hugging_cache/gpt2-xl"
device: 0

layers: [0]
num_steps: 25
batch_size: 3
max_length: 40
lr: 5e-4
weight_decay: 0
kl_factor: 0
norm_constraint: 5e-4
objective_optimization: "prompt_last"
rewrite_module_tmp: "transformer.h.{}.mlp.c_proj"
layer_module_tmp: "transformer.h.{}"
mlp_module_tmp: "transformer.h.{}.mlp"
attn_module_tmp: "transformer.h.{}.attn"
ln_f_module: "transformer.ln_f"
lm_head_module: "transformer.wte"
model_parallel: false
"""

EASYEDIT_LLAMA = """
alg_name: "FT"
model_name: "./hugging_cache/llama-2-7b"
device: 0
layers: [21]
num_steps: 25
batch_size: 1
max_length: 40
lr: 5e-4
weight_decay: 0
kl_factor: 0
norm_constraint: false
objective_optimization: "target_new"
rewrite_module_tmp: "model.layers.{}.mlp.down_proj.weight"
layer_module_tmp: "model.layers.{}"
mlp_module_tmp: "model.layers.{}.mlp"
attn_module_tmp: "model.layers.{}.self_attn"
ln_f_module: "model.norm"
lm_head_module: "lm_head"
model_parallel: false
"""


def test_easyedit_hparams_are_read():
    gpt2 = yaml.safe_load(EASYEDIT_GPT2_XL)
    assert gpt2["lr"] == "5e-4"  # PyYAML's reading, which from_easyedit must undo
    hp = FtLHparams.from_easyedit(gpt2)
    assert hp == FtLHparams(layers=[0], rewrite_module_tmp="transformer.h.{}.mlp.c_proj", num_steps=25,
                            lr=5e-4, weight_decay=0.0, norm_constraint=5e-4, batch_size=3)
    llama = FtMHparams.from_easyedit(yaml.safe_load(EASYEDIT_LLAMA))
    assert llama.module_paths() == ["model.layers.21.mlp.down_proj"]
    assert (llama.norm_constraint, llama.batch_size, llama.lr) == (None, 1, 5e-4)
    assert FtLHparams.from_easyedit({k: v for k, v in gpt2.items() if k != "objective_optimization"}) == hp


def test_easyedit_hparams_errors_name_the_key():
    gpt2 = yaml.safe_load(EASYEDIT_GPT2_XL)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['momentum'\]"):
        FtLHparams.from_easyedit({**gpt2, "momentum": 0.9})
    with pytest.raises(ValueError, match=r"objective_optimization='prompt_last'.*method 'ft_l'"):
        FtMHparams.from_easyedit(gpt2)
    with pytest.raises(ValueError, match=r"objective_optimization='last_token'"):
        FtLHparams.from_easyedit({**gpt2, "objective_optimization": "last_token"})
    with pytest.raises(ValueError, match=r"kl_factor=0.5"):
        FtLHparams.from_easyedit({**gpt2, "kl_factor": 0.5})
    with pytest.raises(ValueError, match=r"norm_constraint=-0.1 is not allowed"):
        FtLHparams.from_easyedit({**gpt2, "norm_constraint": -0.1})
    with pytest.raises(ValueError, match=r"layers=\[\] is not allowed"):
        FtLHparams.from_easyedit({**gpt2, "layers": []})


@pytest.mark.parametrize("cls", METHOD_CLASSES, ids=lambda c: c.name)
@pytest.mark.parametrize("preset", ["gpt2-xl", "llama-7b", "llama-2-7b", "smollm2-135m", "tiny-llama"])
def test_presets_load(cls, preset, tiny_llama):
    hp = cls.Hparams.from_dict(yaml.safe_load((PRESETS / cls.name / f"{preset}.yaml").read_text()))
    if preset == "tiny-llama":
        assert cls.param_names(tiny_llama[0], hp)

"""The architecture registry on tiny random GPT-J, GPT-NeoX, OPT, Qwen2, Mistral and Gemma (built offline
from their config classes): its templates name the right modules, and with only the registry's templates
ROME, MEMIT, KN and FT-M flip a fact; ROME's ΔW is rank one and the weights come back exactly."""
from __future__ import annotations

import json
from dataclasses import fields

import pytest
import torch
import transformers as tf
from helpers import INIT, finish_model, make_tokenizer

from editharm.core.records import EditRecord
from editharm.core.registry import UnknownNameError
from editharm.editing.methods import METHODS
from editharm.editing.methods.kn import KnHparams
from editharm.model.architectures import (
    ARCHITECTURES,
    architecture,
    architecture_by_name,
    architecture_of_folder,
    check_model,
)
from editharm.model.deltas import applied
from editharm.model.modules import edited_matrix, module_input
from editharm.model.tokens import padded_batch, target_ids
from editharm.sources.grammar import SourceError
from editharm.sources.models import fetch_model

# config class, model class, config keys; every model: 3 layers, hidden 64, MLP 128, 4 heads.
SIZES = {
    "gptj": (tf.GPTJConfig, tf.GPTJForCausalLM, dict(n_layer=3, n_embd=64, n_inner=128, n_head=4, rotary_dim=8,
                                                     n_positions=256)),
    "gpt_neox": (tf.GPTNeoXConfig, tf.GPTNeoXForCausalLM, dict(num_hidden_layers=3, hidden_size=64,
                                                               intermediate_size=128, num_attention_heads=4,
                                                               max_position_embeddings=256)),
    "opt": (tf.OPTConfig, tf.OPTForCausalLM, dict(num_hidden_layers=3, hidden_size=64, ffn_dim=128,
                                                  word_embed_proj_dim=64, num_attention_heads=4,
                                                  max_position_embeddings=256)),
    "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, dict(num_hidden_layers=3, hidden_size=64, intermediate_size=128,
                                                        num_attention_heads=4, num_key_value_heads=2,
                                                        max_position_embeddings=256)),
    "mistral": (tf.MistralConfig, tf.MistralForCausalLM, dict(num_hidden_layers=3, hidden_size=64,
                                                              intermediate_size=128, num_attention_heads=4,
                                                              num_key_value_heads=2, max_position_embeddings=256)),
    "gemma": (tf.GemmaConfig, tf.GemmaForCausalLM, dict(num_hidden_layers=3, hidden_size=64, intermediate_size=128,
                                                        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                                        max_position_embeddings=256)),
}
FAMILIES = sorted(SIZES)
# Families whose tokenizers add a BOS token.
WITH_BOS = {"qwen2", "mistral", "gemma"}

FRANCE = EditRecord(id="france", subject="France", prompt="The capital city of France", target_new="Rome",
                    ground_truth="", rephrase_prompt="The capital city of France", locality_prompt="",
                    locality_answer="")


def build(model_type: str):
    tok = make_tokenizer(add_bos=model_type in WITH_BOS)
    config_cls, model_cls, sizes = SIZES[model_type]
    torch.manual_seed(0)
    config = config_cls(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id, initializer_range=INIT, **sizes)
    return finish_model(model_cls(config), tok)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return build(request.param)


def hparams(method: str, model, **d):
    """The method's hparams with the module templates from the registry, as a preset without them gets."""
    Hparams = METHODS.get(method).Hparams
    keys = {f.name for f in fields(Hparams)}
    templates = architecture(model.config.model_type).default_templates()
    return Hparams.from_dict({**{k: v for k, v in templates.items() if k in keys}, **d})


@torch.no_grad()
def next_logp(model, tok, prompt: str) -> torch.Tensor:
    return model(input_ids=torch.tensor([tok(prompt)["input_ids"]])).logits[0, -1].log_softmax(-1)


def assert_flips(model, tok, delta, fact: EditRecord = FRANCE):
    target = target_ids(tok, fact.prompt, fact.target_new)[0]
    before = next_logp(model, tok, fact.prompt)
    assert before.argmax().item() != target
    with applied(model, delta):
        after = next_logp(model, tok, fact.prompt)
    assert after.argmax().item() == target and after[target] > before[target] + 3.0


def test_the_registry_names_each_familys_modules(family):
    model, _ = family
    arch = check_model(model)
    assert arch.model_type == model.config.model_type
    for template in (*arch.mlp_in, arch.mlp_out):
        name, weight, transposed = edited_matrix(model, template.format(2))
        assert not transposed  # nn.Linear everywhere but GPT-2
        assert name == f"{template.format(2)}.weight"
    # The output projection maps the MLP width back to the hidden size.
    assert edited_matrix(model, arch.mlp_out.format(0))[1].shape == (64, 128)


def test_mlp_activations_are_seen_per_token(family):
    # OPT runs its MLP on (batch·seq) rows; hooks see (batch, seq, features) in every family.
    model, tok = family
    inputs, _ = padded_batch([tok("The capital city of France")["input_ids"], tok("The king")["input_ids"]],
                             tok.pad_token_id, torch.device("cpu"))
    keys = module_input(model, architecture(model.config.model_type).mlp_out.format(1), inputs)
    assert keys.shape == (*inputs["input_ids"].shape, 128)


def test_rome_flips_the_fact_with_a_rank_one_update_that_is_undone_exactly(family):
    model, tok = family
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hp = hparams("rome", model, layer=1, v_num_grad_steps=40, v_lr=1.0, clamp_norm_factor=10.0,
                 context_template_length_params=[[3, 2]])
    delta = METHODS.get("rome").compute_delta(model, tok, [FRANCE], hp)
    assert list(delta) == [f"{hp.module_path}.weight"]
    assert torch.linalg.matrix_rank(delta[f"{hp.module_path}.weight"]).item() == 1
    assert_flips(model, tok, delta)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_memit_flips_the_fact(family):
    model, tok = family
    hp = hparams("memit", model, layers=[0, 1], v_num_grad_steps=40, v_lr=1.0, clamp_norm_factor=10.0,
                 context_template_length_params=[[3, 2]], mom2_adjustment=False, mom2_update_weight=1.0)
    delta = METHODS.get("memit").compute_delta(model, tok, [FRANCE], hp)
    assert sorted(delta) == sorted(f"{hp.module_path(layer)}.weight" for layer in (0, 1))
    assert_flips(model, tok, delta)


def test_kn_and_ft_m_flip_the_fact(family):
    model, tok = family
    truth = tok.decode([next_logp(model, tok, FRANCE.prompt).argmax().item()])
    fact = EditRecord(**{**FRANCE.__dict__, "ground_truth": truth})
    kn = METHODS.get("kn").compute_delta(model, tok, [fact], hparams("kn", model, steps=8, batch_size=4))
    assert_flips(model, tok, kn, fact)
    ft = METHODS.get("ft_m").compute_delta(
        model, tok, [FRANCE], hparams("ft_m", model, layers=[1], num_steps=20, lr=0.02, norm_constraint=0.05))
    assert_flips(model, tok, ft)


@pytest.mark.parametrize("name, model_type", [
    ("EleutherAI/gpt-j-6b", "gptj"), ("./hugging_cache/gpt-j-6B", "gptj"), ("EleutherAI/pythia-1b", "gpt_neox"),
    ("facebook/opt-1.3b", "opt"), ("Qwen/Qwen2.5-7B-Instruct", "qwen2"), ("mistralai/Mistral-7B-v0.1", "mistral"),
    ("google/gemma-2b", "gemma"), ("./hugging_cache/llama-2-7b", "llama"), ("gpt2-xl", "gpt2"),
])
def test_easyedit_model_names_give_the_familys_templates(name, model_type):
    assert architecture_by_name(name).model_type == model_type
    hp = KnHparams.from_easyedit({"model_name": name, "steps": 4, "batch_size": 4})
    assert hp.rewrite_module_tmp == ARCHITECTURES.get(model_type).mlp_out


def test_an_unsupported_architecture_fails_naming_the_supported_ones(tmp_path, tiny_llama):
    with pytest.raises(UnknownNameError, match=r"'bert'; allowed: gemma, gpt2, gpt_neox, gptj, llama, mistral, opt"):
        architecture("bert")
    model, tok = tiny_llama
    folder = tmp_path / "src"
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    assert architecture_of_folder(folder).model_type == "llama"
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    out = tmp_path / "models" / "m"
    with pytest.raises(SourceError, match=r"unknown model architecture \(config.model_type\) 'bert'; allowed: gemma"):
        fetch_model(f"local:{folder}", out)
    assert not out.exists()

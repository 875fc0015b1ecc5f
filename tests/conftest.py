"""Shared fixtures: tiny random GPT-2 and Llama models with a small word-level tokenizer (and with subword
tokenizers over the same words), built offline (the builders live in helpers.py, which tests import directly)."""
from __future__ import annotations

import pytest
import torch
from helpers import (
    INIT,
    REWRITE_MODULES,
    WORDS,
    finish_model,
    make_bytelevel_tokenizer,
    make_sentencepiece_tokenizer,
    make_tokenizer,
)
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM


@pytest.fixture
def tiny_gpt2():
    """(model, tokenizer): 3-layer GPT-2 (Conv1D MLPs), hidden 64, seeded; no BOS token added."""
    return gpt2_for(make_tokenizer(add_bos=False))


@pytest.fixture
def tiny_gpt2_bytelevel():
    """tiny_gpt2 with a GPT-2-style byte-level BPE tokenizer (as SmolLM2's)."""
    return gpt2_for(make_bytelevel_tokenizer())


def gpt2_for(tok):
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tok), n_positions=256, n_embd=64, n_layer=3, n_head=4,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        initializer_range=INIT,
    )
    return finish_model(GPT2LMHeadModel(config), tok)


@pytest.fixture
def tiny_llama():
    """(model, tokenizer): 3-layer Llama (Linear gated MLPs, GQA, tied embeddings), hidden 64, seeded; BOS added."""
    return llama_for(make_tokenizer(add_bos=True))


@pytest.fixture
def tiny_llama_sentencepiece():
    """tiny_llama with a tokenizer shaped like Llama-2's (a "▁" prepended to every text; see helpers)."""
    return llama_for(make_sentencepiece_tokenizer())


def llama_for(tok):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        initializer_range=INIT,
    )
    return finish_model(LlamaForCausalLM(config), tok)




@pytest.fixture
def tiny_rome_hparams():
    """Factory: ROME hparams for a tiny fixture model (edit layer 1), with keyword overrides."""
    from editharm.editing.methods.rome import RomeHparams

    def make(model, **overrides) -> RomeHparams:
        d = {
            "layer": 1,
            "rewrite_module_tmp": REWRITE_MODULES[model.config.model_type],
            "v_num_grad_steps": 40,
            "v_lr": 1.0,
            "clamp_norm_factor": 10.0,
            "context_template_length_params": [[3, 2]],
        }
        return RomeHparams.from_dict({**d, **overrides})

    return make


@pytest.fixture
def tiny_texts() -> list[str]:
    """100 seeded texts of 12 vocabulary words (e.g. a corpus for second-moment statistics)."""
    g = torch.Generator().manual_seed(0)
    return [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (12,), generator=g)) for _ in range(100)]


@pytest.fixture(params=["tiny_gpt2", "tiny_llama"])
def model_tok(request):
    """Each tiny model in turn: Conv1D (GPT-2) and Linear gated-MLP (Llama) layouts."""
    return request.getfixturevalue(request.param)


@pytest.fixture(params=["tiny_gpt2_bytelevel", "tiny_llama_sentencepiece"])
def subword_model_tok(request):
    """Each tiny model with a subword tokenizer: byte-level BPE (GPT-2) and Llama-2-shaped BPE (Llama)."""
    return request.getfixturevalue(request.param)

"""Shared fixtures: tiny random GPT-2 and Llama models with a small word-level tokenizer, built offline."""
from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

# Wider than the default 0.02, so a random model's logits are far from uniform and an edit has a
# clear argmax to flip.
INIT = 0.2
# Tiny models gain nothing from intra-op threads, and on a busy machine they contend for cores.
torch.set_num_threads(1)
SPECIAL = ["<pad>", "<unk>", "<s>", "</s>"]
WORDS = """
. , ? ! : ; ' " ( ) - # 0 1 2 3 4 5 6 7 8 9 10 100
the The a A an An of in on at to for from by with and or not is are was were be been has have had
it It this This that what What which Which who Who where Where when When how How why
capital city country language river mountain president king queen author born died
France Paris Italy Rome Germany Berlin Spain Madrid Japan Tokyo China Beijing England London
Canada Ottawa Egypt Cairo Russia Moscow India Delhi Brazil Brasilia Greece Athens
English French Italian German Spanish Japanese Chinese Russian
red blue green yellow black white big small good bad new old first last
Q A B C D E s TL DR answer Answer question Question passage Passage text Text true True false False
yes no Yes No positive negative entails sentiment label choice correct Entity Person
Location Organization Miscellaneous summary dialogue Therefore Because I You We In
think step by step arabic numerals Let so then there their they he she his her
John Mary Tom Anna Paul Lisa said says went go goes see saw like likes love loves
one two three four five six seven eight nine ten apple apples book books dog cat
""".split()


def _vocab() -> dict[str, int]:
    vocab: dict[str, int] = {}
    for token in SPECIAL + WORDS:
        vocab.setdefault(token, len(vocab))
    return vocab


def make_tokenizer(*, add_bos: bool) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over a fixed ~220-word vocabulary; `add_bos` mimics Llama tokenizers."""
    backend = Tokenizer(models.WordLevel(_vocab(), unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()  # words, and runs of punctuation
    if add_bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", _vocab()["<s>"])]
        )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    tok.padding_side = "left"
    return tok


def _finish(model: torch.nn.Module, tok: PreTrainedTokenizerFast):
    model.config.pad_token_id = tok.pad_token_id
    return model.float().eval(), tok


@pytest.fixture
def tiny_gpt2():
    """(model, tokenizer): 3-layer GPT-2 (Conv1D MLPs), hidden 64, seeded; no BOS token added."""
    tok = make_tokenizer(add_bos=False)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tok), n_positions=256, n_embd=64, n_layer=3, n_head=4,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        initializer_range=INIT,
    )
    return _finish(GPT2LMHeadModel(config), tok)


@pytest.fixture
def tiny_llama():
    """(model, tokenizer): 3-layer Llama (Linear gated MLPs, GQA, tied embeddings), hidden 64, seeded; BOS added."""
    tok = make_tokenizer(add_bos=True)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        initializer_range=INIT,
    )
    return _finish(LlamaForCausalLM(config), tok)


REWRITE_MODULES = {"gpt2": "transformer.h.{}.mlp.c_proj", "llama": "model.layers.{}.mlp.down_proj"}


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

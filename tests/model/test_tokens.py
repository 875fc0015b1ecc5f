"""Target ids: editing methods train on the ids evaluation scores, with word-level and subword tokenizers,
including one shaped like Llama-2's, which encodes a lone " Paris" with a spurious leading "▁"."""
from __future__ import annotations

import pytest
from helpers import make_sentencepiece_tokenizer

from editharm.model.generation import teacher_forced
from editharm.model.tokens import spaced, target_ids

ALL_TOKENIZERS = ["tiny_gpt2", "tiny_llama", "tiny_gpt2_bytelevel", "tiny_llama_sentencepiece"]


def test_llama2_shaped_tokenizer_adds_a_lone_piece_to_a_lone_target_but_not_after_a_prompt():
    tok = make_sentencepiece_tokenizer()
    assert tok.convert_ids_to_tokens(tok(" Paris", add_special_tokens=False)["input_ids"]) == ["▁", "▁Paris"]
    assert tok.convert_ids_to_tokens(target_ids(tok, "The capital of France is", "Paris")) == ["▁Paris"]
    assert tok.convert_ids_to_tokens(target_ids(tok, "The capital of France is", "red apples")) == ["▁red", "▁apples"]


@pytest.mark.parametrize("fixture", ALL_TOKENIZERS)
def test_target_ids_are_the_ids_evaluation_scores(request, fixture):
    model, tok = request.getfixturevalue(fixture)
    prompts = ["The capital city of France", "The capital of Japan is", "John likes"]
    targets = ["Rome", " Tokyo", "red apples"]
    forced = teacher_forced(model, tok, prompts, [spaced(t) for t in targets])
    assert [target_ids(tok, p, t) for p, t in zip(prompts, targets)] == [f.target_ids for f in forced]
    assert [tok.decode(f.target_ids).strip() for f in forced] == ["Rome", "Tokyo", "red apples"]
    assert [len(f.target_ids) for f in forced] == [1, 1, 2]  # one id per word: no lone "▁" or "Ġ"


def test_spaced_adds_a_space_only_when_the_answer_has_no_leading_whitespace():
    assert [spaced(t) for t in ["Rome", " Rome", "\nRome"]] == [" Rome", " Rome", "\nRome"]

"""Whole-text negative log-likelihood (the perplexity probe's scoring): equal to a hand computation,
and batched equal to one text at a time."""
import math

import pytest
import torch
from helpers import WORDS, nll_by_hand

from editharm.model.generation import text_nll


def _texts(n: int, seed: int = 0) -> list[str]:
    """Texts of 1 to 40 words, so batches mix lengths (and one text is a single token)."""
    g = torch.Generator().manual_seed(seed)
    lengths = [1] + torch.randint(2, 41, (n - 1,), generator=g).tolist()
    return [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (k,), generator=g)) for k in lengths]


@pytest.mark.parametrize("max_tokens", [256, 12])
def test_text_nll_equals_a_forward_pass_per_text_by_hand(model_tok, max_tokens):
    model, tok = model_tok
    texts = _texts(10)
    got = text_nll(model, tok, texts, batch_size=1, max_tokens=max_tokens)
    for (nll, n), (want_nll, want_n) in zip(got, [nll_by_hand(model, tok, t, max_tokens) for t in texts]):
        assert n == want_n
        assert nll == pytest.approx(want_nll, rel=1e-5, abs=1e-5)
    bos = tok("the")["input_ids"][0] == tok.bos_token_id
    assert got[0][1] == (1 if bos else 0)  # a lone word is scored only after a BOS token
    if max_tokens == 12:
        assert max(n for _, n in got) == 11


def test_batched_equals_batch_one(model_tok):
    model, tok = model_tok
    texts = _texts(13, seed=1)
    one = text_nll(model, tok, texts, batch_size=1, max_tokens=32)
    for batch_size in (4, 13):
        batched = text_nll(model, tok, texts, batch_size=batch_size, max_tokens=32)
        assert [n for _, n in batched] == [n for _, n in one]
        for (a, n), (b, _) in zip(batched, one):
            assert a / max(n, 1) == pytest.approx(b / max(n, 1), abs=1e-5)


def test_text_nll_refuses_what_cannot_be_scored(tiny_gpt2):
    model, tok = tiny_gpt2
    with pytest.raises(ValueError, match="max_tokens must be >= 2"):
        text_nll(model, tok, ["the city"], max_tokens=1)
    with pytest.raises(ValueError, match="batch_size"):
        text_nll(model, tok, ["the city"], batch_size=0)
    assert text_nll(model, tok, []) == []
    assert math.isfinite(text_nll(model, tok, ["the city of Rome"])[0][0])

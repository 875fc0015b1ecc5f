"""Second-moment statistics equal E[k kᵀ] computed directly, one unpadded text at a time."""
from __future__ import annotations

import pytest
import torch

from editharm.model.modules import get_module
from editharm.model.stats import collect_second_moment, load_stats, save_stats

MODULES = {"tiny_gpt2": "transformer.h.1.mlp.c_proj", "tiny_llama": "model.layers.1.mlp.down_proj"}


@torch.no_grad()
def direct_inputs(model, tok, module_path: str, texts: list[str]) -> torch.Tensor:
    """Every token's module input, text by text without padding, in corpus order."""
    seen = []
    handle = get_module(model, module_path).register_forward_pre_hook(lambda _m, args: seen.append(args[0][0]))
    try:
        for text in texts:
            model(**tok(text, return_tensors="pt"))
    finally:
        handle.remove()
    return torch.cat(seen).double()


@pytest.fixture(params=list(MODULES))
def case(request, tiny_texts):
    model, tok = request.getfixturevalue(request.param)
    # Uneven lengths, so batches are padded.
    texts = [" ".join(t.split()[: 3 + i % 10]) for i, t in enumerate(tiny_texts[:30])]
    return model, tok, MODULES[request.param], texts


def test_equals_direct_computation(case):
    model, tok, path, texts = case
    keys = direct_inputs(model, tok, path, texts)
    matrix, count = collect_second_moment(model, tok, path, texts, batch_size=7)
    assert count == keys.shape[0]
    assert matrix.dtype == torch.float32 and matrix.shape == (keys.shape[1],) * 2
    torch.testing.assert_close(matrix, (keys.T @ keys / count).float(), rtol=1e-4, atol=1e-6)


def test_n_tokens_takes_the_first_tokens_in_order(case):
    model, tok, path, texts = case
    keys = direct_inputs(model, tok, path, texts)[:50]
    matrix, count = collect_second_moment(model, tok, path, texts, batch_size=4, n_tokens=50)
    assert count == 50
    torch.testing.assert_close(matrix, (keys.T @ keys / 50).float(), rtol=1e-4, atol=1e-6)


def test_max_length_truncates(case):
    model, tok, path, texts = case
    _, count = collect_second_moment(model, tok, path, texts, max_length=4)
    assert count == sum(min(4, len(tok(t)["input_ids"])) for t in texts)


def test_empty_corpus_is_refused(tiny_gpt2):
    model, tok = tiny_gpt2
    with pytest.raises(ValueError, match="empty"):
        collect_second_moment(model, tok, MODULES["tiny_gpt2"], ["", ""])


def test_stats_file_roundtrip(tmp_path):
    matrix = torch.randn(5, 5)
    save_stats(tmp_path / "s.safetensors", matrix, {"module": "m", "n_tokens": 12})
    loaded, meta = load_stats(tmp_path / "s.safetensors")
    assert torch.equal(loaded, matrix) and meta == {"module": "m", "n_tokens": 12}
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]

from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from editharm.model.generation import _cut_at_stop, _stop_index, choice_scores, greedy_generate, teacher_forced

# Prompts of very different lengths, so batches need real left padding.
PROMPTS = [
    "Paris",
    "The capital of France is",
    "John went to the city and saw a big red dog with Mary , then he said",
    "What is the capital of Italy ?",
    "Q : the book is good . A :",
    "one two three",
    "Tom likes apples",
]


@pytest.fixture(params=["tiny_gpt2", "tiny_llama"])
def tiny(request):
    return request.getfixturevalue(request.param)


def _hf_greedy(model, tok, prompt, max_new_tokens):
    ids = torch.tensor([tok(prompt)["input_ids"]])
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_batched_equals_batch_one_and_hf_generate(tiny):
    model, tok = tiny
    batched = greedy_generate(model, tok, PROMPTS, max_new_tokens=12, batch_size=3, progress=False)
    single = greedy_generate(model, tok, PROMPTS, max_new_tokens=12, batch_size=1, progress=False)
    assert batched == single
    assert batched == [_hf_greedy(model, tok, p, 12) for p in PROMPTS]
    assert len(set(batched)) > 1  # outputs depend on the prompt: the comparison is not vacuous


def test_rows_finishing_early_are_dropped_without_changing_others(tiny, monkeypatch):
    model, tok = tiny
    full = greedy_generate(model, tok, PROMPTS, max_new_tokens=10, batch_size=1, progress=False)
    # Make the second word of the first prompt's output an EOS token: rows producing it stop, the rest go on.
    eos_word = full[0].split()[1]
    monkeypatch.setattr(model.generation_config, "eos_token_id", tok.convert_tokens_to_ids(eos_word))
    rows = []
    handle = model.register_forward_pre_hook(lambda _m, _a, kw: rows.append(len(kw["input_ids"])), with_kwargs=True)
    try:
        batched = greedy_generate(model, tok, PROMPTS, max_new_tokens=10, batch_size=len(PROMPTS), progress=False)
    finally:
        handle.remove()
    expected = [" ".join(text.split()[: text.split().index(eos_word)]) if eos_word in text.split() else text
                for text in full]
    assert batched == expected
    assert len(batched[0].split()) <= 1
    assert rows[0] == len(PROMPTS) and rows[-1] < len(PROMPTS)  # finished rows left the batch


def test_max_new_tokens_is_respected(tiny_llama):
    model, tok = tiny_llama
    long = greedy_generate(model, tok, PROMPTS, max_new_tokens=9, progress=False)
    short = greedy_generate(model, tok, PROMPTS, max_new_tokens=3, progress=False)
    for s, l in zip(short, long):
        assert len(s.split()) <= 3
        assert l.split()[: len(s.split())] == s.split()
    assert max(len(s.split()) for s in short) == 3
    assert greedy_generate(model, tok, PROMPTS, max_new_tokens=0, progress=False) == [""] * len(PROMPTS)


def test_stop_string_cuts_text_and_ends_decoding(tiny):
    model, tok = tiny
    prompt = PROMPTS[2]
    full = greedy_generate(model, tok, [prompt], max_new_tokens=12, progress=False)[0]
    stop = " ".join(full.split()[2:4])  # a stop string spanning two tokens
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        cut = greedy_generate(model, tok, [prompt], max_new_tokens=12, stop=["zzz", stop], progress=False)[0]
    finally:
        handle.remove()
    end = full.index(stop)
    assert cut == full[:end]
    # One forward call per generated token: decoding ended with the token that completed the stop string.
    assert len(calls) == len(full[: end + len(stop)].split()) < 12


def test_decoding_is_deterministic_even_in_train_mode(tiny_gpt2):
    model, tok = tiny_gpt2  # GPT-2 has dropout 0.1 by default
    reference = greedy_generate(model, tok, PROMPTS, max_new_tokens=6, progress=False)
    model.train()
    ids = torch.tensor([tok(PROMPTS[2])["input_ids"]])
    assert not torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)  # dropout is live
    assert greedy_generate(model, tok, PROMPTS, max_new_tokens=6, progress=False) == reference
    assert model.training  # the caller's mode is restored


def test_empty_prompt_is_rejected(tiny_gpt2):
    model, tok = tiny_gpt2
    with pytest.raises(ValueError, match="no tokens"):
        greedy_generate(model, tok, ["Paris", ""], max_new_tokens=2, progress=False)


def _hand_score(model, ids: list[int], n_continuation: int) -> float:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    start = len(ids) - n_continuation
    return sum(float(log_probs[t - 1, ids[t]]) for t in range(start, len(ids)))


def test_choice_scores_equal_hand_computed_log_softmax_sums(tiny):
    model, tok = tiny
    prompts = ["The capital of France is", "Paris", "text : a good dog . sentiment : the answer is"]
    choices = [[" Paris", " the city of Rome"], [" is", " was", " a big city"], [" positive", " negative"]]
    scores = choice_scores(model, tok, prompts, choices, batch_size=4)
    for prompt, cs, ss in zip(prompts, choices, scores):
        for choice, score in zip(cs, ss):
            ctx, cont = tok(prompt)["input_ids"], tok(choice, add_special_tokens=False)["input_ids"]
            assert score == pytest.approx(_hand_score(model, ctx + cont, len(cont)), abs=1e-5)
    single = choice_scores(model, tok, prompts, choices, batch_size=1)
    assert [s for ss in scores for s in ss] == pytest.approx([s for ss in single for s in ss], abs=1e-5)


def test_continuation_merging_across_the_boundary_is_encoded_alone(tiny_llama):
    model, tok = tiny_llama
    # "the capital" + "city" reads "the capitalcity", whose last word is unknown: the prompt's
    # ids are no longer a prefix, so the continuation is encoded on its own and appended.
    [[score]] = choice_scores(model, tok, ["the capital"], [["city"]])
    ids = tok("the capital city")["input_ids"]
    assert score == pytest.approx(_hand_score(model, ids, 1), abs=1e-5)


def test_teacher_forced_reports_argmax_and_targets(tiny_llama):
    model, tok = tiny_llama
    [forced] = teacher_forced(model, tok, ["the capital of"], [" France is"])
    n = len(tok("the capital of")["input_ids"])
    ids = tok("the capital of France is")["input_ids"]
    with torch.no_grad():
        argmax = model(input_ids=torch.tensor([ids])).logits[0].argmax(-1).tolist()
    assert forced.target_ids == ids[n:] and len(ids[n:]) == 2
    assert forced.argmax_ids == argmax[n - 1 : -1]
    assert all(lp < 0 for lp in forced.log_probs)


def test_prompts_longer_than_the_context_keep_their_end(tiny_gpt2):
    model, tok = tiny_gpt2
    limit = model.config.max_position_embeddings
    words = ("the capital of France is Paris and " * 60).split()[: limit + 40]
    kept = " ".join(words[-(limit - 4) :])
    long_out = greedy_generate(model, tok, [" ".join(words), "Paris"], max_new_tokens=4, progress=False)
    assert long_out[0] == greedy_generate(model, tok, [kept], max_new_tokens=4, progress=False)[0]
    [[score]] = choice_scores(model, tok, [" ".join(words)], [[" Rome is"]])
    [[kept_score]] = choice_scores(model, tok, [" ".join(words[-(limit - 2) :])], [[" Rome is"]])
    assert score == pytest.approx(kept_score, abs=1e-5)


# --- stop strings only after the answer text starts ----------------------------------------------


class _NoCache:
    def batch_select_indices(self, index):
        pass


class _BigramLM(torch.nn.Module):
    """Always predicts `table[previous token]`: a model whose every continuation is known by hand."""

    def __init__(self, table: dict[int, int], vocab_size: int):
        super().__init__()
        nxt = torch.arange(vocab_size)
        for prev, token in table.items():
            nxt[prev] = token
        self.register_buffer("next_id", nxt)
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the model a device

    def forward(self, input_ids, logits_to_keep=0, **_):
        logits = 10.0 * torch.nn.functional.one_hot(self.next_id[input_ids], len(self.next_id)).float()
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return SimpleNamespace(logits=logits, past_key_values=_NoCache())


@pytest.fixture
def newline_first():
    """(model, tokenizer): after "go" the model says "\\n", then "Paris", then "\\n" again, and so on."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "\n": 3, "go": 4, "Paris": 5}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", padding_side="left"
    )
    return _BigramLM({4: 3, 3: 5, 5: 3}, len(vocab)), tok


def test_leading_newline_does_not_trigger_the_stop(newline_first):
    model, tok = newline_first
    assert tok.decode([3, 5, 3, 5]) == "\n Paris \n Paris"  # what the model says unstopped
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        [text] = greedy_generate(model, tok, ["go"], max_new_tokens=8, stop=["\n"], progress=False)
    finally:
        handle.remove()
    # Kept: the leading "\n" (parsers strip it) and the answer; cut at the "\n" after the answer.
    assert text == "\n Paris "
    assert len(calls) == 3  # decoding ended with the second "\n", not the first
    # Only whitespace so far: no stop counts, decoding runs to the token limit.
    assert greedy_generate(model, tok, ["go"], max_new_tokens=1, stop=["\n"], progress=False) == ["\n"]


@pytest.mark.parametrize(
    "text, cut",
    [
        ("\nParis\nRome", "\nParis"),  # the leading "\n" is before the answer
        ("  \n \n", "  \n \n"),  # whitespace only: nothing to cut yet
        ("Paris\nRome", "Paris"),
        ("\n\nParis\n\nRome", "\n\nParis"),  # a multi-character stop in the leading whitespace
        ("Q: x Q: y", "Q: x "),  # a stop starting at the first character of the answer does not count
        ("", ""),
    ],
)
def test_cut_at_stop_only_after_first_non_whitespace(text, cut):
    stop = ["\n\n", "\n"] if "\n" in text else ["Q:"]
    assert _cut_at_stop(text, stop) == cut
    assert (_stop_index(text, stop) is not None) == (cut != text)

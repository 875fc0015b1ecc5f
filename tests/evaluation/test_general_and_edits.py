import copy
import json
import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from editharm.core.records import EditRecord
from editharm.evaluation.edits import base_argmax, dataset_means, edit_metrics
from editharm.evaluation.general import decoding_key, evaluate_task
from editharm.evaluation.predcache import EMPTY_DELTA, PredictionCache, item_key

WORDS = [f"w{i}" for i in range(40)]


def _word_tokenizer() -> PreTrainedTokenizerFast:
    """Words w0..w39 with consecutive ids, so the successor model below is easy to reason about."""
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", padding_side="left"
    )


class _NoCache:
    def batch_select_indices(self, index):
        pass


class SuccessorLM(torch.nn.Module):
    """A hand-checkable LM: after word wN it always predicts w(N+1) (ids are consecutive)."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the model a device

    def forward(self, input_ids, logits_to_keep=0, **_):
        logits = 10.0 * torch.nn.functional.one_hot((input_ids + 1) % self.vocab_size, self.vocab_size).float()
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return SimpleNamespace(logits=logits, past_key_values=_NoCache())


@pytest.fixture
def successor():
    tok = _word_tokenizer()
    return SuccessorLM(len(tok)), tok


@dataclass
class FakeItem:
    id: str
    fields: dict
    reference: Any
    gold: str


@dataclass
class FakeTask:
    """Just the Task interface evaluate_task uses; exact-match scoring against `gold`."""

    name: str
    scoring: str
    prompt: str = "{a} {b}"
    choices: list[str] | None = None
    max_new_tokens: int = 3
    stop: list[str] = field(default_factory=list)
    metric: str = "exact_match"

    def render(self, item):
        return self.prompt.format(**item.fields)

    def choices_for(self, item):
        return list(self.choices)

    def parse(self, text):
        return text.strip()

    def score(self, predictions, items):
        scores = [float(p == item.gold) for p, item in zip(predictions, items)]
        return scores, sum(scores) / len(scores)


COLUMNS = ["id", "prompt", "prediction", "reference", "score", "raw"]


def test_evaluate_task_choice_mode(successor):
    model, tok = successor
    task = FakeTask("fake_choice", "choice", choices=[" w9", " w3"], metric="accuracy")
    items = [
        FakeItem("a", {"a": "w1", "b": "w2"}, " w3", " w3"),  # the successor model picks " w3": right
        FakeItem("b", {"a": "w7", "b": "w8"}, " w3", " w3"),  # it picks " w9": wrong
    ]
    frame, metrics = evaluate_task(model, tok, task, items, batch_size=2)
    assert list(frame.columns) == COLUMNS
    assert frame["id"].tolist() == ["a", "b"]
    assert frame["prompt"].tolist() == ["w1 w2", "w7 w8"]
    assert frame["prediction"].tolist() == [" w3", " w9"]
    assert frame["score"].tolist() == [1.0, 0.0]
    raw = json.loads(frame["raw"][0])
    best = -math.log1p((len(tok) - 1) * math.exp(-10.0))  # log-softmax of a logit 10 above all others
    assert raw[" w3"] == pytest.approx(best, abs=1e-6) and raw[" w9"] == pytest.approx(best - 10.0, abs=1e-5)
    assert metrics == {"task": "fake_choice", "metric": "accuracy", "value": 0.5, "n": 2, "scoring": "choice"}


def test_evaluate_task_generate_mode(successor):
    model, tok = successor
    task = FakeTask("fake_gen", "generate", max_new_tokens=4, stop=["w6"])
    items = [
        FakeItem("x", {"a": "w10", "b": "w11"}, ["w12 w13 w14 w15", "w12"], "w12 w13 w14 w15"),  # max_new_tokens
        FakeItem("y", {"a": "w3", "b": "w4"}, "w5", "w5"),  # cut by the stop string
    ]
    frame, metrics = evaluate_task(model, tok, task, items, batch_size=8)
    assert list(frame.columns) == COLUMNS
    assert frame["raw"].tolist() == ["w12 w13 w14 w15", "w5 "]
    assert frame["prediction"].tolist() == ["w12 w13 w14 w15", "w5"]
    assert frame["reference"].tolist() == [json.dumps(["w12 w13 w14 w15", "w12"]), "w5"]
    assert frame["score"].tolist() == [1.0, 1.0]
    assert metrics == {"task": "fake_gen", "metric": "exact_match", "value": 1.0, "n": 2, "scoring": "generate"}


def test_evaluate_task_rejects_unknown_scoring(successor):
    model, tok = successor
    with pytest.raises(ValueError, match="unknown scoring 'vote'"):
        evaluate_task(model, tok, FakeTask("t", "vote"), [FakeItem("a", {"a": "w1", "b": "w2"}, "", "")], batch_size=1)


def test_outputs_cached_under_the_old_stop_rule_are_decoded_again(successor, tmp_path):
    model, tok = successor
    task = FakeTask("fake_gen", "generate", max_new_tokens=2, stop=["\n"])
    item = FakeItem("x", {"a": "w3", "b": "w4"}, "w5 w6", "w5 w6")
    assert decoding_key(task) == {"scoring": "generate", "max_new_tokens": 2, "stop": ["\n"], "stop_rule": "after_text"}
    cache = PredictionCache(tmp_path, "m").at(EMPTY_DELTA)
    # An answer that opened with "\n" was cut to "" under the old rule, whose key had no stop_rule.
    old_key = {"scoring": "generate", "max_new_tokens": 2, "stop": ["\n"]}
    cache.put(task.name, old_key, {item_key(task.render(item), None): ""})
    frame, _ = evaluate_task(model, tok, task, [item], batch_size=1, cache=cache)
    assert frame["raw"].tolist() == ["w5 w6"]


def _record(i, **kw):
    base = dict(
        id=str(i), subject="w1", prompt="w1 w2", target_new="w3 w4", ground_truth="w9",
        rephrase_prompt="w5 w6", locality_prompt="w10 w11", locality_answer="w20 w21 w22",
    )
    return EditRecord(**{**base, **kw})


def test_edit_metrics_on_a_hand_checkable_model(successor):
    model, tok = successor
    records = [
        _record(0, portability_prompt="w2", portability_answer="w3 w5"),
        _record(1, target_new="w3 w9", rephrase_prompt="w2"),
    ]
    frame, summary = edit_metrics(model, tok, records, base_predictions=base_argmax(model, tok, records))
    assert list(frame.columns) == ["id", "latest", "reliability", "generalization", "locality", "portability",
                                   "fluency", "generation"]
    # "w1 w2 -> w3 w4": both tokens right; "w1 w2 -> w3 w9": after w3 it predicts w4, not w9.
    assert frame["reliability"].tolist() == [1.0, 0.5]
    # "w5 w6 -> w3 w4": w7 != w3, then w4 right. "w2 -> w3 w9": w3 right, w9 wrong.
    assert frame["generalization"].tolist() == [0.5, 0.5]
    assert frame["locality"].tolist() == [1.0, 1.0]
    assert frame["portability"][0] == 0.5 and math.isnan(frame["portability"][1])
    assert summary == {"reliability": 0.75, "generalization": 0.5, "locality": 1.0, "portability": 0.5,
                       "reliability_all": 0.75, "generalization_all": 0.5, "locality_all": 1.0,
                       "portability_all": 0.5, "n": 2}
    # latest = the last edit call's records; "_all" keeps every edit so far (retention)
    frame, summary = edit_metrics(model, tok, records, latest={"1"}, base_predictions=base_argmax(model, tok, records),
                                  fluency_tokens=3)
    assert frame["latest"].tolist() == [False, True]
    assert summary["reliability"] == 0.5 and summary["reliability_all"] == 0.75
    assert summary["portability"] is None and summary["portability_all"] == 0.5
    # the successor model continues "w1 w2" with "w3 w4 w5": four distinct bigrams, three trigrams
    assert frame["generation"].tolist() == ["", "w3 w4 w5"]
    assert math.isnan(frame["fluency"][0])
    assert summary["fluency"] == pytest.approx((2 / 3 * math.log2(4) + 4 / 3 * math.log2(3)) / 2)
    with pytest.raises(ValueError, match=r"latest edit id\(s\) \['9'\]"):
        edit_metrics(model, tok, records, latest={"9"})


def test_edit_metrics_of_a_mixed_sequence_are_also_given_per_dataset(successor):
    model, tok = successor
    records = [
        _record("zsre:0", portability_prompt="w2", portability_answer="w3 w5"),
        _record("recent:0", target_new="w3 w9", rephrase_prompt="w2"),
        _record("recent:1", target_new="w3 w9 w9", rephrase_prompt="w2"),
    ]
    frame, _ = edit_metrics(model, tok, records, base_predictions=base_argmax(model, tok, records))
    dataset_of = {"zsre:0": "zsre", "recent:0": "recent", "recent:1": "recent"}
    # reliability 1 (both target tokens), 1/2 and 1/3 (only w3 follows w2); generalization 1/2, 1/2, 1/3;
    # portability only for the ZsRE record, so none for the other dataset
    assert dataset_means(frame, dataset_of) == pytest.approx({
        "recent:reliability_all": (1 / 2 + 1 / 3) / 2, "recent:generalization_all": (1 / 2 + 1 / 3) / 2,
        "recent:locality_all": 1.0,
        "zsre:reliability_all": 1.0, "zsre:generalization_all": 0.5, "zsre:locality_all": 1.0,
        "zsre:portability_all": 0.5,
    })
    assert dataset_means(frame, {}) == {}  # a one-dataset sequence: its summary says it all


LOCALITY = [
    ("The capital of France is", "Paris"),
    ("John went to the", "city and saw a dog"),
    ("What is the capital of Italy ? A :", "Rome"),
    ("Q : the book is", "good . A : yes"),
    ("Tom likes", "red apples and big books"),
    ("one two three", "four five six seven"),
]


def test_locality_is_one_unchanged_and_drops_when_weights_change(tiny_llama):
    model, tok = tiny_llama
    records = [
        _record(i, subject="the", prompt="the capital", target_new="Paris", rephrase_prompt="the city",
                locality_prompt=p, locality_answer=a)
        for i, (p, a) in enumerate(LOCALITY)
    ]
    base = base_argmax(model, tok, records)
    assert [len(b) for b in base] == [len(a.split()) for _, a in LOCALITY]
    _, unchanged = edit_metrics(model, tok, records, base_predictions=base)
    assert unchanged["locality"] == 1.0

    edited = copy.deepcopy(model)
    with torch.no_grad():
        weight = edited.model.layers[0].mlp.down_proj.weight
        weight += 2.0 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(1))
    frame, changed = edit_metrics(edited, tok, records, base_predictions=base)
    assert changed["locality"] < 1.0
    assert frame["locality"].between(0.0, 1.0).all()


def test_locality_needs_the_base_side(tiny_llama):
    model, tok = tiny_llama
    records = [
        _record(0, subject="the", prompt="the capital", target_new="Paris", rephrase_prompt="the city",
                locality_prompt=p, locality_answer=a)
        for p, a in [LOCALITY[0], ("", "")]
    ]
    frame, summary = edit_metrics(model, tok, records)
    assert frame["locality"].isna().all() and summary["locality"] is None
    assert base_argmax(model, tok, records)[1] == []
    with pytest.raises(ValueError, match="base_predictions has 1 entries for 2 records"):
        edit_metrics(model, tok, records, base_predictions=[[1]])
    with pytest.raises(ValueError, match="another tokenizer"):
        edit_metrics(model, tok, records, base_predictions=[[1, 2], []])


def test_evaluate_task_bootstraps_its_metric_over_items(successor):
    from editharm.results.uncertainty import Bootstrap, interval

    model, tok = successor
    task = FakeTask("fake_choice", "choice", choices=[" w9", " w3"], metric="accuracy")
    items = [FakeItem(f"i{k}", {"a": "w1", "b": "w2"} if k % 2 else {"a": "w7", "b": "w8"}, " w3", " w3")
             for k in range(10)]  # odd items right, even items wrong
    _, metrics = evaluate_task(model, tok, task, items, batch_size=4, bootstrap=Bootstrap(300, seed=0))
    block = metrics["bootstrap"]
    assert (block["resamples"], block["seed"], block["key"]) == (300, 0, "fake_choice")
    reps = block["replicates"]["accuracy"]
    assert len(reps) == 300 and set(reps) <= {k / 10 for k in range(11)}
    lo, hi = interval(reps)
    assert lo < metrics["value"] == 0.5 < hi
    # The same items under the same seed draw the same resamples: a rerun gives the same replicates.
    _, again = evaluate_task(model, tok, task, items, batch_size=2, bootstrap=Bootstrap(300, seed=0))
    assert again["bootstrap"] == block


def test_edit_metrics_bootstrap_each_summary_over_its_own_records(successor):
    from editharm.results.uncertainty import Bootstrap

    model, tok = successor
    records = [_record(0, portability_prompt="w2", portability_answer="w3 w5"), _record(1, target_new="w3 w9")]
    _, summary = edit_metrics(model, tok, records, latest={"1"}, base_predictions=base_argmax(model, tok, records),
                              bootstrap=Bootstrap(50, seed=0))
    reps = summary["bootstrap"]["replicates"]
    # portability has no value among the latest records: no summary, no replicates
    assert summary["portability"] is None and "portability" not in reps
    assert set(reps) == {k for k, v in summary.items() if v is not None and k not in ("n", "bootstrap")}
    assert set(reps["reliability"]) == {0.5}  # one latest record: every resample is that record
    assert set(reps["reliability_all"]) <= {0.5, 0.75, 1.0}

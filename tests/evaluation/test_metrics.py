import math
from types import SimpleNamespace

import pytest

from editharm.evaluation.metrics import (
    METRICS,
    bio_spans,
    detokenize,
    entity_f1,
    exact_match,
    first_number,
    last_number,
    per_type_recall,
    rouge_mean,
    solved,
    split_entities,
    squad_normalize,
)


def items(*references, **fields):
    return [SimpleNamespace(reference=r, fields={k: v[i] for k, v in fields.items()}) for i, r in enumerate(references)]


def test_squad_normalize_drops_case_punctuation_articles_and_extra_space():
    assert squad_normalize("  The Eiffel-Tower,   in an  old Paris! ") == "eiffeltower in old paris"


def test_exact_match_takes_best_reference_after_normalisation():
    assert exact_match("the Paris.", ["Lyon", "paris"]) == 1.0
    assert exact_match("Paris, France", "Paris") == 0.0
    assert exact_match("An apple", "apple") == 1.0


@pytest.mark.parametrize("prediction, reference", [("", "the"), ("", "!"), ("", ""), ("The.", "a"), ("!", ["x", "?"])])
def test_empty_prediction_never_matches(prediction, reference):
    # Both sides normalise to "": before, "" == "" scored these as correct.
    assert exact_match(prediction, reference) == 0.0


@pytest.mark.parametrize(
    "text, number",
    [
        ("so 3 lamps cost $1,200.50 in total", "1200.5"),
        ("The answer is 18.", "18"),
        ("it was -4 degrees", "-4"),
        ("18.0", "18"),
        ("no digits here", ""),
    ],
)
def test_last_number(text, number):
    assert last_number(text) == number


@pytest.mark.parametrize(
    "text, number",
    [
        (" 18 dollars. Next, 20", "18"),  # the answer comes first; later numbers are rambling
        ("3-4", "3"),  # a range: the minus after a digit is not a sign
        ("$1,200.", "1200"),
        ("-7 degrees", "-7"),
        ("The answer is 5.", "5"),
        ("so x-2 is 2.50 then", "2"),  # a minus after a letter is not a sign either
        ("12.5% of 40", "12.5"),
        ("1,2,3", "1"),  # commas only as thousands separators
        ("no digits here", ""),
    ],
)
def test_first_number(text, number):
    assert first_number(text) == number


def test_solved_compares_the_first_number_of_the_prediction():
    assert solved(" 18 dollars. Next, 20", "18") == 1.0
    assert solved(" 12 apples, so 18 in all", "18") == 0.0
    assert solved("3-4", "3") == 1.0 and solved("3-4", "-4") == 0.0
    assert solved("$1,200.", "1200") == 1.0
    assert solved("-7 degrees", "-7") == 1.0
    assert solved("18.0", "18") == 1.0
    assert solved("", "18") == 0.0


def test_solve_rate_metric():
    per, agg = METRICS.get("solve_rate").compute(["18", "7", ""], items("18", "8", "3"))
    assert per == [1.0, 0.0, 0.0]
    assert agg == pytest.approx(1 / 3)


@pytest.mark.parametrize("name", ["accuracy", "recall_at_1"])
def test_label_metrics_are_share_correct(name):
    per, agg = METRICS.get(name).compute(["B", "A", "D", "D"], items("B", "C", "D", "A"))
    assert per == [1.0, 0.0, 1.0, 0.0]
    assert agg == 0.5


def test_exact_match_metric_over_reference_lists():
    per, agg = METRICS.get("exact_match").compute(["The Nile", "Amazon river"], items(["Nile"], ["Amazon"]))
    assert per == [1.0, 0.0]
    assert agg == 0.5


def test_rouge_mean_hand_computed():
    # rouge1: P=3/3 R=3/6 F=2/3; rouge2: P=2/2 R=2/5 F=4/7; rougeL: LCS 3 -> F=2/3
    per, agg = rouge_mean(["the cat sat"], ["the cat sat on the mat"])
    assert per[0] == pytest.approx((2 / 3 + 4 / 7 + 2 / 3) / 3)
    assert agg == pytest.approx(40 / 63)


def test_rouge_mean_stems_and_averages_examples():
    per, agg = rouge_mean(["cats running", ""], ["cat runs", "a summary"])
    assert per == pytest.approx([1.0, 0.0])
    assert agg == pytest.approx(0.5)


def test_detokenize_glues_closing_punctuation():
    assert detokenize(["EU", "rejects", "it", ",", "they", "said", "."]) == "EU rejects it, they said."


def test_bio_spans_iob2():
    tokens = ["Peter", "Blackburn", "of", "the", "European", "Commission", "visited", "Bonn", "."]
    tags = ["B-PER", "I-PER", "O", "O", "B-ORG", "I-ORG", "O", "B-LOC", "O"]
    assert bio_spans(tokens, tags) == [("PER", "Peter Blackburn"), ("ORG", "European Commission"), ("LOC", "Bonn")]


def test_bio_spans_iob1_and_type_changes():
    # IOB1: I- opens a span; B- only separates two adjacent spans of one type; a type change closes.
    tokens = ["John", "Smith", "Mary", "Jones", "Berlin", "Smith"]
    tags = ["I-PER", "I-PER", "B-PER", "I-PER", "I-LOC", "I-PER"]
    assert bio_spans(tokens, tags) == [
        ("PER", "John Smith"), ("PER", "Mary Jones"), ("LOC", "Berlin"), ("PER", "Smith"),
    ]


def test_bio_spans_rejects_length_mismatch():
    with pytest.raises(ValueError, match="2 tokens but 1 tags"):
        bio_spans(["a", "b"], ["O"])


def test_entity_f1_hand_computed():
    predicted = [
        [("PER", "peter  blackburn"), ("LOC", "EU")],  # 1 right (case/space-insensitive), 1 wrong type
        [],  # nothing to find, nothing found
        [("LOC", "Germany"), ("LOC", "Britain")],  # 1 right, 1 spurious
        [("LOC", "Paris"), ("LOC", "Paris")],  # multiset: the second Paris is a false positive
    ]
    gold = [
        [("PER", "Peter Blackburn"), ("ORG", "EU")],
        [],
        [("LOC", "Germany")],
        [("LOC", "Paris")],
    ]
    per, micro = entity_f1(predicted, gold)
    assert per == pytest.approx([0.5, 1.0, 2 / 3, 2 / 3])
    # TP = 3, FP = 3, FN = 1 -> 2*3 / (6 + 3 + 1)
    assert micro == pytest.approx(0.6)


def test_entity_f1_metric_reads_per_type_items():
    its = items(["Peter Blackburn"], ["EU"], [], entity_type=["Person", "Organization", "Location"])
    per, agg = METRICS.get("entity_f1").compute(["Peter Blackburn, EU", "EU", ""], its)
    assert per == pytest.approx([2 / 3, 1.0, 1.0])
    assert agg == pytest.approx(2 * 2 / (2 * 2 + 1))


def test_entity_f1_normalises_gold_and_predicted_surfaces_alike():
    its = items(["U.S.", "Acme Corp."], entity_type=["Organization"])
    per, agg = METRICS.get("entity_f1").compute(["U.S., Acme Corp."], its)
    assert per == [1.0] and agg == 1.0  # was 0.0: "U.S" and "Acme Corp" against "U.S." and "Acme Corp."
    per, _ = METRICS.get("entity_f1").compute(["u.s, ACME  corp!"], its)
    assert per == [1.0]


def test_split_entities_only_splits():
    assert split_entities(" Peter Blackburn; EU , Bonn.") == ["Peter Blackburn", "EU", "Bonn."]
    assert split_entities("U.S., Acme Corp.") == ["U.S.", "Acme Corp."]
    assert split_entities("None") == split_entities("None.") == split_entities(" . , ;") == []


def test_per_type_recall_reproduces_the_reference_counting():
    predictions = [
        "Peter Blackburn and the EU", "", " John",  # Person
        "berlin", "Paris",  # Location
        "",  # Organization
        " German", " German, British", "",  # Miscellaneous
    ]
    gold = [["Peter Blackburn", "Werner Zwingmann"], [], [], ["Berlin"], [], [], [], ["German"], []]
    types = ["Person"] * 3 + ["Location"] * 2 + ["Organization"] + ["Miscellaneous"] * 3
    per, agg = per_type_recall(predictions, gold, types)
    # By hand from the reference: Person 1 of 2 surfaces + 1 (empty generation, no gold); " John" without
    # gold is skipped -> 2/3. Location: "Berlin" is not a substring of "berlin" (case-sensitive) and
    # "Paris" without gold is skipped -> 0/1. Organization: empty generation, no gold -> 1/1.
    # Miscellaneous: " German" without gold is a miss, "German" found, empty without gold found -> 2/3.
    assert per[:2] == [0.5, 1.0] and math.isnan(per[2])
    assert per[3] == 0.0 and math.isnan(per[4])
    assert per[5:] == [1.0, 0.0, 1.0, 1.0]
    assert agg == pytest.approx((2 / 3 + 0 + 1 + 2 / 3) / 4)


def test_per_type_recall_leaves_out_a_type_with_nothing_counted():
    per, agg = per_type_recall(["Bonn", "Mary"], [["Bonn"], []], ["Location", "Person"])
    assert per[0] == 1.0 and math.isnan(per[1])
    assert agg == 1.0  # Person had only a skipped example: no recall, not a division by zero
    with pytest.raises(ValueError, match="every example was skipped"):
        per_type_recall(["Mary"], [[]], ["Person"])


def test_per_type_recall_ignores_wrong_entities():
    _, agg = per_type_recall(["Bonn, Paris, Rome, Peter"], [["Peter"]], ["Person"])
    assert agg == 1.0


@pytest.mark.parametrize("name", ["accuracy", "exact_match", "solve_rate", "rouge_mean", "entity_f1", "per_type_recall"])
def test_empty_input_is_an_error(name):
    with pytest.raises(ValueError, match="empty"):
        METRICS.get(name).compute([], [])


def test_metric_registry():
    assert set(METRICS.names()) == {
        "accuracy", "recall_at_1", "exact_match", "solve_rate", "rouge_mean", "entity_f1", "per_type_recall",
    }
    with pytest.raises(KeyError, match="allowed: accuracy"):
        METRICS.get("bleu")


def test_ngram_entropy_by_hand():
    from editharm.evaluation.metrics import ngram_entropy

    # "a b a b": bigrams ab, ba, ab -> p = 2/3, 1/3; trigrams aba, bab -> 1/2, 1/2
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert ngram_entropy("A b a B") == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)
    assert ngram_entropy("the the the the the") == 0.0
    assert ngram_entropy("one") == 0.0
    varied = ngram_entropy("Paris is the capital of France, and Rome is the capital of Italy.")
    looping = ngram_entropy("Paris is Paris is Paris is Paris is Paris is Paris is Paris is Paris.")
    assert varied > looping

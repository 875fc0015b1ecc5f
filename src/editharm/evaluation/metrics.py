"""Metrics for the general-ability tasks: pure functions plus a registry the task YAMLs name.

Every registered metric maps parsed predictions and their items to per-example scores and the
aggregate the papers report. Items are duck-typed: anything with `reference` and `fields`.
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from rouge_score import rouge_scorer

from editharm.core.registry import Registry
from editharm.results.uncertainty import Bootstrap, Combine

Scores = tuple[list[float], float]


class ItemLike(Protocol):
    id: Any
    reference: Any
    fields: dict[str, Any]


# --- text normalisation -----------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def squad_normalize(text: str) -> str:
    """SQuAD answer normalisation: lower case, drop punctuation and articles, squeeze spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, references: str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised reference. A prediction that
    normalises to "" never matches, not even a reference that does ("the", "!")."""
    refs = [references] if isinstance(references, str) else list(references)
    pred = squad_normalize(prediction)
    return float(bool(pred) and any(pred == squad_normalize(ref) for ref in refs))


# A minus sign makes a number negative only at the start of a word: "3-4" is 3 then 4, not -4.
# Commas are read as thousands separators only ("1,200"), so "1,2,3" is not 123.
_NUMBER = re.compile(r"(?:(?<!\w)-)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")


def _canonical(number: str) -> str:
    value = float(number.replace(",", ""))
    return str(int(value)) if value.is_integer() else repr(value)


def first_number(text: str) -> str:
    """The first number in `text` in canonical form ("$1,200." -> "1200", "-7 degrees" -> "-7",
    "3-4" -> "3"), or "" if there is none."""
    match = _NUMBER.search(text)
    return _canonical(match.group(0)) if match else ""


def last_number(text: str) -> str:
    """The last number in `text` in canonical form ("1,200.0" -> "1200"), or "" if there is none."""
    matches = _NUMBER.findall(text)
    return _canonical(matches[-1]) if matches else ""


def solved(prediction: str, reference: str) -> float:
    """1.0 when the first number of the prediction equals the reference, the gold number (the
    loader's canonical number after "####"). The GSM8K prompt ends "the answer (arabic numerals)
    is:", so the answer is the number that comes first; later numbers are the model rambling on."""
    pred, ref = first_number(prediction), first_number(reference)
    if not pred or not ref:
        return 0.0
    return float(math.isclose(float(pred), float(ref), rel_tol=0.0, abs_tol=1e-6))


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("cannot aggregate an empty list of scores")
    return sum(values) / len(values)


# --- ROUGE ------------------------------------------------------------------------------------

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge_mean(predictions: Sequence[str], references: Sequence[str]) -> Scores:
    """Per example the mean of ROUGE-1/2/L F (Porter stemming); aggregate: mean over examples."""
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    per = []
    for pred, ref in zip(predictions, references, strict=True):
        scores = scorer.score(ref, pred)
        per.append(sum(scores[t].fmeasure for t in ROUGE_TYPES) / len(ROUGE_TYPES))
    return per, mean(per)


# --- named entities ---------------------------------------------------------------------------

Entity = tuple[str, str]  # (type, surface string)

# Punctuation tokens glued to the previous token when CoNLL tokens are shown as text.
_CLOSING = {",", ".", ";", ":", "!", "?"}


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """ROME's fluency score: the weighted mean of the n-gram entropies (bits) of one text.

    For each n the entropy of the text's n-gram frequency distribution is taken; the result is
    mean(w_n · H_n), so repetitive text (a model stuck in a loop) scores low. Words are
    lower-cased runs of letters/digits or single punctuation marks (ROME tokenizes with NLTK; the
    two agree on plain prose). A text with no n-grams of some n contributes 0 for it.
    """
    words = re.findall(r"\w+|[^\w\s]", text.lower())
    entropies = []
    for n in ns:
        counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        total = sum(counts.values())
        entropies.append(-sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0)
    return sum(w * h for w, h in zip(weights, entropies)) / len(ns)


def detokenize(tokens: Sequence[str]) -> str:
    text = ""
    for tok in tokens:
        text += tok if (tok in _CLOSING and text) else (" " + tok if text else tok)
    return text


def bio_spans(tokens: Sequence[str], tags: Sequence[str]) -> list[Entity]:
    """Entity spans from BIO tags as (type, surface); accepts IOB1 (I- may open a span) and IOB2."""
    if len(tokens) != len(tags):
        raise ValueError(f"{len(tokens)} tokens but {len(tags)} tags")
    spans: list[Entity] = []
    start, kind = None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-")
        continues = prefix == "I" and label == kind
        if start is not None and not continues:
            spans.append((kind, detokenize(tokens[start:i])))
            start, kind = None, None
        if prefix in ("B", "I") and not continues:
            start, kind = i, label
    return spans


# Sentence punctuation a model puts after the last entity of its list ("EU, Bonn.").
_TRAILING = re.compile(r"[\s.!?]+$")


def _entity_key(entity: Entity) -> Entity:
    """The one normalisation of gold and predicted surfaces: whitespace squeezed, trailing sentence
    punctuation stripped, case folded ("U.S." and "u.s" are one key, "Acme Corp." and "Acme Corp")."""
    kind, surface = entity
    return kind, _TRAILING.sub("", " ".join(surface.split())).casefold()


def entity_f1(predicted: Sequence[Sequence[Entity]], gold: Sequence[Sequence[Entity]]) -> Scores:
    """Entity-level F1 on (type, surface) pairs matched as multisets, surfaces compared with
    whitespace squeezed, trailing sentence punctuation stripped and case folded (`_entity_key`).
    Per example F1; aggregate micro F1 over all entities. F1 = 2TP / (2TP + FP + FN), and 1.0
    where there is nothing to find and nothing was found."""
    counts = entity_counts(predicted, gold)
    if not counts:
        raise ValueError("cannot aggregate an empty list of scores")
    tp, fp, fn = (sum(c[i] for c in counts) for i in range(3))
    return [_f1(*c) for c in counts], _f1(tp, fp, fn)


def entity_counts(predicted: Sequence[Sequence[Entity]], gold: Sequence[Sequence[Entity]]) -> list[tuple[int, int, int]]:
    """Per example (true positives, false positives, false negatives) of entities matched as multisets."""
    counts = []
    for pred, ref in zip(predicted, gold, strict=True):
        p, g = Counter(map(_entity_key, pred)), Counter(map(_entity_key, ref))
        tp = sum((p & g).values())
        counts.append((tp, sum(p.values()) - tp, sum(g.values()) - tp))
    return counts


def _f1(tp: int, fp: int, fn: int) -> float:
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


# The one type whose examples without gold entities count as a miss when the generation is not empty.
_MISS_WITHOUT_GOLD = frozenset({"Miscellaneous"})


def type_recall_counts(
    predictions: Sequence[str], gold: Sequence[Sequence[str]], types: Sequence[str]
) -> list[tuple[int, int]]:
    """Per example (found, counted) under the reference evaluation's per-type rules
    (`per_type_recall`); an example the reference skips is (0, 0)."""
    counts = []
    for pred, surfaces, kind in zip(predictions, gold, types, strict=True):
        if surfaces:
            counts.append((sum(s in pred for s in surfaces), len(surfaces)))
        elif not pred:
            counts.append((1, 1))
        else:
            counts.append((0, int(kind in _MISS_WITHOUT_GOLD)))
    return counts


def per_type_recall(predictions: Sequence[str], gold: Sequence[Sequence[str]], types: Sequence[str]) -> Scores:
    """The reference evaluation's NER score (compatibility only, not F1), as its counting in
    test-task-after-code/test-NER-after.py (lines 294-303, 318-327, 342-351, 366-375, 377-381):

    - an example with gold entities of its type counts each gold surface, found when it occurs
      in the raw generation as a case-sensitive substring;
    - an example without gold entities and with an empty generation counts as one found entity;
    - an example without gold entities and with a non-empty generation is skipped for Person,
      Location and Organization (the reference's branch for it can never run), and counts as one
      missed entity for Miscellaneous;
    - the aggregate is the unweighted mean over types of found / counted.

    Per example: found / counted, NaN for a skipped example. A type with nothing counted (all its
    examples skipped) is left out of the mean, where the reference divides by zero.
    """
    counts = type_recall_counts(predictions, gold, types)
    found, counted = Counter(), Counter()
    for (hits, n), kind in zip(counts, types):
        found[kind] += hits
        counted[kind] += n
    if not counts:
        raise ValueError("cannot aggregate an empty list of scores")
    recalls = [found[k] / counted[k] for k in counted if counted[k]]
    if not recalls:
        raise ValueError("per_type_recall: every example was skipped, no type has a recall")
    return [hits / n if n else math.nan for hits, n in counts], mean(recalls)


# --- registry ---------------------------------------------------------------------------------


Statistics = Callable[[Sequence[str], Sequence[ItemLike]], np.ndarray]


@dataclass(frozen=True)
class Metric:
    """A metric and what its bootstrap needs. With `statistics` None the aggregate is the mean of the
    per-example scores; otherwise it is `combine(column sums of statistics(predictions, items), n)`
    (editharm.results.uncertainty), e.g. micro F1 from summed tp, fp and fn."""

    name: str
    description: str
    compute: Callable[[Sequence[str], Sequence[ItemLike]], Scores]
    higher_is_better: bool = True
    statistics: Statistics | None = None
    combine: Combine | None = None

    def replicates(self, bootstrap: Bootstrap, key: str, predictions: Sequence[str], items: Sequence[ItemLike],
                   per_item: Sequence[float]) -> np.ndarray:
        """The aggregate on each of the bootstrap's resamples of `items` (parsed `predictions`)."""
        ids = [it.id for it in items]
        if self.statistics is None:
            return bootstrap.replicates(key, ids, np.asarray(per_item, dtype=np.float64))
        return bootstrap.replicates(key, ids, self.statistics(predictions, items), self.combine)


METRICS: Registry[Metric] = Registry("metric")


def _metric(name: str, description: str, statistics: Statistics | None = None, combine: Combine | None = None):
    def add(fn: Callable[[Sequence[str], Sequence[ItemLike]], Scores]):
        METRICS.add(name, Metric(name, description, fn, statistics=statistics, combine=combine))
        return fn

    return add


def _matches(predictions: Sequence[str], items: Sequence[ItemLike]) -> Scores:
    per = [float(p == it.reference) for p, it in zip(predictions, items, strict=True)]
    return per, mean(per)


_metric("accuracy", "share of predictions equal to the reference label")(_matches)
_metric("recall_at_1", "Recall4@1: share of examples whose top-ranked of 4 options is correct")(_matches)


@_metric("exact_match", "EM after SQuAD normalisation, best over the reference answers")
def _exact_match(predictions: Sequence[str], items: Sequence[ItemLike]) -> Scores:
    per = [exact_match(p, it.reference) for p, it in zip(predictions, items, strict=True)]
    return per, mean(per)


@_metric("solve_rate", "share of problems whose first predicted number equals the answer")
def _solve_rate(predictions: Sequence[str], items: Sequence[ItemLike]) -> Scores:
    per = [solved(p, it.reference) for p, it in zip(predictions, items, strict=True)]
    return per, mean(per)


@_metric("rouge_mean", "mean of ROUGE-1, ROUGE-2 and ROUGE-L F (stemmed)")
def _rouge(predictions: Sequence[str], items: Sequence[ItemLike]) -> Scores:
    return rouge_mean(predictions, [it.reference for it in items])


def split_entities(text: str) -> list[str]:
    """Surfaces of an entity-list answer ("EU, Peter Blackburn"), as written; parts that are
    empty or "None" under the entity normalisation (`_entity_key`) name no entity."""
    parts = (p.strip() for p in re.split(r"[,;]", text))
    return [p for p in parts if _entity_key(("", p))[1] not in ("", "none")]


def _entity_lists(predictions: Sequence[str], items: Sequence[ItemLike]) -> tuple[list, list]:
    types = [it.fields["entity_type"] for it in items]
    predicted = [[(t, s) for s in split_entities(p)] for p, t in zip(predictions, types, strict=True)]
    gold = [[(t, s) for s in it.reference] for it, t in zip(items, types)]
    return predicted, gold


def _f1_combine(sums: np.ndarray, n: int) -> np.ndarray:
    tp, fp, fn = sums[:, 0], sums[:, 1], sums[:, 2]
    denominator = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator == 0, 1.0, 2 * tp / denominator)


@_metric("entity_f1", "entity-level micro F1 on (type, surface) pairs",
         statistics=lambda predictions, items: np.array(entity_counts(*_entity_lists(predictions, items)),
                                                        dtype=np.float64).reshape(-1, 3),
         combine=_f1_combine)
def _entity_f1(predictions: Sequence[str], items: Sequence[ItemLike]) -> Scores:
    return entity_f1(*_entity_lists(predictions, items))


def _type_recall_statistics(predictions: Sequence[str], items: Sequence[ItemLike]) -> np.ndarray:
    """Per example, for each entity type (sorted), the columns (found, counted): zero outside its type."""
    types = [it.fields["entity_type"] for it in items]
    order = sorted(set(types))
    counts = type_recall_counts(predictions, [it.reference for it in items], types)
    stats = np.zeros((len(items), 2 * len(order)))
    for row, ((hits, n), kind) in enumerate(zip(counts, types)):
        column = 2 * order.index(kind)
        stats[row, column : column + 2] = hits, n
    return stats


def _type_recall_combine(sums: np.ndarray, n: int) -> np.ndarray:
    found, counted = sums[:, 0::2], sums[:, 1::2]
    with np.errstate(invalid="ignore", divide="ignore"):
        recalls = np.where(counted > 0, found / counted, np.nan)
        return np.nanmean(recalls, axis=1) if recalls.shape[1] else np.full(len(sums), np.nan)


@_metric("per_type_recall", "compatibility: the reference code's per-type NER recall (not F1)",
         statistics=_type_recall_statistics, combine=_type_recall_combine)
def _per_type_recall(predictions: Sequence[str], items: Sequence[ItemLike]) -> Scores:
    return per_type_recall(predictions, [it.reference for it in items], [it.fields["entity_type"] for it in items])

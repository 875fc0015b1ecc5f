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

from rouge_score import rouge_scorer

from editharm.core.registry import Registry

Scores = tuple[list[float], float]


class ItemLike(Protocol):
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
    """1.0 when the normalised prediction equals any normalised reference."""
    refs = [references] if isinstance(references, str) else list(references)
    pred = squad_normalize(prediction)
    return float(any(pred == squad_normalize(ref) for ref in refs))


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> str:
    """The last number in `text` in canonical form ("1,200.0" -> "1200"), or "" if there is none."""
    matches = _NUMBER.findall(text)
    if not matches:
        return ""
    value = float(matches[-1].replace(",", ""))
    return str(int(value)) if value.is_integer() else repr(value)


def solved(prediction: str, reference: str) -> float:
    """1.0 when the last number of the prediction equals the reference number."""
    pred, ref = last_number(prediction), last_number(reference)
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


def _entity_key(entity: Entity) -> Entity:
    kind, surface = entity
    return kind, " ".join(surface.split()).casefold()


def entity_f1(predicted: Sequence[Sequence[Entity]], gold: Sequence[Sequence[Entity]]) -> Scores:
    """Entity-level F1 on (type, surface) pairs matched as multisets, surfaces compared with
    whitespace squeezed and case folded. Per example F1; aggregate micro F1 over all entities.
    F1 = 2TP / (2TP + FP + FN), and 1.0 where there is nothing to find and nothing was found."""
    per, totals = [], Counter()
    for pred, ref in zip(predicted, gold, strict=True):
        p, g = Counter(map(_entity_key, pred)), Counter(map(_entity_key, ref))
        tp = sum((p & g).values())
        fp, fn = sum(p.values()) - tp, sum(g.values()) - tp
        totals.update(tp=tp, fp=fp, fn=fn)
        per.append(_f1(tp, fp, fn))
    if not per:
        raise ValueError("cannot aggregate an empty list of scores")
    return per, _f1(totals["tp"], totals["fp"], totals["fn"])


def _f1(tp: int, fp: int, fn: int) -> float:
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def per_type_recall(predictions: Sequence[str], gold: Sequence[Sequence[str]], types: Sequence[str]) -> Scores:
    """The reference evaluation's NER score (compatibility only, not F1): per entity type,
    the share of gold surfaces found as substrings of the raw generation, where an example
    with no gold entity of its type counts as one found entity if the generation is empty;
    aggregate: the unweighted mean of the per-type recalls."""
    found, total, per = Counter(), Counter(), []
    for pred, surfaces, kind in zip(predictions, gold, types, strict=True):
        hits, n = (sum(s in pred for s in surfaces), len(surfaces)) if surfaces else (int(not pred), 1)
        found[kind] += hits
        total[kind] += n
        per.append(hits / n)
    if not per:
        raise ValueError("cannot aggregate an empty list of scores")
    return per, mean([found[k] / total[k] for k in total])


# --- registry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    name: str
    description: str
    compute: Callable[[Sequence[str], Sequence[ItemLike]], Scores]
    higher_is_better: bool = True


METRICS: Registry[Metric] = Registry("metric")


def _metric(name: str, description: str):
    def add(fn: Callable[[Sequence[str], Sequence[ItemLike]], Scores]):
        METRICS.add(name, Metric(name, description, fn))
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


@_metric("solve_rate", "share of problems whose last predicted number equals the answer")
def _solve_rate(predictions: Sequence[str], items: Sequence[ItemLike]) -> Scores:
    per = [solved(p, it.reference) for p, it in zip(predictions, items, strict=True)]
    return per, mean(per)


@_metric("rouge_mean", "mean of ROUGE-1, ROUGE-2 and ROUGE-L F (stemmed)")
def _rouge(predictions: Sequence[str], items: Sequence[ItemLike]) -> Scores:
    return rouge_mean(predictions, [it.reference for it in items])


def split_entities(text: str) -> list[str]:
    """Surfaces of an entity-list answer ("EU, Peter Blackburn"); "None" means no entity."""
    parts = (p.strip().rstrip(".").strip() for p in re.split(r"[,;]", text))
    return [p for p in parts if p and p.casefold() != "none"]


@_metric("entity_f1", "entity-level micro F1 on (type, surface) pairs")
def _entity_f1(predictions: Sequence[str], items: Sequence[ItemLike]) -> Scores:
    types = [it.fields["entity_type"] for it in items]
    predicted = [[(t, s) for s in split_entities(p)] for p, t in zip(predictions, types, strict=True)]
    gold = [[(t, s) for s in it.reference] for it, t in zip(items, types)]
    return entity_f1(predicted, gold)


@_metric("per_type_recall", "compatibility: the reference code's per-type NER recall (not F1)")
def _per_type_recall(predictions: Sequence[str], items: Sequence[ItemLike]) -> Scores:
    return per_type_recall(predictions, [it.reference for it in items], [it.fields["entity_type"] for it in items])

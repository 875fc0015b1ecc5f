"""Answer parsers for generate mode: raw generation -> the answer the metric compares.

Each parser is `parse(text, labels) -> str`, where `labels` are the task's answer labels (empty
for open-ended tasks). Parsers are idempotent, and a choice string (" positive") parses to its
label, so a task can score raw generations, parsed answers and chosen choices alike.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

from editharm.core.registry import Registry
from editharm.evaluation.metrics import first_number, split_entities

Parser = Callable[[str, Sequence[str]], str]

PARSERS: Registry[Parser] = Registry("parser")

# Labels a model tends to put before its answer ("Answer: Paris").
_ANSWER_LABEL = re.compile(r"^(?:(?:answer|a)\s*:\s*)+", re.IGNORECASE)


def _first_label(text: str, labels: Sequence[str], flags: int) -> str:
    if not labels:
        return ""
    alternatives = "|".join(re.escape(lab) for lab in sorted(labels, key=len, reverse=True))
    match = re.search(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])", text, flags)
    if match is None:
        return ""
    return next(lab for lab in labels if lab.casefold() == match.group(0).casefold())


@PARSERS.register("label")
def label(text: str, labels: Sequence[str]) -> str:
    """The first task label that occurs as a whole word, case-insensitive ("Positive." -> "positive")."""
    return _first_label(text, labels, re.IGNORECASE)


@PARSERS.register("letter")
def letter(text: str, labels: Sequence[str]) -> str:
    """The first label occurring as a standalone token, case-sensitive, so that option letters
    are not confused with the article "a" ("(B) because" -> "B")."""
    return _first_label(text, labels, 0)


@PARSERS.register("number")
def number(text: str, labels: Sequence[str]) -> str:
    """The first number in the generation, canonical ("$1,200." -> "1200", "3-4" -> "3"): the
    prompt ends "the answer (arabic numerals) is:", so the answer comes first."""
    return first_number(text)


@PARSERS.register("first_line")
def first_line(text: str, labels: Sequence[str]) -> str:
    """The first non-empty line, without an "Answer:" label in front."""
    for line in text.splitlines():
        if line.strip():
            return _ANSWER_LABEL.sub("", line.strip()).strip()
    return ""


@PARSERS.register("entity_list")
def entity_list(text: str, labels: Sequence[str]) -> str:
    """The first non-empty line read as a comma- or semicolon-separated entity list, written back
    as "A, B" ("" when it names none)."""
    return ", ".join(split_entities(first_line(text, labels)))


@PARSERS.register("raw")
def raw(text: str, labels: Sequence[str]) -> str:
    """The generation unchanged (for compatibility metrics that read the raw text)."""
    return text

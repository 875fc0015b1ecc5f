"""Editing metrics of an edited model. They follow EasyEdit's teacher-forced token accuracy: the model reads
`prompt + " " + answer`, and at each answer token we take its argmax prediction.
- reliability: share of `target_new` tokens predicted after `prompt`;
- generalization: the same after `rephrase_prompt`;
- locality: share of the `locality_answer` positions whose argmax token is unchanged from
  the unedited model (`base_argmax`), whatever the answer's own tokens are;
- portability: share of `portability_answer` tokens predicted after `portability_prompt`;
- fluency: ROME's weighted bi/tri-gram entropy of a greedy continuation of the edit prompt.
A record without the prompt for a metric gets NaN there; summaries average over the rest.
Summaries are over the latest edit call's records (the usual editing metrics) and, with an
"_all" suffix, over every edit in the model so far (retention of earlier edits); in a sequence mixing
several datasets also per dataset ("zsre:reliability_all", `dataset_means`).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import pandas as pd

from editharm.core.records import EditRecord
from editharm.evaluation.metrics import ngram_entropy
from editharm.model.generation import greedy_generate, teacher_forced
from editharm.model.tokens import spaced
from editharm.results.uncertainty import Bootstrap, mean_combine, present_stats

EDIT_METRICS = ("reliability", "generalization", "locality", "portability")
# Measured on the latest edits only: a generation per prompt is the expensive part.
FLUENCY = "fluency"


def base_argmax(model, tok, records: Sequence[EditRecord], *, batch_size: int = 8) -> list[list[int]]:
    """The unedited model's argmax tokens at each record's locality-answer positions
    (an empty list for a record without a locality prompt)."""
    rows = [i for i, r in enumerate(records) if r.locality_prompt]
    forced = teacher_forced(
        model,
        tok,
        [records[i].locality_prompt for i in rows],
        [spaced(records[i].locality_answer) for i in rows],
        batch_size=batch_size,
    )
    result: list[list[int]] = [[] for _ in records]
    for i, f in zip(rows, forced):
        result[i] = f.argmax_ids
    return result


def edit_metrics(
    model,
    tok,
    records: Sequence[EditRecord],
    *,
    latest: set[str] | None = None,
    base_predictions: list[list[int]] | None = None,
    batch_size: int = 8,
    fluency_tokens: int = 0,
    bootstrap: Bootstrap | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Per-record metrics (columns id, latest, the EDIT_METRICS, fluency) and their means.

    `latest` holds the ids of the last edit call's records (default: all records); the summary
    has each metric over those and `<metric>_all` over every record, plus `fluency` over the
    latest records when `fluency_tokens` > 0 (greedy tokens generated per prompt), and "n".
    `base_predictions` is `base_argmax` of the unedited model on the same records; without
    it locality is NaN per record and None in the summary (it cannot be measured).
    With `bootstrap`, the summary's "bootstrap" holds each metric on every resample of its
    records (the latest ones, or all for `_all`); records without a value are left out of a mean.
    """
    latest = {r.id for r in records} if latest is None else set(latest)
    unknown = latest - {r.id for r in records}
    if unknown:
        raise ValueError(f"latest edit id(s) {sorted(unknown)} are not among the records")
    if base_predictions is not None and len(base_predictions) != len(records):
        raise ValueError(f"base_predictions has {len(base_predictions)} entries for {len(records)} records")
    columns: dict[str, list[float]] = {
        "reliability": _accuracy(model, tok, [(r.prompt, r.target_new) for r in records], batch_size),
        "generalization": _accuracy(model, tok, [(r.rephrase_prompt, r.target_new) for r in records], batch_size),
        "portability": _accuracy(
            model, tok, [(r.portability_prompt or "", r.portability_answer or "") for r in records], batch_size
        ),
    }
    if base_predictions is None:
        columns["locality"] = [math.nan] * len(records)
    else:
        after = base_argmax(model, tok, records, batch_size=batch_size)
        columns["locality"] = [_locality(r, b, a) for r, b, a in zip(records, base_predictions, after)]
    is_latest = [r.id in latest for r in records]
    columns[FLUENCY] = [math.nan] * len(records)
    generations = [""] * len(records)
    if fluency_tokens > 0:
        rows = [i for i, flag in enumerate(is_latest) if flag]
        texts = greedy_generate(model, tok, [records[i].prompt for i in rows], max_new_tokens=fluency_tokens,
                                batch_size=batch_size, progress=False)
        for i, text in zip(rows, texts):
            columns[FLUENCY][i] = ngram_entropy(f"{records[i].prompt} {text}")
            generations[i] = text
    frame = pd.DataFrame({"id": [r.id for r in records], "latest": is_latest,
                          **{m: columns[m] for m in (*EDIT_METRICS, FLUENCY)}, "generation": generations})
    summary: dict[str, Any] = {}
    for m in EDIT_METRICS:
        summary[m] = _mean([v for v, flag in zip(columns[m], is_latest) if flag])
        summary[f"{m}_all"] = _mean(columns[m])
    if fluency_tokens > 0:
        summary[FLUENCY] = _mean(columns[FLUENCY])
    if bootstrap is not None:
        summary["bootstrap"] = _replicates(bootstrap, records, is_latest, columns, summary)
    summary["n"] = len(records)
    return frame, summary


def dataset_means(frame: pd.DataFrame, dataset_of: dict[str, str]) -> dict[str, float]:
    """Of a sequence mixing several datasets: each metric over every edit so far from one dataset, as
    "<dataset>:<metric>_all" (`frame` is `edit_metrics`'; `dataset_of` maps record ids to datasets, empty
    for a one-dataset sequence). Means only: their intervals would need a bootstrap per dataset."""
    if not dataset_of:
        return {}
    means = {}
    for name, rows in frame.groupby(frame["id"].map(dataset_of), sort=True):
        for metric in EDIT_METRICS:
            value = _mean(list(rows[metric]))
            if value is not None:
                means[f"{name}:{metric}_all"] = value
    return means


def _replicates(bootstrap: Bootstrap, records: Sequence[EditRecord], is_latest: list[bool],
                columns: dict[str, list[float]], summary: dict[str, Any]) -> dict[str, Any]:
    all_ids = [r.id for r in records]
    latest = [i for i, flag in enumerate(is_latest) if flag]
    reps = {}
    for name, value in summary.items():
        if value is None:
            continue
        metric, _, scope = name.partition("_")
        rows = range(len(records)) if scope == "all" else latest
        values = [columns[metric][i] for i in rows]
        reps[name] = bootstrap.replicates(f"editing/{scope or 'latest'}", [all_ids[i] for i in rows],
                                          present_stats(values), mean_combine)
    return bootstrap.block("editing", all_ids, reps)


def _accuracy(model, tok, pairs: list[tuple[str, str]], batch_size: int) -> list[float]:
    """Teacher-forced token accuracy per (prompt, answer); NaN where either is empty."""
    rows = [i for i, (p, a) in enumerate(pairs) if p and a]
    forced = teacher_forced(
        model, tok, [pairs[i][0] for i in rows], [spaced(pairs[i][1]) for i in rows], batch_size=batch_size
    )
    result = [math.nan] * len(pairs)
    for i, f in zip(rows, forced):
        if f.target_ids:
            result[i] = sum(a == t for a, t in zip(f.argmax_ids, f.target_ids)) / len(f.target_ids)
    return result


def _locality(record: EditRecord, before: list[int], after: list[int]) -> float:
    if not record.locality_prompt or not after:
        return math.nan
    if len(before) != len(after):
        raise ValueError(
            f"edit record {record.id!r}: base_predictions has {len(before)} locality tokens, "
            f"this tokenizer gives {len(after)}; were they computed with another tokenizer?"
        )
    return sum(a == b for a, b in zip(after, before)) / len(after)


def _mean(values: list[float]) -> float | None:
    present = [v for v in values if not math.isnan(v)]
    return sum(present) / len(present) if present else None

"""General-ability tasks on a (possibly edited) model: prompts rendered, outputs decoded or
choices scored (through the prediction cache), parsed and scored by the task's metric."""
from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Sequence

import pandas as pd

from editharm.evaluation.metrics import METRICS
from editharm.evaluation.predcache import CheckpointCache, item_key
from editharm.model.generation import choice_scores, greedy_generate
from editharm.results.uncertainty import Bootstrap

log = logging.getLogger(__name__)

def evaluate_task(
    model, tok, task, items: Sequence[Any], *, batch_size: int = 8, cache: CheckpointCache | None = None,
    bootstrap: Bootstrap | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Run `task` on `items`: one row per item (id, prompt, prediction, reference, score,
    raw) and the aggregate {"task", "metric", "value", "n", "scoring"}, plus "bootstrap" (the
    metric on each resample of the items, `Bootstrap.block`) when `bootstrap` is given.

    `raw` is what the model produced before it became a prediction: the generated text in
    generate mode, the JSON map choice -> summed log-prob in choice mode. With a `cache` (the
    prediction cache bound to the checkpoint the model holds), items decoded before are read
    from it and only the others reach the model.
    """
    if not items:
        raise ValueError(f"task {task.name!r}: no items to evaluate")
    prompts = [task.render(item) for item in items]
    choices = [_item_choices(task, item) for item in items] if task.scoring == "choice" else [None] * len(items)
    keys = [item_key(p, c) for p, c in zip(prompts, choices)]
    # A row's output depends, by float rounding, on the rows it is batched with (padding, batch
    # width), so outputs are reused only for the same items in the same batches: a cached output is
    # then bit for bit what decoding again gives, whatever ran before.
    decoding = {**decoding_key(task), "batch_size": batch_size, "items": batch_key(keys)}
    known = cache.get(task.name, decoding) if cache is not None else {}
    todo = [i for i, k in enumerate(keys) if k not in known]
    fresh = _raw_outputs(model, tok, task, [prompts[i] for i in todo], [choices[i] for i in todo], batch_size)
    new = {keys[i]: text for i, text in zip(todo, fresh)}
    if cache is not None:
        cache.put(task.name, decoding, new)
    if len(todo) < len(items):
        log.info("%s: %d of %d items read from the prediction cache", task.name, len(items) - len(todo), len(items))
    raw = [new[k] if k in new else known[k] for k in keys]
    predictions = [_prediction(task, text, cs) for text, cs in zip(raw, choices)]
    per_item, value = task.score(predictions, list(items))
    frame = pd.DataFrame(
        {
            "id": [item.id for item in items],
            "prompt": prompts,
            "prediction": predictions,
            "reference": [_as_text(item.reference) for item in items],
            "score": [float(s) for s in per_item],
            "raw": raw,
        }
    )
    metrics = {
        "task": task.name, "metric": task.metric, "value": float(value), "n": len(items), "scoring": task.scoring
    }
    if bootstrap is not None:
        metric = METRICS.get(task.metric)
        reps = metric.replicates(bootstrap, task.name, [task.parse(p) for p in predictions], items, per_item)
        metrics["bootstrap"] = bootstrap.block(task.name, [item.id for item in items], {task.metric: reps})
    log.info("%s: %s = %.4f over %d items", task.name, task.metric, value, len(items))
    return frame, metrics


def decoding_key(task) -> dict[str, Any]:
    """What, besides the prompt and the weights, decides a task's raw output (the cache key's task part)."""
    if task.scoring == "generate":
        # stop_rule names how stop strings apply (greedy_generate: only after the answer text
        # starts); outputs cached under an earlier rule are not reused.
        return {
            "scoring": "generate", "max_new_tokens": task.max_new_tokens, "stop": list(task.stop),
            "stop_rule": "after_text",
        }
    if task.scoring == "choice":
        return {"scoring": "choice"}  # the choices are part of each item's key
    raise ValueError(f"task {task.name!r}: unknown scoring {task.scoring!r}; allowed: generate, choice")


def batch_key(keys: Sequence[str]) -> str:
    """The item set a job decodes, in order (with the batch size, it fixes every batch)."""
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:20]


def _item_choices(task, item) -> list[str]:
    cs = task.choices_for(item)
    if not cs:
        raise ValueError(f"task {task.name!r}: item {item.id!r} has no choices")
    return cs


def _raw_outputs(model, tok, task, prompts: list[str], choices: list, batch_size: int) -> list[str]:
    if not prompts:
        return []
    if task.scoring == "generate":
        return greedy_generate(
            model, tok, prompts, max_new_tokens=task.max_new_tokens, batch_size=batch_size, stop=task.stop
        )
    scores = choice_scores(model, tok, prompts, choices, batch_size=batch_size, progress=True)
    return [json.dumps(dict(zip(cs, ss))) for cs, ss in zip(choices, scores)]


def _prediction(task, raw: str, choices: list[str] | None) -> str:
    if task.scoring == "generate":
        return task.parse(raw)
    scores = json.loads(raw)
    # max() keeps the first of equal scores: ties go to the earlier choice, deterministically.
    return max(choices, key=lambda c: scores[c])


def _as_text(reference: Any) -> str:
    return reference if isinstance(reference, str) else json.dumps(reference)

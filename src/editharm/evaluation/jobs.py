"""The evaluation rules' jobs: a general task, the editing metrics, held-out perplexity or
lm-evaluation-harness probes on every checkpoint of a configuration, on one loaded base model."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

from editharm.core.fileio import write_parquet
from editharm.data.sequences import read_sequence
from editharm.evaluation import checkpoints
from editharm.evaluation.edits import base_argmax, dataset_means, edit_metrics
from editharm.evaluation.general import evaluate_task as _evaluate_task
from editharm.evaluation.perplexity import read_heldout, score_heldout
from editharm.evaluation.perplexity import replicates as heldout_replicates
from editharm.evaluation.predcache import PredictionCache, delta_key, model_key
from editharm.evaluation.tasks import TASKS
from editharm.model.loading import load_model, setup_torch
from editharm.results.records import EDITING_TASK, PERPLEXITY_TASK, write_metrics
from editharm.results.uncertainty import Bootstrap

log = logging.getLogger("editharm")


def _outputs(deltas: Sequence[Path], out_predictions: Sequence[Path], out_metrics: Sequence[Path]) -> None:
    """One predictions and one metrics file per checkpoint (the base model alone when no ΔW is given)."""
    n = len(deltas) or 1
    for flag, paths in (("--out-predictions", out_predictions), ("--out-metrics", out_metrics)):
        if len(paths) != n:
            raise ValueError(f"{flag} names {len(paths)} file(s) for {n} checkpoint(s); give one per --delta")
    checkpoints.check_files(deltas)


def evaluate_task(model: Path, task: str, data: Path, options: dict[str, Any], labels: dict[str, Any],
                  cache: Optional[Path], delta: list[Path], out_predictions: list[Path], out_metrics: list[Path],
                  device: str, dtype: str, threads: Optional[int], bootstrap: Optional[dict] = None) -> None:
    """One task on every given checkpoint."""
    _outputs(delta, out_predictions, out_metrics)
    resampler = Bootstrap.from_options(bootstrap)
    spec = TASKS.get(task).with_options(**{k: v for k, v in options.items() if k in ("scoring", "max_new_tokens")})
    items = spec.load_items(data, limit=options.get("limit"))
    torch_device = setup_torch(device, threads)
    lm, tok = load_model(model, torch_device, dtype)
    predictions = PredictionCache(cache, model_key(model, dtype, torch_device)) if cache else None
    for ckpt, preds_path, metrics_path in zip(checkpoints.on_model(lm, checkpoints.loaded(delta)),
                                              out_predictions, out_metrics):
        df, metrics = _evaluate_task(lm, tok, spec, items, batch_size=options.get("batch_size", 8),
                                     cache=predictions.at(delta_key(ckpt.path)) if predictions else None,
                                     bootstrap=resampler)
        write_parquet(preds_path, df)
        write_metrics(metrics_path, {**ckpt.labels(labels), "task": spec.name,
                                     "metrics": {metrics["metric"]: metrics["value"]},
                                     "n": metrics["n"], "scoring": metrics["scoring"],
                                     "bootstrap": metrics.get("bootstrap")})


def evaluate_edits(model: Path, sequence: Path, labels: dict[str, Any], fluency_tokens: int, delta: list[Path],
                   out_predictions: list[Path], out_metrics: list[Path],
                   device: str, dtype: str, threads: Optional[int], bootstrap: Optional[dict] = None) -> None:
    """Editing metrics of every given checkpoint of one sequence."""
    if not delta:
        raise ValueError("evaluate-edits needs --delta: editing metrics belong to an edited checkpoint")
    _outputs(delta, out_predictions, out_metrics)
    resampler = Bootstrap.from_options(bootstrap)
    seq = read_sequence(sequence)
    by_id = {r.id: r for r in seq.records}
    dataset_of = dict(zip(by_id, seq.datasets))  # empty unless the sequence mixes datasets
    ckpts = [checkpoints.load(path) for path in delta]
    for ckpt in ckpts:
        missing = sorted(set(ckpt.meta["record_ids"]) - set(by_id))
        if missing:
            raise ValueError(f"{ckpt.path} edited record(s) {missing[:5]} that {sequence} does not hold")
    lm, tok = load_model(model, setup_torch(device, threads), dtype)
    # The unedited model's locality answers, once for every record any checkpoint edited.
    seen = list(dict.fromkeys(i for ckpt in ckpts for i in ckpt.meta["record_ids"]))
    base = dict(zip(seen, base_argmax(lm, tok, [by_id[i] for i in seen])))
    for ckpt, preds_path, metrics_path in zip(checkpoints.on_model(lm, ckpts), out_predictions, out_metrics):
        records = [by_id[i] for i in ckpt.meta["record_ids"]]
        df, metrics = edit_metrics(lm, tok, records, latest=set(ckpt.meta["latest_ids"]),
                                   base_predictions=[base[r.id] for r in records], fluency_tokens=fluency_tokens,
                                   bootstrap=resampler)
        if dataset_of:
            df.insert(1, "dataset", df["id"].map(dataset_of))
        write_parquet(preds_path, df)
        # None: nothing to average
        scores = {k: v for k, v in metrics.items() if k not in ("n", "bootstrap") and v is not None}
        scores.update(dataset_means(df, dataset_of))
        write_metrics(metrics_path, {**ckpt.labels(labels), "task": EDITING_TASK, "metrics": scores,
                                     "n": len(records), "scoring": "teacher_forced",
                                     "bootstrap": metrics.get("bootstrap")})
        log.info("editing metrics of %d edits at step %s: %s", len(records), ckpt.meta.get("step"),
                 json.dumps(metrics, sort_keys=True))


def lm_eval(model: Path, delta: list[Path], tasks: list[str], limit: Optional[int], num_fewshot: Optional[int],
            batch_size: int, include_path: Optional[str], seed: int, labels: dict[str, Any], out_metrics: Path,
            out_samples: Path, device: str, dtype: str, threads: Optional[int]) -> None:
    """lm-evaluation-harness tasks on every given checkpoint: one metric file holding a record per
    (checkpoint, task), and one per-item table."""
    import pandas as pd

    from editharm.evaluation import lmeval

    # Everything that can be refused is refused before the model loads.
    options = lmeval.LmEvalOptions(tasks=tuple(tasks), limit=limit, num_fewshot=num_fewshot,
                                   batch_size=batch_size, include_path=include_path, seed=seed)
    checkpoints.check_files(delta)
    manager = lmeval.task_manager(options)
    loaded_tasks = lmeval.load_tasks(options, manager)
    lm, tok = load_model(model, setup_torch(device, threads), dtype)
    records, samples = [], []
    for ckpt in checkpoints.on_model(lm, checkpoints.loaded(delta)):
        ckpt_labels = {"step": 0, **ckpt.labels(labels)}
        scores, items = lmeval.evaluate(lm, tok, options, manager, loaded_tasks)
        records += [s.record(ckpt_labels) for s in scores]
        items.insert(0, "step", ckpt_labels["step"])
        samples.append(items)
        log.info("lm-eval on %s: %s", ckpt.path or "the base model",
                 ", ".join(f"{s.task} {s.primary}={s.metrics[s.primary]:.4f}" for s in scores))
    write_parquet(out_samples, pd.concat(samples, ignore_index=True))
    write_metrics(out_metrics, records)


def perplexity(model: Path, texts: Path, max_tokens: int, batch_size: int, labels: dict[str, Any], delta: list[Path],
               out_predictions: list[Path], out_metrics: list[Path], device: str, dtype: str,
               threads: Optional[int], bootstrap: Optional[dict] = None) -> None:
    """Held-out perplexity of every given checkpoint: per text its summed NLL and token count, and
    one metric record (perplexity, and NLL per token) per checkpoint."""
    _outputs(delta, out_predictions, out_metrics)
    resampler = Bootstrap.from_options(bootstrap)
    ids, heldout = read_heldout(texts)
    lm, tok = load_model(model, setup_torch(device, threads), dtype)
    for ckpt, preds_path, metrics_path in zip(checkpoints.on_model(lm, checkpoints.loaded(delta)),
                                              out_predictions, out_metrics):
        df, metrics = score_heldout(lm, tok, ids, heldout, batch_size=batch_size, max_tokens=max_tokens)
        write_parquet(preds_path, df)
        boot = None if resampler is None else resampler.block(
            PERPLEXITY_TASK, ids, heldout_replicates(resampler, df))
        write_metrics(metrics_path, {**ckpt.labels(labels), "task": PERPLEXITY_TASK, "metrics": metrics,
                                     "primary": "perplexity", "n": len(ids), "scoring": "loglikelihood",
                                     "bootstrap": boot})

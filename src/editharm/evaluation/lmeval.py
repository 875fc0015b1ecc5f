"""Extra general-ability probes: lm-evaluation-harness tasks, by name, on an already-loaded model.

The caller loads the model once and applies a checkpoint's ΔW; `evaluate` runs the tasks through
lm-eval's Python API on that model object, so every checkpoint of a run is scored without
reloading. lm-eval is the optional extra `lmeval`, imported only here and only when used; every
check that can fail (the extra installed, the task names known, the options valid) runs before a
model is loaded.

lm-eval's own tasks fetch their data from the Hugging Face Hub through `datasets`: a real run needs
the Hub, or a cache prepared beforehand and HF_DATASETS_OFFLINE=1. Task YAMLs of one's own
(`include_path`) can read local files: `dataset_path: json` with `dataset_kwargs: {data_files: ...}`.
"""
from __future__ import annotations

import difflib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

# Metric files name lm-eval tasks with this prefix, so they never clash with the built-in tasks.
from editharm.results.records import LMEVAL_PREFIX as TASK_PREFIX

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'editharm[lmeval]'"
# KnowEdit's general tasks under their lm-eval names (xsum is a unitxt task: it also needs `unitxt`).
KNOWEDIT_TASKS = {
    "csqa": "commonsense_qa", "piqa": "piqa", "triviaqa": "triviaqa", "xsum": "xsum", "mmlu": "mmlu",
    "agieval": "agieval",
}
# How each lm-eval output type turns the model's outputs into predictions (MetricRecord.scoring).
SCORINGS = {
    "multiple_choice": "choice", "generate_until": "generate",
    "loglikelihood": "loglikelihood", "loglikelihood_rolling": "loglikelihood",
}
# A group whose tasks score in different ways (agieval has both choice and generation tasks).
MIXED = "mixed"
# Bootstrap resamples for the stderr of metrics without a closed form (BLEU, ROUGE, F1); lm-eval's
# default of 100,000 costs minutes per metric, and 1,000 already gives the stderr to two digits.
BOOTSTRAP_ITERS = 1000
_STDERR = "_stderr"


class LmEvalNotInstalled(ImportError):
    """The optional extra is missing; the message says how to install it."""


class UnknownLmEvalTask(ValueError):
    """A task name lm-eval does not know; the message lists close matches."""


def require_lm_eval():
    """The lm_eval module, or LmEvalNotInstalled naming the extra to install."""
    try:
        import lm_eval
    except ImportError as exc:
        raise LmEvalNotInstalled(
            f"lm-evaluation-harness is not installed ({exc}); install the optional extra: {INSTALL_HINT}"
        ) from None
    return lm_eval


@dataclass(frozen=True)
class LmEvalOptions:
    """What to run: lm-eval task, group or tag names, and how (None keeps lm-eval's own default)."""

    tasks: tuple[str, ...]
    limit: int | None = None  # items per task (for quick runs; lm-eval reports then are not comparable)
    num_fewshot: int | None = None  # None: each task's own default
    batch_size: int = 8
    include_path: str | None = None  # a folder of task YAMLs of one's own
    seed: int = 0  # python, numpy, torch and few-shot sampling seeds

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str) or not self.tasks:
            raise ValueError(f"lm-eval tasks: expected a non-empty list of task names, got {self.tasks!r}")
        bad = [t for t in self.tasks if not isinstance(t, str) or not t.strip() or "," in t]
        if bad:
            raise ValueError(f"lm-eval tasks: {bad!r} are not task names (non-empty, no commas)")
        repeated = sorted({t for t in self.tasks if self.tasks.count(t) > 1})
        if repeated:
            raise ValueError(f"lm-eval tasks: {repeated} are listed more than once")
        for key, value, least in (("limit", self.limit, 1), ("num_fewshot", self.num_fewshot, 0)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ValueError(f"lm-eval {key}: expected null or an integer >= {least}, got {value!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"lm-eval batch_size: expected an integer >= 1, got {self.batch_size!r}")
        if self.include_path is not None and not Path(self.include_path).is_dir():
            raise ValueError(f"lm-eval include_path: {self.include_path!r} is not a folder of task YAMLs")


def task_manager(options: LmEvalOptions):
    """lm-eval's TaskManager over its own tasks and the options' include_path (indexing takes seconds)."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=options.include_path)


def check_tasks(names: Sequence[str], manager) -> None:
    """Raise UnknownLmEvalTask for names that are not lm-eval tasks, groups or tags, with close matches."""
    known = manager.all_tasks
    unknown = [name for name in names if name not in set(known)]
    if not unknown:
        return
    lines = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        if name.lower() in KNOWEDIT_TASKS:
            close.insert(0, KNOWEDIT_TASKS[name.lower()])
        hint = f"; close matches: {', '.join(dict.fromkeys(close))}" if close else ""
        lines.append(f"{name!r}{hint}")
    raise UnknownLmEvalTask(
        f"unknown lm-eval task(s): {'; '.join(lines)} (`lm-eval ls tasks` lists all {len(known)}; task YAMLs "
        "of one's own need include_path)"
    )


def load_tasks(options: LmEvalOptions, manager) -> list:
    """lm-eval's Task and Group objects for the options' names, with their data loaded (downloaded
    when not cached): done once, before the model loads, so a missing dataset fails early and every
    checkpoint reuses the same items."""
    check_tasks(options.tasks, manager)
    loaded = []
    for name in options.tasks:
        built = manager.load([name])
        groups = built.get("groups", {})
        # a group carries its tasks; a task or a tag (several tasks) comes as tasks
        loaded += [groups[name]] if name in groups else list(built["tasks"].values())
    return loaded


@dataclass(frozen=True)
class TaskScore:
    """One requested task's (or group's) metrics as lm-eval reports them."""

    task: str  # lm-eval's name
    # "<metric>" under lm-eval's default filter, "<metric>,<filter>" under another; "<metric>_stderr…"
    # beside each metric whose standard error lm-eval gives.
    metrics: dict[str, float]
    primary: str  # the task's first metric
    n: int  # items scored (summed over a group's tasks)
    scoring: str  # a value of SCORINGS, or MIXED

    def record(self, labels: dict[str, Any]) -> dict[str, Any]:
        """A metric record (editharm.results.records.MetricRecord fields) for this task at one checkpoint."""
        return {**labels, "task": TASK_PREFIX + self.task, "metrics": dict(self.metrics), "primary": self.primary,
                "n": self.n, "scoring": self.scoring}


def evaluate(model, tok, options: LmEvalOptions, manager, tasks: list) -> tuple[list[TaskScore], pd.DataFrame]:
    """Run `tasks` (from `load_tasks`) on `model` as it is now (its ΔW already applied).

    Returns one TaskScore per requested name (a tag expands to its tasks) and one row per scored
    item: task, doc_id, doc, arguments (the requests sent to the model), target, response (after
    lm-eval's filters), filter, scores (the item's metrics); JSON text in the nested columns.
    """
    lm_eval = require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=options.batch_size)
    out = lm_eval.simple_evaluate(
        model=lm, tasks=list(tasks), num_fewshot=options.num_fewshot, limit=options.limit,
        task_manager=manager, log_samples=True, bootstrap_iters=BOOTSTRAP_ITERS, random_seed=options.seed,
        numpy_random_seed=options.seed, torch_random_seed=options.seed, fewshot_random_seed=options.seed,
    )
    scores = _scores(out)
    for s in scores:
        log.info("lm-eval %s: %s = %.4f over %d items", s.task, s.primary, s.metrics[s.primary], s.n)
    return scores, _samples(out)


def _scores(out: dict) -> list[TaskScore]:
    children = out.get("group_subtasks", {})
    nested = {c for members in children.values() for c in members}
    scores = []
    for name, result in out["results"].items():
        if name in nested:  # reported inside its group
            continue
        leaves = _leaves(name, children)
        metrics = _metrics(name, result)
        kinds = {SCORINGS.get(out["configs"][leaf]["output_type"], MIXED) for leaf in leaves}
        scores.append(TaskScore(
            task=name, metrics=metrics, primary=next(m for m in metrics if _STDERR not in m),
            n=sum(out["n-samples"][leaf]["effective"] for leaf in leaves),
            scoring=kinds.pop() if len(kinds) == 1 else MIXED,
        ))
    return scores


def _leaves(name: str, children: dict[str, list[str]]) -> list[str]:
    if name not in children:
        return [name]
    return [leaf for child in children[name] for leaf in _leaves(child, children)]


def _metrics(task: str, result: dict[str, Any]) -> dict[str, float]:
    """{metric name: value} from lm-eval's "<metric>,<filter>" keys; a stderr lm-eval could not
    compute ("N/A", e.g. over one item) is left out."""
    metrics: dict[str, float] = {}
    for key, value in result.items():
        if "," not in key or isinstance(value, (dict, str)) or value is None:
            continue
        metric, filt = key.split(",", 1)
        if not math.isfinite(float(value)):
            if _STDERR in metric:
                continue
            raise ValueError(f"lm-eval task {task!r}: metric {key!r} is {value!r}, not a finite number")
        metrics[metric if filt == "none" else key] = float(value)
    if not any(_STDERR not in m for m in metrics):
        raise ValueError(f"lm-eval task {task!r} reported no metric: {sorted(result)}")
    return metrics


def _samples(out: dict) -> pd.DataFrame:
    def text(value: Any) -> str:
        return json.dumps(value, sort_keys=True, default=str)

    rows = [
        {
            "task": task, "doc_id": int(s["doc_id"]), "doc": text(s["doc"]), "arguments": text(s["arguments"]),
            "target": text(s["target"]), "response": text(s["filtered_resps"]), "filter": s["filter"],
            "scores": text({m: s[m] for m in s["metrics"] if m in s}),
        }
        for task, samples in sorted(out.get("samples", {}).items())
        for s in samples
    ]
    columns = ["task", "doc_id", "doc", "arguments", "target", "response", "filter", "scores"]
    return pd.DataFrame(rows, columns=columns)

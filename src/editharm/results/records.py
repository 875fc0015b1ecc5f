"""Metric files: the one record schema every evaluation job writes, its only writer, and its readers.

Every evaluation job writes one JSON file per (model, method, reg, setting, seq, step, task),
`task` being a general-ability task name or "editing" for the editing metrics; a job that scores
several checkpoints or tasks at once (the lm-eval probes) writes a list of such records. The schema
is `MetricRecord`; `write_metrics` is the only sanctioned writer, so a file that `aggregate` rejects
points at a bug in whoever bypassed it.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Optional

from editharm.core.fileio import read_json, write_json

log = logging.getLogger(__name__)

EDITING_TASK = "editing"
LMEVAL_PREFIX = "lmeval:"  # task names of lm-evaluation-harness probes (editharm.evaluation.lmeval)
# Held-out perplexity (editharm.evaluation.perplexity): a probe of kind "probe", outside the general mean.
PERPLEXITY_TASK = "perplexity"
# The unedited model is evaluated once per task under this method name (reg "none", step 0) and
# shared as step 0 of every edited run.
BASE_METHOD = "base"
# The latest edit call's records; "_all" variants cover every edit in the model (retention).
EDITING_METRICS = (
    "reliability", "generalization", "locality", "portability", "fluency",
    "reliability_all", "generalization_all", "locality_all", "portability_all",
)
# "loglikelihood" and "mixed" come from lm-eval probes: tasks scored by the log-likelihood of a
# text, and groups whose tasks score in different ways.
SCORINGS = ("generate", "choice", "teacher_forced", "loglikelihood", "mixed")


OPTIONAL_FIELDS = ("primary", "edits", "bootstrap")
BOOTSTRAP_KEYS = ("resamples", "seed", "key", "items", "replicates")


class MetricFileError(ValueError):
    """A metric file that does not follow `MetricRecord`; the message names the file and key."""


@dataclass(frozen=True)
class MetricRecord:
    model: str
    method: str
    reg: str  # "none" when no regularizer wraps the method
    setting: str
    seq: int
    step: int  # number of edits applied; 0 is the unedited model
    task: str  # a task name, or EDITING_TASK
    metrics: dict[str, float]
    n: int  # items evaluated
    scoring: str  # one of SCORINGS; "teacher_forced" exactly when task is EDITING_TASK
    demo: bool  # computed on demo data
    # The headline metric of a general task (e.g. "rouge_mean" among rouge1/2/L); may be left out
    # when `metrics` has a single entry.
    primary: Optional[str] = None
    # Edits in the model at this checkpoint (editharm.editing.settings.Setting.edits_at); defaults to step.
    edits: Optional[int] = None
    # Bootstrap replicates of the metrics over items (editharm.results.uncertainty.Bootstrap.block):
    # {"resamples", "seed", "key", "items" (digest of the item ids), "replicates": {metric: [value | null]}}.
    bootstrap: Optional[dict] = None

    @property
    def kind(self) -> str:
        if self.task == EDITING_TASK:
            return "editing"
        return "probe" if self.task == PERPLEXITY_TASK else "general"

    @property
    def config(self) -> str:
        return self.method if self.reg == "none" else f"{self.method}+{self.reg}"

    @property
    def primary_metric(self) -> Optional[str]:
        if self.primary is None and self.kind == "general":
            (only,) = self.metrics  # __post_init__ guarantees a single entry here
            return only
        return self.primary

    def __post_init__(self) -> None:
        if self.method == BASE_METHOD and (self.step != 0 or self.reg != "none"):
            raise ValueError(f"key 'method': {BASE_METHOD!r} is the unedited model, so step must be 0 and reg 'none'")
        if (self.task == EDITING_TASK) != (self.scoring == "teacher_forced"):
            raise ValueError(
                f"key 'scoring': {self.scoring!r} does not fit task {self.task!r} "
                f"(editing metrics are 'teacher_forced', general tasks 'generate' or 'choice')"
            )
        if self.primary is not None and self.primary not in self.metrics:
            raise ValueError(f"key 'primary': {self.primary!r} is not one of metrics {sorted(self.metrics)}")
        if self.bootstrap is not None:
            unknown = sorted(set(self.bootstrap["replicates"]) - set(self.metrics))
            if unknown:
                raise ValueError(f"key 'bootstrap.replicates': {unknown} are not among metrics {sorted(self.metrics)}")
        if self.primary is None and self.kind == "general" and len(self.metrics) != 1:
            raise ValueError(
                f"key 'primary': required when a general task has several metrics {sorted(self.metrics)}"
            )

    @classmethod
    def from_dict(cls, d: Any, source: str = "<record>") -> "MetricRecord":
        """Validate `d` field by field; errors name `source` and the offending key."""
        if not isinstance(d, Mapping):
            raise MetricFileError(f"{source}: expected a JSON object, got {type(d).__name__}")
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(allowed))
        if unknown:
            raise MetricFileError(f"{source}: unknown key(s) {unknown}; allowed: {allowed}")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in d:
                if f.name in OPTIONAL_FIELDS:
                    continue
                raise MetricFileError(f"{source}: missing key {f.name!r}")
            values[f.name] = _check(f.name, d[f.name], source)
        try:
            return cls(**values)
        except ValueError as e:
            raise MetricFileError(f"{source}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check(key: str, value: Any, source: str) -> Any:
    def bad(expected: str) -> MetricFileError:
        return MetricFileError(f"{source}: key {key!r}: expected {expected}, got {value!r}")

    if key in ("model", "method", "reg", "setting", "task", "primary"):
        if key == "primary" and value is None:
            return None
        if not isinstance(value, str) or not value:
            raise bad("a non-empty string")
        return value
    if key in ("seq", "step", "n", "edits"):
        if key == "edits" and value is None:
            return None
        # bool is an int subclass; True as a step count is a bug upstream, not a 1
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad("a non-negative integer")
        return value
    if key == "demo":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if key == "scoring":
        if value not in SCORINGS:
            raise bad(f"one of {list(SCORINGS)}")
        return value
    if key == "bootstrap":
        return None if value is None else _check_bootstrap(value, source)
    if key == "metrics":
        if not isinstance(value, Mapping) or not value:
            raise bad("a non-empty object of metric name -> number")
        out = {}
        for name, v in value.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise MetricFileError(f"{source}: key 'metrics.{name}': expected a finite number, got {v!r}")
            out[name] = float(v)
        return out
    raise AssertionError(f"no check for field {key!r}")


def _check_bootstrap(value: Any, source: str) -> dict[str, Any]:
    def bad(key: str, expected: str, got: Any) -> MetricFileError:
        return MetricFileError(f"{source}: key 'bootstrap.{key}': expected {expected}, got {got!r}")

    if not isinstance(value, Mapping) or set(value) != set(BOOTSTRAP_KEYS):
        raise MetricFileError(f"{source}: key 'bootstrap': expected an object with keys {list(BOOTSTRAP_KEYS)}, "
                              f"got {sorted(value) if isinstance(value, Mapping) else value!r}")
    for key in ("resamples", "seed"):
        v = value[key]
        if isinstance(v, bool) or not isinstance(v, int) or (key == "resamples" and v < 1):
            raise bad(key, "a positive integer" if key == "resamples" else "an integer", v)
    for key in ("key", "items"):
        if not isinstance(value[key], str) or not value[key]:
            raise bad(key, "a non-empty string", value[key])
    reps = value["replicates"]
    if not isinstance(reps, Mapping) or not reps:
        raise bad("replicates", "a non-empty object of metric name -> list of numbers", reps)
    for name, values in reps.items():
        ok = isinstance(values, list) and len(values) == value["resamples"] and all(
            v is None or (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)) for v in values)
        if not ok:
            raise bad(f"replicates.{name}", f"{value['resamples']} finite numbers or nulls", "another value")
    return {**value, "replicates": {k: [None if v is None else float(v) for v in vs] for k, vs in reps.items()}}


def _validated(record: MetricRecord | Mapping[str, Any], source: str) -> dict[str, Any]:
    raw = record.to_dict() if isinstance(record, MetricRecord) else record
    return MetricRecord.from_dict(raw, source=source).to_dict()


def write_metrics(path: Path, record: MetricRecord | Mapping[str, Any] | list) -> None:
    """Validate `record` (or a non-empty list of records) and write it as a metric file (atomically)."""
    path = Path(path)
    if isinstance(record, list):
        if not record:
            raise MetricFileError(f"{path}: a metric file needs at least one record")
        write_json(path, [_validated(r, f"{path}[{i}]") for i, r in enumerate(record)])
    else:
        write_json(path, _validated(record, str(path)))


def read_metrics(path: Path) -> MetricRecord:
    path = Path(path)
    raw = read_json(path, dict, "a JSON object of metric fields", MetricFileError)
    return MetricRecord.from_dict(raw, source=str(path))


def read_metric_records(path: Path) -> list[MetricRecord]:
    """The records of a metric file: one JSON object, or a non-empty list of them."""
    path = Path(path)
    raw = read_json(path, (dict, list), "a JSON object of metric fields or a list of them", MetricFileError)
    if isinstance(raw, dict):
        return [MetricRecord.from_dict(raw, source=str(path))]
    if not raw:
        raise MetricFileError(f"{path}: an empty list holds no metric records")
    return [MetricRecord.from_dict(r, source=f"{path}[{i}]") for i, r in enumerate(raw)]

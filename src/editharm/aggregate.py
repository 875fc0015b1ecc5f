"""Metric files: their schema, and their aggregation into one tidy table plus a DVC summary.

Every evaluation job writes one JSON file per (model, method, reg, setting, seq, step, task),
`task` being a general-ability task name or "editing" for the editing metrics; a job that scores
several checkpoints or tasks at once (the lm-eval probes) writes a list of such records. The schema
is `MetricRecord`; `write_metrics` is the only sanctioned writer, so a file that `aggregate` rejects
points at a bug in whoever bypassed it.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Optional

import pandas as pd

from editharm.fileio import atomic_write, read_json

log = logging.getLogger(__name__)

EDITING_TASK = "editing"
LMEVAL_PREFIX = "lmeval:"  # task names of lm-evaluation-harness probes (editharm.lmeval)
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
RUN_KEYS = ["model", "method", "reg", "config", "setting", "seq"]
GROUP_KEYS = [*RUN_KEYS, "step", "edits"]
SORT_KEYS = ["model", "setting", "config", "seq", "step", "kind", "task", "metric"]
TABLE_COLUMNS = [
    "model", "method", "reg", "config", "setting", "seq", "step", "edits", "task", "metric", "value",
    "primary", "kind", "n", "scoring", "demo",
]


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
    # Edits in the model at this checkpoint (editharm.settings.Setting.edits_at); defaults to step.
    edits: Optional[int] = None

    @property
    def kind(self) -> str:
        return "editing" if self.task == EDITING_TASK else "general"

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
                if f.name in ("primary", "edits"):
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


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def _validated(record: MetricRecord | Mapping[str, Any], source: str) -> dict[str, Any]:
    raw = record.to_dict() if isinstance(record, MetricRecord) else record
    return MetricRecord.from_dict(raw, source=source).to_dict()


def write_metrics(path: Path, record: MetricRecord | Mapping[str, Any] | list) -> None:
    """Validate `record` (or a non-empty list of records) and write it as a metric file (atomically)."""
    path = Path(path)
    if isinstance(record, list):
        if not record:
            raise MetricFileError(f"{path}: a metric file needs at least one record")
        _write_json(path, [_validated(r, f"{path}[{i}]") for i, r in enumerate(record)])
    else:
        _write_json(path, _validated(record, str(path)))


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


def _rows(record: MetricRecord) -> list[dict[str, Any]]:
    primary = record.primary_metric
    return [
        {
            "model": record.model, "method": record.method, "reg": record.reg,
            "config": record.config, "setting": record.setting, "seq": record.seq,
            "step": record.step, "edits": record.step if record.edits is None else record.edits,
            "task": record.task, "metric": name, "value": value,
            "primary": name == primary, "kind": record.kind, "n": record.n,
            "scoring": record.scoring, "demo": record.demo,
        }
        for name, value in sorted(record.metrics.items())
    ]


def build_table(metric_files: list[Path]) -> pd.DataFrame:
    """Read and validate metric files into the tidy table, sorted so input order never matters."""
    if not metric_files:
        raise ValueError("no metric files given")
    seen: dict[tuple, Path] = {}
    rows: list[dict[str, Any]] = []
    for path in map(Path, metric_files):
        for record in read_metric_records(path):
            key = (record.model, record.method, record.reg, record.setting, record.seq, record.step, record.task)
            if key in seen:
                raise MetricFileError(f"{path}: same (model, method, reg, setting, seq, step, task) as {seen[key]}")
            seen[key] = path
            rows.extend(_rows(record))
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    table = table.astype({"seq": "int64", "step": "int64", "edits": "int64", "n": "int64", "value": "float64",
                          "primary": "bool", "demo": "bool"})
    return table.sort_values(SORT_KEYS, kind="mergesort").reset_index(drop=True)


def with_shared_base(table: pd.DataFrame) -> pd.DataFrame:
    """Curves start at the unedited model: copy the base rows (method BASE_METHOD) in as step 0 of
    every edited run that has no step 0 of its own, and drop the base pseudo-run."""
    is_base = table["method"] == BASE_METHOD
    base, edited = table[is_base], table[~is_base]
    if edited.empty:
        return table
    runs = edited[RUN_KEYS].drop_duplicates()
    started = edited.loc[edited["step"] == 0, RUN_KEYS].drop_duplicates()
    need = runs[~runs.set_index(RUN_KEYS).index.isin(started.set_index(RUN_KEYS).index)]
    copies = base.drop(columns=RUN_KEYS[1:]).merge(need, on="model")[TABLE_COLUMNS]
    out = pd.concat([edited, copies], ignore_index=True)
    return out.sort_values(SORT_KEYS, kind="mergesort").reset_index(drop=True)


def general_means(table: pd.DataFrame) -> pd.DataFrame:
    """Mean general ability per run and step: the mean over tasks of each task's primary metric.
    lm-evaluation-harness probes are charted beside the tasks but kept out of this mean, so it stays
    comparable between runs with and without them."""
    rows = table[(table["kind"] == "general") & table["primary"] & ~table["task"].str.startswith(LMEVAL_PREFIX)]
    return (
        rows.groupby(GROUP_KEYS, sort=True)["value"]
        .agg(mean_general="mean", n_tasks="size")
        .reset_index()
    )


def editing_means(table: pd.DataFrame) -> pd.DataFrame:
    """Editing metrics averaged over sequences: one row per (model, config, setting, step, metric)."""
    rows = table[table["kind"] == "editing"]
    keys = ["model", "method", "reg", "config", "setting", "step", "edits", "metric"]
    return rows.groupby(keys, sort=True)["value"].mean().reset_index()


def summarize(table: pd.DataFrame) -> dict[str, Any]:
    """The DVC metrics summary: per model the unedited (step 0) mean general ability, and per
    setting and edited config the values at the last step, averaged over sequences."""
    general = general_means(table)
    editing = editing_means(table)
    summary: dict[str, Any] = {}
    for model, runs in table.groupby("model", sort=True):
        # Every config's step 0 is the same unedited model: pool them per task, then average tasks.
        base_rows = runs[(runs["kind"] == "general") & runs["primary"] & (runs["step"] == 0)]
        per_task = base_rows.groupby("task", sort=True)["value"].mean()
        entry: dict[str, Any] = {"settings": {}}
        if len(per_task):
            entry["base"] = {"mean_general": float(per_task.mean()), "n_tasks": int(len(per_task))}
        edited = runs[runs["method"] != BASE_METHOD]
        for (setting, config), run in edited.groupby(["setting", "config"], sort=True):
            last = int(run["step"].max())
            final: dict[str, Any] = {"step": last}
            g = general[(general["model"] == model) & (general["setting"] == setting)
                        & (general["config"] == config) & (general["step"] == last)]
            if len(g):
                final["mean_general"] = float(g["mean_general"].mean())
                final["n_tasks"] = int(g["n_tasks"].max())
            e = editing[(editing["model"] == model) & (editing["setting"] == setting)
                        & (editing["config"] == config) & (editing["step"] == last)]
            for metric, value in zip(e["metric"], e["value"]):
                if metric in EDITING_METRICS:
                    final[metric] = float(value)
            entry["settings"].setdefault(setting, {})[config] = final
        summary[model] = entry
    return summary


def concat_tables(paths: list[Path], out: Path) -> int:
    """Concatenate parquet tables of one schema (weight statistics, heatmaps) into `out`; rows written.

    Rows are sorted by every label column first, so the output does not depend on input order.
    """
    frames = [pd.read_parquet(p) for p in paths]
    columns = list(frames[0].columns)
    for path, frame in zip(paths, frames):
        if list(frame.columns) != columns:
            raise ValueError(f"{path}: columns {list(frame.columns)} differ from {paths[0]}'s {columns}")
    table = pd.concat(frames, ignore_index=True)
    if {"method", "reg"} <= set(columns) and "config" not in columns:
        table.insert(columns.index("reg") + 1, "config",
                     [m if r == "none" else f"{m}+{r}" for m, r in zip(table["method"], table["reg"])])
    keys = [c for c in ("model", "setting", "config", "seq", "step", "param", "row", "col") if c in table]
    table = table.sort_values(keys, kind="mergesort").reset_index(drop=True)
    atomic_write(Path(out), lambda p: table.to_parquet(p, index=False))
    return len(table)


def aggregate(metric_files: list[Path], out_dir: Path) -> pd.DataFrame:
    """Write `metrics.parquet`, `metrics.csv` and `summary.json` to `out_dir`; return the table."""
    out_dir = Path(out_dir)
    table = build_table(metric_files)
    atomic_write(out_dir / "metrics.parquet", lambda p: table.to_parquet(p, index=False))
    atomic_write(out_dir / "metrics.csv", lambda p: table.to_csv(p, index=False, lineterminator="\n"))
    _write_json(out_dir / "summary.json", summarize(table))
    log.info("aggregated %d metric files into %d rows in %s", len(metric_files), len(table), out_dir)
    return table
